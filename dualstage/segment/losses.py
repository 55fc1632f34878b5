"""Segmentation losses for one-channel pneumothorax masks, built on segmentation-models-pytorch.

Every loss maps ``logits`` (N, 1, H, W) float and ``target`` (N, 1, H, W) float in {0, 1} to a
scalar tensor. Half-precision logits are promoted to float32 before the loss is taken; the
Lovasz losses always compute in float32 (smp's hinge casts its Jaccard gradient to float32).

Recipes covered:

* progressive paper (Table 1): a curriculum ``weighted_bce`` -> ``soft_dice`` -> ``symmetric_lovasz``;
* dual-stage paper (eq. 12): ``combo`` of ``bce`` + ``soft_dice`` + ``focal`` (gamma = 2).

``soft_dice`` (the default in both recipes) is the dual-stage paper's per-image Dice with its
smoothing term; smp's batch-pooled version is the named option ``soft_dice_batch``.

Empty-mask behaviour of ``soft_dice_batch`` (smp 0.6 ``DiceLoss(mode="binary")``, read from its source):
in binary mode smp flattens the target to (N, 1, H*W) and reduces over ``dims=(0, 2)``, so the
Dice is ONE batch-level score (intersection and sums pooled over all images of the batch), not a
mean of per-image scores. Its empty-channel mask is ``y_true.sum(dims) > 0``, i.e. "does the whole
batch hold at least one positive pixel". Consequences:

* all-negative batch: the loss is exactly 0 and its gradient is exactly 0 whatever the logits
  (false positives on negative studies are not penalised at all by this term);
* mixed batch: the negative images are not skipped; their predicted probabilities enter the
  pooled denominator ``sum(p)``, so their false positives are penalised through the batch score.

The smp score is ``(I + smooth) / (I + 0.5 * FP + 0.5 * FN + smooth)`` with the denominator clamped
at ``eps = 1e-7``; for binary targets this equals ``(2 I + 2 smooth) / (sum p + sum t + 2 smooth)``.
The dual-stage paper's eq. 14 ``(2|X n Y| + e) / (|X| + |Y| + e)`` is therefore smp with
``smooth = e / 2``.

Use :func:`build_loss` with a spec from the experiment config; see its docstring for the format.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "LOSSES",
    "SegmentationLoss",
    "WeightedSum",
    "bce",
    "build_loss",
    "combo",
    "focal",
    "lovasz",
    "soft_dice",
    "symmetric_lovasz",
    "weighted_bce",
    "weighted_sum",
]


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else repr(value)


def _number(name: str, value: Any, *, low: float | None = None, high: float | None = None) -> float:
    """``value`` as a finite float within [low, high]; ``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must lie in [{low}, {high}], got {value!r}")
    return float(value)


class SegmentationLoss(nn.Module):
    """Base class: checks shapes, promotes half precision, and describes itself for logs.

    Subclasses implement ``_loss(logits, target) -> scalar`` on (N, 1, H, W) tensors of one dtype.
    """

    #: compute in float32 whatever the input dtype (smp's Lovasz hinge builds its Jaccard
    #: gradient with ``.float()`` and fails on float64 logits)
    float32_only: bool = False

    def __init__(self, name: str, **params: Any) -> None:
        super().__init__()
        self.name = name
        self.params = dict(params)

    def describe(self) -> str:
        """E.g. ``weighted_bce(pos_weight=10)``: the registry name and the parameters it was built with."""
        return f"{self.name}({', '.join(f'{k}={_fmt(v)}' for k, v in self.params.items())})"

    def __repr__(self) -> str:
        return self.describe()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits`` (N, 1, H, W), ``target`` (N, 1, H, W) in {0, 1} -> scalar tensor."""
        if logits.ndim != 4 or logits.shape[1] != 1 or target.shape != logits.shape:
            raise ValueError(
                f"{self.name}: expected logits and target of one shape (N, 1, H, W), "
                f"got {tuple(logits.shape)} and {tuple(target.shape)}"
            )
        if self.float32_only or logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        return self._loss(logits, target.to(logits.dtype))

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class _Wrapped(SegmentationLoss):
    """A torch / smp loss module that already does the right thing on (N, 1, H, W) tensors."""

    def __init__(self, name: str, inner: nn.Module, float32_only: bool = False, **params: Any) -> None:
        super().__init__(name, **params)
        self.inner = inner
        self.float32_only = float32_only

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.inner(logits, target)


class _SymmetricLovasz(SegmentationLoss):
    """``(L(x, y) + L(-x, 1 - y)) / 2`` with ``L`` the per-image Lovasz hinge (smp ``LovaszLoss``)."""

    float32_only = True

    def __init__(self) -> None:
        super().__init__("symmetric_lovasz")
        self.inner = _smp().LovaszLoss(mode="binary", per_image=True, from_logits=True)

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.inner(logits, target) + self.inner(-logits, 1.0 - target))


class WeightedSum(SegmentationLoss):
    """``sum_k w_k * loss_k(logits, target)`` over (weight, loss) terms."""

    def __init__(self, terms: Sequence[tuple[float, nn.Module]], name: str = "combo") -> None:
        super().__init__(name)
        if not terms:
            raise ValueError(f"{name}: needs at least one (weight, loss) term")
        self.weights = [_number(f"{name} weight", w) for w, _ in terms]
        self.terms = nn.ModuleList([loss for _, loss in terms])

    def describe(self) -> str:
        parts = (f"{w:g}*{loss!r}" for w, loss in zip(self.weights, self.terms, strict=True))
        return f"{self.name}({' + '.join(parts)})"

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = self.weights[0] * self.terms[0](logits, target)
        for weight, loss in zip(self.weights[1:], self.terms[1:], strict=True):
            total = total + weight * loss(logits, target)
        return total


# --------------------------------------------------------------------------- factories


def _smp():
    """``segmentation_models_pytorch.losses``, imported when a loss that uses it is built."""
    import segmentation_models_pytorch.losses as smp_losses  # heavy (timm, torchvision): ~2 s at start

    return smp_losses


def bce() -> SegmentationLoss:
    """Plain binary cross-entropy with logits, mean over all N*H*W pixels."""
    return _Wrapped("bce", nn.BCEWithLogitsLoss())


def weighted_bce(pos_weight: float) -> SegmentationLoss:
    """BCE with logits where positive pixels weigh ``pos_weight``; mean over all pixels.

    Per pixel: ``-(pos_weight * y * log s(x) + (1 - y) * log(1 - s(x)))`` (torch ``BCEWithLogitsLoss``);
    the mean divides by the pixel count, not by the summed weights.
    """
    pos_weight = _number("weighted_bce pos_weight", pos_weight, low=0.0)
    inner = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight))  # a buffer: follows .to(device)
    return _Wrapped("weighted_bce", inner, pos_weight=pos_weight)


class _PerImageDice(SegmentationLoss):
    """Mean over images of ``1 - (2 I + e) / (sum p + sum t + e)`` (the dual-stage paper's eq. 14)."""

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(logits).flatten(1)
        t = target.flatten(1)
        e = self.params["smooth"]
        score = (2.0 * (p * t).sum(1) + e) / (p.sum(1) + t.sum(1) + e)
        return (1.0 - score).mean()


def soft_dice(smooth: float = 1.0) -> SegmentationLoss:
    """``1 - soft Dice`` per image, averaged over the batch, with the dual-stage paper's smoothing.

    Image score ``(2 I + e) / (sum p + sum t + e)`` on sigmoid(logits) (eq. 14, ``e = smooth``): an
    empty truth with predicted mass ``m`` scores ``e / (m + e)`` < 1, so false positives on negative
    images cost, and every image of an all-negative batch carries a gradient.
    """
    smooth = _number("soft_dice smooth", smooth, low=0.0)
    if smooth == 0:
        raise ValueError("soft_dice smooth must be > 0 (an empty image would divide 0 by 0)")
    return _PerImageDice("soft_dice", smooth=smooth)


def soft_dice_batch(smooth: float = 0.0) -> SegmentationLoss:
    """``1 - soft Dice`` of sigmoid(logits), smp ``DiceLoss(mode="binary", from_logits=True)``.

    One batch-pooled score; an all-negative batch gives exactly 0 (see the module docstring).
    ``smooth`` is smp's: score ``(2 I + 2 smooth) / (sum p + sum t + 2 smooth)``.
    """
    smooth = _number("soft_dice_batch smooth", smooth, low=0.0)
    inner = _smp().DiceLoss(mode="binary", from_logits=True, smooth=smooth)
    return _Wrapped("soft_dice_batch", inner, smooth=smooth)


def lovasz() -> SegmentationLoss:
    """Plain per-image binary Lovasz hinge (smp ``LovaszLoss(mode="binary", per_image=True)``).

    On an image with an empty target its gradient reaches only the single highest logit.
    """
    inner = _smp().LovaszLoss(mode="binary", per_image=True, from_logits=True)
    return _Wrapped("lovasz", inner, float32_only=True)


def symmetric_lovasz() -> SegmentationLoss:
    """Symmetric Lovasz hinge ``(L(x, y) + L(-x, 1 - y)) / 2`` (first-place SIIM solution).

    ``L`` is the per-image Lovasz hinge. The second term treats background as the foreground
    class, so on an all-negative image every pixel with logit > -1 gets a gradient (the plain
    hinge only pushes the top-ranked pixel).
    """
    return _SymmetricLovasz()


def focal(gamma: float = 2.0, alpha: float | None = None) -> SegmentationLoss:
    """Binary focal loss, smp ``FocalLoss(mode="binary")``: mean over pixels of
    ``a_t * (1 - p_t)**gamma * BCE`` with ``a_t = alpha`` on positives and ``1 - alpha`` on
    negatives (``a_t = 1`` when ``alpha`` is None)."""
    gamma = _number("focal gamma", gamma, low=0.0)
    if alpha is not None:
        alpha = _number("focal alpha", alpha, low=0.0, high=1.0)
    inner = _smp().FocalLoss(mode="binary", gamma=gamma, alpha=alpha)
    return _Wrapped("focal", inner, gamma=gamma, alpha=alpha)


def weighted_sum(terms: Sequence[tuple[float, nn.Module]]) -> WeightedSum:
    """``sum_k weight_k * loss_k`` over ``terms = [(weight, loss_module), ...]``."""
    return WeightedSum(list(terms))


def combo(terms: Sequence[str | Mapping[str, Any]]) -> WeightedSum:
    """Weighted sum built from specs: each term is a :func:`build_loss` spec plus an optional
    ``weight`` (default 1.0), e.g. ``{"name": "focal", "weight": 1.0, "gamma": 2}``."""
    if isinstance(terms, (str, Mapping)) or not isinstance(terms, Sequence) or not terms:
        raise ValueError(f"combo terms must be a non-empty list of loss specs, got {terms!r}")
    built = []
    for term in terms:
        if isinstance(term, Mapping):
            term = dict(term)
            weight = term.pop("weight", 1.0)
        else:
            weight = 1.0
        built.append((_number("combo weight", weight), build_loss(term)))
    return WeightedSum(built)


LOSSES: dict[str, Callable[..., SegmentationLoss]] = {
    "bce": bce,
    "weighted_bce": weighted_bce,
    "soft_dice": soft_dice,
    "soft_dice_batch": soft_dice_batch,
    "lovasz": lovasz,
    "symmetric_lovasz": symmetric_lovasz,
    "focal": focal,
    "combo": combo,
}


def build_loss(spec: str | Mapping[str, Any]) -> SegmentationLoss:
    """Build a loss module from a config spec.

    ``spec`` is a registry name (``"soft_dice"``) or a mapping with ``name`` and that loss's
    parameters (``{"name": "weighted_bce", "pos_weight": 10}``). ``"combo"`` takes ``terms``, a
    list of specs each with an optional ``weight``::

        {"name": "combo", "terms": [{"name": "bce", "weight": 1.0},
                                    {"name": "soft_dice", "weight": 1.0},
                                    {"name": "focal", "weight": 1.0, "gamma": 2}]}

    Unknown names, unknown or missing parameters, and out-of-range values raise ``ValueError``
    naming the valid choices.
    """
    if isinstance(spec, str):
        name, params = spec, {}
    elif isinstance(spec, Mapping):
        params = dict(spec)
        if "name" not in params:
            raise ValueError(f"loss spec {dict(spec)!r} has no 'name'; valid names: {sorted(LOSSES)}")
        name = params.pop("name")
    else:
        raise ValueError(f"loss spec must be a name or a mapping with 'name', got {spec!r}")
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {sorted(LOSSES)}")
    factory = LOSSES[name]
    signature = inspect.signature(factory)
    valid = list(signature.parameters)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"loss {name!r}: unknown parameter(s) {unknown}; valid parameters: {valid}")
    missing = [
        p for p, v in signature.parameters.items() if v.default is inspect.Parameter.empty and p not in params
    ]
    if missing:
        raise ValueError(f"loss {name!r}: missing parameter(s) {missing}; valid parameters: {valid}")
    return factory(**params)
