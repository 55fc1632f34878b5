"""segment evaluate's quantities, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from dualstage.core import gating
from dualstage.segment.evaluate import _pooled_iou
from dualstage.segment.sweep import MIN_AREAS


def test_pooled_iou_by_hand():
    # image 1 (2 x 4): truth 4 px, prediction 3 px, 2 shared -> union 5; image 2: both empty
    q1, t1 = np.zeros((2, 4), np.uint8), np.zeros((2, 4), bool)
    t1[0, :] = True
    q1[0, :2] = 255
    q1[1, 0] = 255
    q2, t2 = np.zeros((2, 4), np.uint8), np.zeros((2, 4), bool)
    hist = gating.Histograms(
        np.array(["a", "b"]),
        np.stack([gating.histogram(q1, t1), gating.histogram(q2, t2)]),
        np.array([2, 2]),
        np.array([4, 4]),
    )
    rule = {"rule": "threshold", "threshold": 0.5}
    assert _pooled_iou(hist, rule) == pytest.approx(2 / 5)  # per-image mean with empty = 1 would be 0.7
    assert np.isnan(
        _pooled_iou(
            gating.Histograms(hist.image_id[1:], hist.hist[1:], hist.height[1:], hist.width[1:]), rule
        )
    )


def test_area_grid_has_table4_rows():
    for area in (0, 250, 500, 1000, 1500, 2000, 2500, 3000, 4000, 5000):
        assert area in MIN_AREAS
