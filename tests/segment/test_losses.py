"""Losses against values worked by hand on 1x1x2x2 tensors (arithmetic in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from dualstage.segment.losses import (
    LOSSES,
    WeightedSum,
    bce,
    build_loss,
    focal,
    lovasz,
    soft_dice,
    soft_dice_batch,
    symmetric_lovasz,
    weighted_bce,
    weighted_sum,
)

LN2, LN3 = math.log(2.0), math.log(3.0)
LN43 = math.log(4.0 / 3.0)


def t(rows: list[list[float]]) -> torch.Tensor:
    """A (1, 1, 2, 2) float64 tensor."""
    return torch.tensor(rows, dtype=torch.float64).reshape(1, 1, 2, 2)


# logits x = [0, ln3 | ln3, -ln3] -> p = sigmoid(x) = [1/2, 3/4 | 3/4, 1/4]; target y = [1, 1 | 0, 0]
X = t([[0.0, LN3], [LN3, -LN3]])
Y = t([[1.0, 1.0], [0.0, 0.0]])


def close(value: torch.Tensor, expected: float, tol: float = 1e-12) -> None:
    assert value.ndim == 0
    assert value.item() == pytest.approx(expected, rel=tol, abs=tol)


F32 = 1e-6  # the Lovasz losses compute in float32 (smp's hinge casts its Jaccard gradient to float32)


def test_bce_by_hand() -> None:
    # per pixel -log p_t: y=1,p=1/2 -> ln2; y=1,p=3/4 -> ln(4/3); y=0,p=3/4 -> ln4; y=0,p=1/4 -> ln(4/3)
    # mean = (ln2 + ln(4/3) + 2 ln2 + ln(4/3)) / 4 = (3 ln2 + 2 ln(4/3)) / 4
    close(bce()(X, Y), (3 * LN2 + 2 * LN43) / 4)


def test_weighted_bce_by_hand() -> None:
    # positives x3: (3 ln2 + 3 ln(4/3) + 2 ln2 + ln(4/3)) / 4 = (5 ln2 + 4 ln(4/3)) / 4; mean over 4 pixels
    close(weighted_bce(pos_weight=3)(X, Y), (5 * LN2 + 4 * LN43) / 4)


def test_soft_dice_batch_by_hand() -> None:
    # I = sum p*y = 1/2 + 3/4 = 5/4; sum p = 9/4; sum y = 2
    # smooth 0: dice = 2I / (sum p + sum y) = (5/2) / (17/4) = 10/17 -> loss 7/17
    close(soft_dice_batch()(X, Y), 7 / 17)
    # smp's smooth s enters as (I + s) / ((sum p + sum y) / 2 + s) = (5/4 + 1) / (17/8 + 1) = 18/25
    # -> loss 7/25 (the paper's form (2I + s)/(P + Y + s) would give 1 - 2/3: smp's s counts double)
    close(soft_dice_batch(smooth=1.0)(X, Y), 7 / 25)


def test_soft_dice_batch_pools_the_batch_and_ignores_an_all_negative_batch() -> None:
    # image 2: empty target, logits 0 -> p = 1/2 on 4 pixels (sum p = 2)
    x = torch.cat([X, torch.zeros_like(X)])
    y = torch.cat([Y, torch.zeros_like(Y)])
    # one pooled score: 2 * 5/4 / (9/4 + 2 + 2) = (5/2) / (25/4) = 2/5 -> loss 3/5 (not (7/17 + 0) / 2)
    close(soft_dice_batch()(x, y), 3 / 5)
    # all-negative batch: loss exactly 0 and no gradient, however confident the false positives
    logits = torch.full((2, 1, 2, 2), 5.0, requires_grad=True)
    loss = soft_dice_batch(smooth=1.0)(logits, torch.zeros(2, 1, 2, 2))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(logits.grad) == 0


def test_soft_dice_is_per_image_with_the_papers_smoothing() -> None:
    # the paper's eq. 14 per image: (2I + e) / (P + Y + e), e = 1
    # image 1: I = 5/4, P = 9/4, Y = 2 -> (5/2 + 1) / (17/4 + 1) = (7/2) / (21/4) = 2/3 -> loss 1/3
    close(soft_dice()(X, Y), 1 / 3)
    # image 2: empty truth, p = 1/2 on 4 pixels: (0 + 1) / (2 + 0 + 1) = 1/3 -> loss 2/3 (the mass costs)
    x = torch.cat([X, torch.zeros_like(X)])
    y = torch.cat([Y, torch.zeros_like(Y)])
    close(soft_dice()(x, y), (1 / 3 + 2 / 3) / 2)
    # an all-negative batch still carries a gradient pushing the false positives down
    logits = torch.full((2, 1, 2, 2), 5.0, requires_grad=True)
    loss = soft_dice()(logits, torch.zeros(2, 1, 2, 2))
    loss.backward()
    assert loss.item() > 0.5 and (logits.grad > 0).all()
    close(soft_dice(smooth=2.0)(X, Y), 1 - (5 / 2 + 2) / (17 / 4 + 2))


# Lovasz case: x = [2, -1 | 0.5, -3], y = [1, 0 | 0, 1]
LX = t([[2.0, -1.0], [0.5, -3.0]])
LY = t([[1.0, 0.0], [0.0, 1.0]])


def test_lovasz_hinge_by_hand() -> None:
    # signs 2y-1 = [1,-1,-1,1]; errors 1 - x*sign = [-1, 0, 1.5, 4]
    # sorted desc: [4 (y=1), 1.5 (y=0), 0 (y=0), -1 (y=1)], gts = 2
    # intersection = gts - cumsum(y) = [1,1,1,0]; union = gts + cumsum(1-y) = [2,3,4,4]
    # jaccard 1 - I/U = [1/2, 2/3, 3/4, 1] -> gradient (differences) [1/2, 1/6, 1/12, 1/4]
    # loss = relu(errors) . grad = 4/2 + 1.5/6 + 0 + 0 = 2.25
    close(lovasz()(LX, LY), 2.25, F32)


def test_symmetric_lovasz_by_hand() -> None:
    # second term L(-x, 1-y): errors 1 - (-x)(-sign) are the same [4, 1.5, 0, -1] in sorted order,
    # labels flipped to [0, 1, 1, 0]; gts = 2: I = [2,1,0,0], U = [3,3,3,4]
    # jaccard [1/3, 2/3, 1, 1] -> grad [1/3, 1/3, 1/3, 0]; loss = 4/3 + 1.5/3 = 11/6
    # symmetric = (9/4 + 11/6) / 2 = 49/24
    close(lovasz()(-LX, 1 - LY), 11 / 6, F32)
    close(symmetric_lovasz()(LX, LY), 49 / 24, F32)
    close(symmetric_lovasz()(LX, LY), (lovasz()(LX, LY) + lovasz()(-LX, 1 - LY)).item() / 2, F32)


def test_symmetric_lovasz_on_an_empty_image_penalises_every_false_positive() -> None:
    x = t([[1.0, 0.5], [-2.0, 0.0]]).requires_grad_()
    y = torch.zeros_like(x)
    # errors 1 + x = [2, 1.5, -1, 1]. plain hinge (gts = 0): jaccard all 1 -> grad [1,0,0,0] -> loss 2
    # flipped term (all labels 1, gts = 4): jaccard k/4 -> grad 1/4 each -> (2 + 1.5 + 0 + 1)/4 = 9/8
    # symmetric = (2 + 9/8) / 2 = 25/16
    loss = symmetric_lovasz()(x, y)
    close(loss, 25 / 16, F32)
    assert loss.dtype == torch.float32
    loss.backward()
    # d/dx: pixel 0: (1 + 1/4)/2; pixels 1 and 3: (0 + 1/4)/2; pixel 2 (error < 0): 0
    assert x.grad.flatten().tolist() == pytest.approx([0.625, 0.125, 0.0, 0.125], abs=F32)
    plain = t([[1.0, 0.5], [-2.0, 0.0]]).requires_grad_()
    lovasz()(plain, y).backward()
    assert plain.grad.flatten().tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0], abs=F32)
    # confident negatives (all logits <= -1) cost nothing
    assert symmetric_lovasz()(torch.full_like(y, -2.0), y).item() == 0.0


def test_focal_by_hand() -> None:
    # p_t = [1/2, 3/4, 1/4, 3/4]; (1 - p_t)^2 = [1/4, 1/16, 9/16, 1/16]; -log p_t = [ln2, ln4/3, ln4, ln4/3]
    # sum = ln2/4 + ln(4/3)/16 + 18 ln2/16 + ln(4/3)/16 = (22 ln2 + 2 ln(4/3)) / 16; mean -> / 64
    close(focal(gamma=2)(X, Y), (22 * LN2 + 2 * LN43) / 64)
    # alpha = 0.25: positives x0.25, negatives x0.75
    expected = (0.25 * (4 * LN2 + LN43) + 0.75 * (18 * LN2 + LN43)) / 64
    close(focal(gamma=2, alpha=0.25)(X, Y), expected)
    # gamma = 0 is plain BCE
    close(focal(gamma=0)(X, Y), bce()(X, Y).item())


def test_combo_is_the_weighted_sum() -> None:
    loss = build_loss(
        {
            "name": "combo",
            "terms": [
                {"name": "bce", "weight": 1.0},
                {"name": "soft_dice_batch", "weight": 0.5},
                {"name": "focal", "weight": 2, "gamma": 2},
            ],
        }
    )
    assert isinstance(loss, WeightedSum)
    expected = (3 * LN2 + 2 * LN43) / 4 + 0.5 * 7 / 17 + 2 * (22 * LN2 + 2 * LN43) / 64
    close(loss(X, Y), expected)
    close(weighted_sum([(1.0, bce()), (3.0, soft_dice_batch())])(X, Y), (3 * LN2 + 2 * LN43) / 4 + 3 * 7 / 17)
    assert repr(loss) == "combo(1*bce() + 0.5*soft_dice_batch(smooth=0) + 2*focal(gamma=2, alpha=None))"
    assert loss.describe() == repr(loss)


@pytest.mark.parametrize(
    "spec",
    [
        "bce",
        {"name": "weighted_bce", "pos_weight": 10},
        "soft_dice",
        "lovasz",
        "symmetric_lovasz",
        {"name": "focal", "gamma": 2.0},
        {"name": "combo", "terms": ["bce", "soft_dice", {"name": "focal", "weight": 1.0, "gamma": 2}]},
    ],
)
def test_gradients_flow(spec) -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    target = (torch.rand(2, 1, 8, 8) > 0.7).float()
    target[1] = 0  # one empty image in the batch
    loss = build_loss(spec)(logits, target)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_half_precision_logits_are_promoted() -> None:
    loss = weighted_bce(3)(X.half(), Y)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx((5 * LN2 + 4 * LN43) / 4, rel=1e-3)


def test_build_from_names_and_reprs() -> None:
    assert set(LOSSES) >= {"bce", "weighted_bce", "soft_dice", "symmetric_lovasz", "focal", "combo"}
    assert repr(build_loss({"name": "weighted_bce", "pos_weight": 10})) == "weighted_bce(pos_weight=10)"
    assert repr(build_loss("symmetric_lovasz")) == "symmetric_lovasz()"
    assert build_loss({"name": "soft_dice", "smooth": 1}).describe() == "soft_dice(smooth=1)"


def test_registry_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown loss 'dice'.*valid names: \['bce', 'combo'"):
        build_loss("dice")
    with pytest.raises(
        ValueError, match=r"unknown parameter\(s\) \['gama'\]; valid parameters: \['gamma', 'alpha'\]"
    ):
        build_loss({"name": "focal", "gama": 2})
    with pytest.raises(ValueError, match=r"missing parameter\(s\) \['pos_weight'\]"):
        build_loss("weighted_bce")
    with pytest.raises(ValueError, match="has no 'name'"):
        build_loss({"pos_weight": 3})
    with pytest.raises(ValueError, match="unknown loss 'lovasz_sym'"):
        build_loss({"name": "combo", "terms": [{"name": "lovasz_sym", "weight": 1}]})
    with pytest.raises(ValueError, match="non-empty list"):
        build_loss({"name": "combo", "terms": []})
    with pytest.raises(ValueError, match="pos_weight must be a finite number"):
        build_loss({"name": "weighted_bce", "pos_weight": "10"})
    with pytest.raises(ValueError, match=r"alpha must lie in \[0.0, 1.0\]"):
        focal(alpha=1.5)
    with pytest.raises(ValueError, match=r"expected logits and target of one shape \(N, 1, H, W\)"):
        bce()(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2))
