"""Runtime helpers: precision, distributed set-up, weight loading."""
