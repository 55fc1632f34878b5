"""LR schedules and early stopping: traces against the pure formula, and exact resumes."""

from __future__ import annotations

import io

import pytest
import torch

from dualstage.segment.schedule import (
    EarlyStopping,
    cycle_steps_for,
    make_cyclic,
    make_plateau,
    triangular_lr,
)


def _optimizer(lr: float = 1.0) -> torch.optim.Optimizer:
    param = torch.nn.Parameter(torch.zeros(3))
    return torch.optim.Adam([param], lr=lr)


def _train_step(optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    param = optimizer.param_groups[0]["params"][0]
    (param - 1.0).pow(2).sum().backward()
    optimizer.step()


def _roundtrip(state: dict) -> dict:
    """Through torch.save / torch.load(weights_only=True), as a checkpoint would go."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_triangular_formula() -> None:
    # cycle 4: up 2, down 2 -> base, mid, max, mid, base, ...
    assert [triangular_lr(k, 1.0, 3.0, 4) for k in range(9)] == [1, 2, 3, 2, 1, 2, 3, 2, 1]
    # cycle 5: up 2 (1, 2, 3), down 3 (3 -> 7/3 -> 5/3 -> 1)
    lrs = [triangular_lr(k, 1.0, 3.0, 5) for k in range(6)]
    assert lrs == pytest.approx([1, 2, 3, 7 / 3, 5 / 3, 1], abs=1e-15)
    with pytest.raises(ValueError, match="cycle_steps must be an integer >= 2"):
        triangular_lr(0, 1.0, 3.0, 1)


@pytest.mark.parametrize("cycle_steps", [2, 4, 7, 10, 13])
@pytest.mark.parametrize(("base_lr", "max_lr"), [(1e-4, 1e-3), (3e-6, 6e-5), (0.5, 2.0)])
def test_cyclic_trace_equals_triangle(cycle_steps: int, base_lr: float, max_lr: float) -> None:
    optimizer = _optimizer(lr=123.0)
    scheduler = make_cyclic(optimizer, base_lr, max_lr, cycle_steps)
    trace = [optimizer.param_groups[0]["lr"]]  # construction sets base_lr
    for _ in range(2 * cycle_steps):
        _train_step(optimizer)
        scheduler.step()
        trace.append(optimizer.param_groups[0]["lr"])
    expected = [triangular_lr(k, base_lr, max_lr, cycle_steps) for k in range(2 * cycle_steps + 1)]
    assert trace == pytest.approx(expected, abs=1e-12, rel=1e-12)
    assert trace[0] == base_lr
    assert max(trace) == pytest.approx(max_lr, abs=1e-12)
    assert trace[cycle_steps // 2] == pytest.approx(max_lr, abs=1e-12)


def test_cycle_steps_for() -> None:
    assert cycle_steps_for(steps_per_epoch=25, cycle_epochs=12) == 300
    assert cycle_steps_for(steps_per_epoch=3, cycle_epochs=0.5) == 2  # never shorter than 2
    with pytest.raises(ValueError):
        cycle_steps_for(0, 1)


def test_cyclic_resume_is_exact() -> None:
    base_lr, max_lr, cycle, total, cut = 1e-5, 1e-4, 7, 20, 9

    optimizer = _optimizer()
    scheduler = make_cyclic(optimizer, base_lr, max_lr, cycle)
    uninterrupted = []
    for _ in range(total):
        _train_step(optimizer)
        scheduler.step()
        uninterrupted.append(optimizer.param_groups[0]["lr"])

    optimizer = _optimizer()
    scheduler = make_cyclic(optimizer, base_lr, max_lr, cycle)
    resumed = []
    for _ in range(cut):
        _train_step(optimizer)
        scheduler.step()
        resumed.append(optimizer.param_groups[0]["lr"])
    saved = _roundtrip({"scheduler": scheduler.state_dict()})

    # fresh optimizer + scheduler (construction resets the LR to base_lr); only the scheduler is loaded
    optimizer = _optimizer()
    scheduler = make_cyclic(optimizer, base_lr, max_lr, cycle)
    assert optimizer.param_groups[0]["lr"] == base_lr
    scheduler.load_state_dict(saved["scheduler"])
    assert "_scale_fn_custom" in saved["scheduler"]  # the caller's dict is not consumed
    assert optimizer.param_groups[0]["lr"] == resumed[-1]
    for _ in range(total - cut):
        _train_step(optimizer)
        scheduler.step()
        resumed.append(optimizer.param_groups[0]["lr"])
    assert resumed == uninterrupted


def test_plateau_halves_after_patience_bad_epochs() -> None:
    optimizer = _optimizer(lr=1e-3)
    scheduler = make_plateau(optimizer, factor=0.5, patience=3, min_lr=2e-4)
    lrs = []
    # epoch 1 sets best = 1.0; epochs 2-4 are 3 bad epochs (= patience, still 1e-3);
    # the 4th bad epoch (epoch 5) halves; 4 more bad epochs halve again; then min_lr caps
    for loss in [1.0, 1.0, 1.2, 1.0, 1.1, 1.0, 1.0, 1.0, 1.0, 0.5, 0.6, 0.6, 0.6, 0.6]:
        scheduler.step(loss)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([1e-3] * 4 + [5e-4] * 4 + [2.5e-4] + [2.5e-4] * 4 + [2e-4], rel=1e-12)


def test_plateau_resume_is_exact() -> None:
    losses = [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.97, 0.96, 0.99, 0.99, 0.98, 0.99, 0.99, 0.99]

    optimizer = _optimizer(lr=1e-3)
    scheduler = make_plateau(optimizer, patience=2)
    uninterrupted = []
    for loss in losses:
        scheduler.step(loss)
        uninterrupted.append(optimizer.param_groups[0]["lr"])
    assert min(uninterrupted) < 1e-3 / 4  # the trace crosses at least two reductions

    optimizer = _optimizer(lr=1e-3)
    scheduler = make_plateau(optimizer, patience=2)
    resumed = []
    for loss in losses[:7]:
        scheduler.step(loss)
        resumed.append(optimizer.param_groups[0]["lr"])
    saved = _roundtrip(scheduler.state_dict())

    optimizer = _optimizer(lr=1e-3)  # the configured starting LR, as a fresh run would build it
    scheduler = make_plateau(optimizer, patience=2)
    scheduler.load_state_dict(saved)
    assert optimizer.param_groups[0]["lr"] == resumed[-1]
    for loss in losses[7:]:
        scheduler.step(loss)
        resumed.append(optimizer.param_groups[0]["lr"])
    assert resumed == uninterrupted


def test_early_stopping() -> None:
    stopper = EarlyStopping(patience=3)
    decisions = [stopper.step(v) for v in [1.0, 0.8, 0.9, 0.8, 0.7, 0.75, 0.7, 0.71]]
    # 0.8 ties the best (not < 0.8 - 0) -> bad; 0.7 improves; then 3 bad epochs -> stop at the 8th
    assert decisions == [False] * 7 + [True]
    assert stopper.best == 0.7 and stopper.best_epoch == 5 and stopper.bad_epochs == 3
    assert not stopper.improved

    delta = EarlyStopping(patience=2, min_delta=0.1)
    assert [delta.step(v) for v in [1.0, 0.95, 0.91]] == [False, False, True]  # 0.95, 0.91 not < 0.9
    assert delta.best == 1.0

    high = EarlyStopping(patience=1, mode="max")
    assert [high.step(v) for v in [0.5, 0.6, float("nan")]] == [False, False, True]  # NaN never improves
    assert high.best == 0.6

    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        EarlyStopping(mode="lowest")


def test_early_stopping_state_roundtrip() -> None:
    values = [1.0, 0.9, 0.95, 0.92, 0.85, 0.9, 0.9, 0.9, 0.9, 0.9]
    reference = EarlyStopping(patience=4, min_delta=0.01)
    expected = [reference.step(v) for v in values]

    first = EarlyStopping(patience=4, min_delta=0.01)
    got = [first.step(v) for v in values[:6]]
    state = _roundtrip(first.state_dict())
    resumed = EarlyStopping()  # defaults differ: the state carries the configuration too
    resumed.load_state_dict(state)
    assert resumed.state_dict() == first.state_dict()
    got += [resumed.step(v) for v in values[6:]]
    assert got == expected and expected[-1] is True
    assert resumed.state_dict() == reference.state_dict()

    with pytest.raises(ValueError, match="lacks"):
        EarlyStopping().load_state_dict({"best": 1.0})
