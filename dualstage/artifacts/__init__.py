"""The experiment folder's owner and every typed hand-off between steps."""
