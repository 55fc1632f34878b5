"""Learning-rate schedules and early stopping for segmenter training.

* Progressive recipe: a triangular cyclic LR inside each curriculum phase (one :func:`make_cyclic`
  scheduler per phase, stepped once per optimizer step).
* Plain recipe: :func:`make_plateau` halves the LR when the validation loss stalls, and
  :class:`EarlyStopping` ends training after ``patience`` epochs without improvement.

All three round-trip through ``state_dict()`` / ``load_state_dict()``; loading a scheduler's state
also writes its current LR back into the optimizer, so a resumed run continues with the same LR
even if the optimizer's own state was not restored.
"""

from __future__ import annotations

import math
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CyclicLR, ReduceLROnPlateau

__all__ = [
    "EarlyStopping",
    "PlateauLR",
    "TriangularLR",
    "cycle_steps_for",
    "make_cyclic",
    "make_plateau",
    "triangular_lr",
]


def _check_cycle(cycle_steps: int) -> None:
    if isinstance(cycle_steps, bool) or not isinstance(cycle_steps, int) or cycle_steps < 2:
        raise ValueError(f"cycle_steps must be an integer >= 2, got {cycle_steps!r}")


def triangular_lr(step: int, base_lr: float, max_lr: float, cycle_steps: int) -> float:
    """LR after ``step`` optimizer steps of a repeating triangle.

    ``base_lr`` at step 0, rising linearly to ``max_lr`` at step ``cycle_steps // 2``, falling
    linearly back to ``base_lr`` at step ``cycle_steps``, then repeating. For odd ``cycle_steps``
    the rise is the shorter leg (e.g. 7 -> 3 steps up, 4 down), as in :func:`make_cyclic`.
    """
    _check_cycle(cycle_steps)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    up = cycle_steps // 2
    down = cycle_steps - up
    pos = step % cycle_steps
    frac = pos / up if pos <= up else (cycle_steps - pos) / down
    return base_lr + (max_lr - base_lr) * frac


def cycle_steps_for(steps_per_epoch: int, cycle_epochs: float) -> int:
    """Cycle length in optimizer steps for a cycle of ``cycle_epochs`` epochs (at least 2).

    ``steps_per_epoch`` counts optimizer steps, i.e. ``ceil(batches / accumulation)``. One triangle
    per phase: pass the phase's epoch count as ``cycle_epochs``.
    """
    if steps_per_epoch < 1 or cycle_epochs <= 0:
        raise ValueError(
            f"need steps_per_epoch >= 1 and cycle_epochs > 0, got {steps_per_epoch}, {cycle_epochs}"
        )
    return max(2, round(steps_per_epoch * cycle_epochs))


def _write_lrs(optimizer: Optimizer, lrs: list[float], who: str) -> None:
    if len(lrs) != len(optimizer.param_groups):
        raise ValueError(
            f"{who}: state holds {len(lrs)} learning rate(s) but the optimizer has "
            f"{len(optimizer.param_groups)} parameter group(s)"
        )
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr


class TriangularLR(CyclicLR):
    """``CyclicLR(mode="triangular", cycle_momentum=False)`` whose ``load_state_dict`` also restores
    the optimizer's LR (and does not consume the caller's dict, as ``CyclicLR``'s does)."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(dict(state_dict))
        _write_lrs(self.optimizer, list(self._last_lr), "TriangularLR")


class PlateauLR(ReduceLROnPlateau):
    """``ReduceLROnPlateau`` whose ``load_state_dict`` also restores the optimizer's LR."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(dict(state_dict))
        _write_lrs(self.optimizer, list(self._last_lr), "PlateauLR")


def make_cyclic(optimizer: Optimizer, base_lr: float, max_lr: float, cycle_steps: int) -> TriangularLR:
    """Triangular cyclic LR for one curriculum phase; call ``.step()`` once per optimizer step.

    ``cycle_steps`` is in optimizer steps (after gradient accumulation), not epochs: the trainer
    converts a ``cycle_epochs`` config value with :func:`cycle_steps_for` (default: one triangle
    per phase). ``step_size_up = cycle_steps // 2``, ``step_size_down`` the rest. Construction sets
    every group's LR to ``base_lr``; after ``k`` calls of ``.step()`` the LR equals
    ``triangular_lr(k, base_lr, max_lr, cycle_steps)``.
    """
    _check_cycle(cycle_steps)
    if not 0 < base_lr <= max_lr:
        raise ValueError(f"need 0 < base_lr <= max_lr, got base_lr={base_lr}, max_lr={max_lr}")
    up = cycle_steps // 2
    return TriangularLR(
        optimizer,
        base_lr=base_lr,
        max_lr=max_lr,
        step_size_up=up,
        step_size_down=cycle_steps - up,
        mode="triangular",
        cycle_momentum=False,
    )


def make_plateau(
    optimizer: Optimizer,
    factor: float = 0.5,
    patience: int = 3,
    min_lr: float = 1e-6,
    threshold: float = 1e-4,
) -> PlateauLR:
    """Multiply the LR by ``factor`` when the validation loss stalls; call ``.step(val_loss)`` per epoch.

    torch semantics (mode "min", relative ``threshold``): an epoch is bad unless
    ``loss < best * (1 - threshold)``; the LR is reduced at the ``patience + 1``-th consecutive bad
    epoch (``num_bad_epochs > patience``), then the count restarts. The LR never drops below ``min_lr``.
    """
    if not 0 < factor < 1:
        raise ValueError(f"factor must lie in (0, 1), got {factor}")
    return PlateauLR(
        optimizer,
        mode="min",
        factor=factor,
        patience=patience,
        min_lr=min_lr,
        threshold=threshold,
        threshold_mode="rel",
    )


class EarlyStopping:
    """Stop after ``patience`` consecutive epochs without improvement of a monitored value.

    An epoch improves when ``value < best - min_delta`` (mode "min") or ``value > best + min_delta``
    (mode "max"); NaN never improves. ``step`` returns True at the ``patience``-th consecutive
    epoch without improvement (Keras semantics; note :func:`make_plateau` acts one epoch later).
    """

    def __init__(self, patience: int = 5, min_delta: float = 0.0, mode: str = "min") -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if patience < 0 or min_delta < 0:
            raise ValueError(f"need patience >= 0 and min_delta >= 0, got {patience}, {min_delta}")
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.mode = mode
        self.best = math.inf if mode == "min" else -math.inf
        self.bad_epochs = 0
        self.epochs = 0
        self.best_epoch = 0  # 1-based epoch of ``best``; 0 before any improvement
        self.improved = False  # whether the last ``step`` improved (save a "best" checkpoint then)

    def is_better(self, value: float) -> bool:
        """Whether ``value`` improves on ``best`` by more than ``min_delta``."""
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def step(self, value: float) -> bool:
        """Record one epoch's monitored value; return True when training should stop."""
        value = float(value)
        self.epochs += 1
        self.improved = self.is_better(value)
        if self.improved:
            self.best = value
            self.best_epoch = self.epochs
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        return self.should_stop

    _STATE = ("patience", "min_delta", "mode", "best", "bad_epochs", "epochs", "best_epoch", "improved")

    def state_dict(self) -> dict[str, Any]:
        """Plain Python values (safe for ``torch.save`` / ``torch.load(weights_only=True)``)."""
        return {key: getattr(self, key) for key in self._STATE}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        missing = [key for key in self._STATE if key not in state_dict]
        if missing:
            raise ValueError(f"EarlyStopping state lacks {missing}; expected keys {list(self._STATE)}")
        for key in self._STATE:
            setattr(self, key, state_dict[key])

    def __repr__(self) -> str:
        return (
            f"EarlyStopping(patience={self.patience}, min_delta={self.min_delta:g}, mode={self.mode!r}, "
            f"best={self.best:g}, bad_epochs={self.bad_epochs})"
        )
