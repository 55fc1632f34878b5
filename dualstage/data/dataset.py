"""Torch datasets over the prepared cache, the augmentation policy, and the epoch sampler."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from dualstage.config import AugmentConfig
from dualstage.data.cache import cache_paths, cached_sizes, load_cached

if TYPE_CHECKING:  # imported where augmentations are built: predict and features run without it
    import albumentations as A

__all__ = ["CachedDataset", "build_augment", "EpochSampler", "load_split_table", "cached_sizes"]


def load_split_table(prepared: str | Path) -> pd.DataFrame:
    """splits.csv joined with the manifest's size and area columns, indexed by position."""
    prepared = Path(prepared)
    for name in ("splits.csv", "manifest.csv"):
        if not (prepared / name).exists():
            raise FileNotFoundError(
                f"{prepared / name} not found: run `python -m dualstage.segment prepare` first"
            )
    splits = pd.read_csv(prepared / "splits.csv", dtype={"image_id": str, "group": str})
    manifest = pd.read_csv(
        prepared / "manifest.csv",
        dtype={"image_id": str},
        usecols=["image_id", "height", "width", "mask_area_px", "mask_area_1024"],
    )
    return splits.merge(manifest, on="image_id", how="left", validate="one_to_one")


def build_augment(cfg: AugmentConfig) -> A.Compose:
    """The progressive paper's policy: shift/scale/rotate, rare contrast / gamma / brightness."""
    import albumentations as A  # heavy, and it checks for updates at import: loaded when augmenting

    transforms = [
        A.Affine(
            translate_percent=(-cfg.shift_limit, cfg.shift_limit),
            scale=(1 - cfg.scale_limit, 1 + cfg.scale_limit),
            rotate=(-cfg.rotate_limit, cfg.rotate_limit),
            border_mode=0,
            p=cfg.p_shift_scale_rotate,
        ),
        A.RandomBrightnessContrast(brightness_limit=0, contrast_limit=cfg.contrast_limit, p=cfg.p_contrast),
        A.RandomGamma(gamma_limit=tuple(cfg.gamma_limit), p=cfg.p_gamma),
        A.RandomBrightnessContrast(
            brightness_limit=cfg.brightness_limit, contrast_limit=0, p=cfg.p_brightness
        ),
    ]
    if cfg.horizontal_flip:
        transforms.append(A.HorizontalFlip(p=0.5))
    return A.Compose(transforms)


class CachedDataset(Dataset):
    """Images and masks of the prepared cache at one size.

    Item: ``(image, mask, index)`` with image float32 (1, S, S) in [0, 1], mask float32
    (1, S, S) in {0, 1}. Normalisation and 3-channel expansion happen on the device
    (``dualstage.segment.models.to_input``), which keeps workers light.
    """

    def __init__(
        self,
        prepared: str | Path,
        image_ids: Sequence[str],
        size: int,
        augment: A.Compose | None = None,
        seed: int = 0,
    ):
        self.prepared = Path(prepared)
        self.seed = seed
        self.epoch = 0  # set before each epoch: augmentation draws depend on (seed, epoch, index) only
        self.image_ids = list(image_ids)
        self.size = int(size)
        self.augment = augment
        if self.image_ids:
            first = cache_paths(self.prepared, self.size, self.image_ids[0])[0]
            if not first.exists():
                raise FileNotFoundError(
                    f"no {self.size} px cache in {self.prepared}/cache (have {cached_sizes(self.prepared)}); "
                    f"re-run prepare with --sizes including {self.size}"
                )

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image, mask = load_cached(self.prepared, self.size, self.image_ids[index])
        mask = mask.astype(np.uint8)
        if self.augment is not None:
            # per-item seed: identical draws in any worker, and after a resume
            self.augment.set_random_seed(
                int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
            )
            out = self.augment(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32) / 255.0)[None]
        return img, torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None], index


class EpochSampler(Sampler[int]):
    """Seeded per-epoch order, sharded over ranks, with optional positive oversampling.

    With ``positive_share`` p, an epoch of len(labels) draws round(p * n) positives (with
    replacement when there are fewer) and the rest negatives (without replacement when
    possible): the first-place team's "sliding sample rate" when p decays over phases.
    Each rank takes every ``world``-th index of the same list (padded to equal length).
    The order depends only on (seed, epoch), so a resumed run replays it exactly.
    """

    def __init__(
        self,
        labels: Sequence[int],
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        positive_share: float | None = None,
        shuffle: bool = True,
    ):
        self.labels = np.asarray(labels, dtype=int)
        self.seed, self.rank, self.world = seed, rank, world
        self.positive_share, self.shuffle = positive_share, shuffle
        self.epoch = 0
        if positive_share is not None and not 0 <= positive_share <= 1:
            raise ValueError(f"positive_share must be within [0, 1], got {positive_share}")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_indices(self) -> np.ndarray:
        """The whole epoch's order (all ranks), shape (n,)."""
        n = len(self.labels)
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.positive_share is None:
            return rng.permutation(n) if self.shuffle else np.arange(n)
        pos, neg = np.flatnonzero(self.labels == 1), np.flatnonzero(self.labels == 0)
        n_pos = min(round(self.positive_share * n), n) if len(pos) else 0
        n_neg = n - n_pos if len(neg) else 0
        n_pos = n - n_neg
        take_pos = rng.choice(pos, n_pos, replace=n_pos > len(pos)) if n_pos else pos[:0]
        take_neg = rng.choice(neg, n_neg, replace=n_neg > len(neg)) if n_neg else neg[:0]
        return rng.permutation(np.concatenate([take_pos, take_neg]))

    def __iter__(self) -> Iterator[int]:
        order = self.epoch_indices()
        per_rank = math.ceil(len(order) / self.world)
        padded = np.resize(order, per_rank * self.world)  # repeats the head to pad
        return iter(padded[self.rank :: self.world].tolist())

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.world)
