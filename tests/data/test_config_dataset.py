"""Config loading (bases, unknown keys) and the epoch sampler (oversampling, sharding, determinism)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dualstage.config import load_experiment
from dualstage.data.dataset import EpochSampler
from dualstage.segment.train import autocast_dtype, fold_ids, fold_names

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def test_paper_experiments_load_and_carry_table1():
    exp = load_experiment(EXPERIMENTS / "progressive_seresnext50.yaml")
    assert exp.name == "progressive_seresnext50" and exp.model.encoder == "se_resnext50_32x4d"
    rows = [(p.resolution, p.unfreeze, p.epochs, p.base_lr, p.max_lr) for p in exp.train.phases]
    assert rows == [
        (512, "decoder", 12, 1e-4, 1e-3),
        (512, "block4", 2, 5e-5, 5e-4),
        (512, "block3", 2, 5e-5, 5e-4),
        (512, "block2", 2, 5e-5, 5e-4),
        (512, "block1", 2, 5e-5, 5e-4),
        (512, "all", 10, 1e-5, 1e-4),
        (512, "all", 10, 1e-5, 1e-4),
        (1024, "all", 4, 1e-5, 1e-4),
        (1024, "all", 6, 3e-6, 6e-5),
    ]
    assert [p.loss if isinstance(p.loss, str) else p.loss["name"] for p in exp.train.phases] == (
        ["weighted_bce"] * 5 + ["soft_dice", "symmetric_lovasz", "soft_dice", "symmetric_lovasz"]
    )
    assert exp.train.batch_size == {512: 14, 1024: 3} and not exp.train.augment.horizontal_flip
    plain = load_experiment(EXPERIMENTS / "dualstage_xception.yaml")
    (phase,) = plain.train.phases
    assert (phase.resolution, phase.epochs, phase.base_lr, phase.schedule) == (512, 25, 1e-3, "plateau")
    assert (phase.plateau_factor, phase.plateau_patience, phase.early_stopping) == (0.5, 3, 5)
    assert plain.train.batch_size == {512: 32}


@pytest.mark.parametrize("name", sorted(p.stem for p in EXPERIMENTS.glob("*.yaml") if "base" not in p.stem))
def test_every_experiment_builds_its_losses(name):
    from dualstage.segment import losses, models

    exp = load_experiment(EXPERIMENTS / f"{name}.yaml")
    assert models.get_spec(exp.model.encoder).key == exp.model.encoder
    assert exp.train.phases
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    target = (torch.rand(2, 1, 8, 8) > 0.7).float()
    for phase in exp.train.phases:
        loss = losses.build_loss(phase.loss)
        wanted = phase.loss if isinstance(phase.loss, str) else phase.loss["name"]
        assert loss.name == wanted, (loss.name, phase.loss)
        value = loss(logits, target)
        assert value.ndim == 0 and torch.isfinite(value) and value.requires_grad, (phase.loss, value)


def test_unknown_key_lists_valid_ones(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  encodr: resnet34\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['encodr'\].*encoder"):
        load_experiment(path)


def test_positive_share_and_determinism():
    labels = [1] * 10 + [0] * 90
    sampler = EpochSampler(labels, seed=3, positive_share=0.5)
    order = sampler.epoch_indices()
    assert len(order) == 100 and (np.asarray(labels)[order] == 1).sum() == 50
    sampler.set_epoch(1)
    assert not np.array_equal(order, sampler.epoch_indices())
    sampler.set_epoch(0)
    np.testing.assert_array_equal(order, sampler.epoch_indices())


def test_ranks_partition_the_epoch():
    labels = [0] * 11
    shards = [list(EpochSampler(labels, seed=1, rank=r, world=2)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 6
    assert set(shards[0]) | set(shards[1]) == set(range(11))


def test_folds_and_amp_policy():
    ids = list("abcdefghijkl")
    table = pd.DataFrame(
        {
            "image_id": ids,
            "group": ["p1", "p1", "p2", "p3", "p4", "p5", "p6", "p6", "p7", "p8", "p9", "p10"],
            "has_pneumothorax": [1, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1],
            "split": ["train", "train", "val", "val", "test", "train"] * 2,
            "fold": [0, 0, 1, 1, 0, 2, 2, 2, 1, 0, 1, 2],  # folds cover every study, test included
        }
    )
    assert fold_names("all", table) == ["fold_0", "fold_1", "fold_2"] and fold_names("main", table) == [
        "main"
    ]
    assert fold_ids(table, "main") == (["a", "b", "f", "g", "h", "l"], ["c", "d", "i", "j"])
    train, val = fold_ids(table, "fold_0")
    own = {"a", "b", "e", "j"}  # fold 0: never seen by fold model 0, not even as validation
    assert set(train) | set(val) == set(ids) - own and not set(train) & set(val) and val
    groups = table.set_index("image_id")["group"]
    assert not set(groups[train]) & set(groups[val])  # the inner validation is patient-grouped
    with pytest.raises(ValueError, match="expected main, all or one of"):
        fold_names("7", table)
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype(False, cpu) is None
    assert autocast_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        autocast_dtype("fp16", cpu)


def test_every_optimizer_the_config_accepts_is_implemented():
    import dataclasses

    from dualstage.config import TrainConfig
    from dualstage.segment.loop import OPTIMIZERS

    choices = {f.name: f for f in dataclasses.fields(TrainConfig)}["optimizer"].metadata["choices"]
    assert set(choices) == set(OPTIMIZERS)


def test_each_model_starts_from_its_own_seed():
    import random

    from dualstage.segment.train import seed_model

    def draws() -> tuple:
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    seed_model(0, "fold_1")
    first = draws()
    torch.rand(1000), np.random.rand(77), random.random()  # what an earlier fold consumed
    seed_model(0, "fold_1")
    assert draws() == first
    seed_model(0, "fold_2")
    assert draws() != first
