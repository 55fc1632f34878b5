"""dualstage.core.gating (rules, histogram engine) and dualstage.segment.sweep, pinned by hand cases
and by exact agreement with brute-force re-thresholding of the maps."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dualstage.core import gating, rle
from dualstage.core.metrics import dice_from_counts, summarize
from dualstage.segment.sweep import run_sweep, selection_set
from helpers.stage_two import THRESHOLDS, random_set

# ---------------------------------------------------------------- pixel rule and levels


def test_levels_and_pixel_rule():
    assert gating.level(0.5) == 128  # 127.5 -> q >= 128
    assert gating.level(0.2) == 52  # 51.0 exactly: q = 51 is p = 0.2, not > 0.2
    # 0.6 * 255 = 153 but the float 0.6 may arrive as 0.6000000000000001 or 0.5999999999999999
    for t in (0.6, 0.1 * 6, 0.7 - 0.1, np.arange(0.1, 1, 0.1)[5]):
        assert gating.level(t) == 154
    assert gating.level(0.0) == 1 and gating.level(1.0) == 256
    np.testing.assert_array_equal(gating.levels([0.1, 0.3, 0.9]), [26, 77, 230])
    q = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for t in (0.2, 0.5, 0.7 - 0.1):
        mask = gating.apply_rule(q, {"rule": "threshold", "threshold": t})
        assert mask.sum() == 256 - gating.level(t) and not mask.ravel()[gating.level(t) - 1]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        gating.level(1.5)


def test_keep_area_scaled_to_1024():
    # 16 x 16: one pixel = 1024^2 / 256 = 4096 px at 1024 scale; bounds are inclusive
    assert gating.keep_area(2, 256, 8192) and not gating.keep_area(2, 256, 8193)
    assert gating.keep_area(0, 256, 0)


# ---------------------------------------------------------------- hand-computed rules

# Three images (one 2x4 positive, one 2x4 negative, one non-square 4x2 positive).
# At 2x4 / 4x2 (8 px) one pixel counts 1024^2 / 8 = 131072 px at 1024 scale.
MAPS = [
    np.array([[200, 100, 30, 0], [0, 0, 0, 0]], np.uint8),
    np.array([[150, 0, 0, 0], [0, 0, 0, 0]], np.uint8),
    np.array([[0, 0], [0, 0], [255, 140], [90, 60]], np.uint8),
]
TRUTH = [
    np.array([[1, 1, 0, 0], [0, 0, 0, 0]], bool),
    np.zeros((2, 4), bool),
    np.array([[0, 0], [0, 0], [1, 1], [1, 0]], bool),
]
HAND = [
    # t=0.5 (q >= 128): A {200} -> 2*1/(1+2) = 2/3; B {150} vs empty -> 0; C {255,140} -> 2*2/(2+3) = 0.8
    ({"rule": "threshold", "threshold": 0.5}, [2 / 3, 0.0, 0.8]),
    # t=0.3 (q >= 77): A {200,100} -> 1; B -> 0; C {255,140,90} -> 1
    ({"rule": "threshold", "threshold": 0.3}, [1.0, 0.0, 1.0]),
    # + min_area 200000 (>= 2 px): A (2 px) kept -> 1; B (1 px = 131072) emptied -> 1; C (3 px) -> 1
    ({"rule": "threshold_area", "threshold": 0.3, "min_area": 200000}, [1.0, 1.0, 1.0]),
    # + min_area 300000 (>= 3 px): A emptied -> 0; B emptied -> 1; C kept -> 1
    ({"rule": "threshold_area", "threshold": 0.3, "min_area": 300000}, [0.0, 1.0, 1.0]),
    # triplet (0.5, 200000, 0.3): top masks A 1 px -> empty (0), B 1 px -> empty (1),
    #   C 2 px -> passes, bottom q >= 77 gives {255,140,90} -> 1
    ({"rule": "triplet", "top": 0.5, "min_area": 200000, "bottom": 0.3}, [0.0, 1.0, 1.0]),
    # triplet (0.5, 100000, 0.2): all pass; bottom q >= 52: A {200,100} -> 1; B {150} -> 0;
    #   C {255,140,90,60} -> 2*3/(4+3) = 6/7
    ({"rule": "triplet", "top": 0.5, "min_area": 100000, "bottom": 0.2}, [1.0, 0.0, 6 / 7]),
]


@pytest.mark.parametrize("rule,dice", HAND)
def test_hand_rules(rule, dice):
    masks = [gating.apply_rule(q, rule) for q in MAPS]
    assert summarize(masks, TRUTH)["mean_dice"] == pytest.approx(np.mean(dice), abs=1e-12)
    hist = np.stack([gating.histogram(q, t) for q, t in zip(MAPS, TRUTH, strict=True)])
    counts = gating.rule_counts(hist, [2, 2, 4], [4, 4, 2], rule)
    np.testing.assert_allclose(dice_from_counts(*counts[:3]), dice, atol=1e-12)


def test_lcc_hand():
    q = np.zeros((4, 4), np.uint8)
    q[0, 0] = q[1, 1] = 200  # diagonal neighbours: one 8-connected component of 2 px
    q[3, 3] = 180  # a 1 px component on the true mask
    truth = np.zeros((4, 4), bool)
    truth[3, 3] = True
    plain = gating.apply_rule(q, {"rule": "threshold", "threshold": 0.5})
    lcc = gating.apply_rule(q, {"rule": "threshold", "threshold": 0.5, "lcc": True})
    # plain: inter 1, area 3, true 1 -> 2/4 = 0.5; lcc keeps the 2 px diagonal pair -> 0
    assert summarize(plain, truth)["mean_dice"] == 0.5
    assert summarize(lcc, truth)["mean_dice"] == 0.0 and lcc[0, 0] and lcc[1, 1] and lcc.sum() == 2


def test_rule_errors():
    q = np.zeros((2, 2), np.uint8)
    with pytest.raises(ValueError, match="valid rules: threshold, threshold_area, triplet"):
        gating.apply_rule(q, {"rule": "otsu"})
    with pytest.raises(ValueError, match="bottom <= top"):
        gating.apply_rule(q, {"rule": "triplet", "top": 0.3, "min_area": 0, "bottom": 0.5})
    with pytest.raises(ValueError, match="missing"):
        gating.apply_rule(q, {"rule": "threshold_area", "threshold": 0.5})
    with pytest.raises(ValueError, match="unknown"):
        gating.apply_rule(q, {"rule": "threshold", "treshold": 0.5, "threshold": 0.5})
    with pytest.raises(ValueError, match="uint8"):
        gating.apply_rule(q.astype(float), {"rule": "threshold", "threshold": 0.5})


# ---------------------------------------------------------------- engine == brute force

AREAS = [0, 4096, 8192, 50000, 123456.5, 1e6]  # 4096 / 8192 = exactly 1 / 2 px at 16 x 16


def _assert_same(engine: dict, brute: dict):
    assert engine.keys() == brute.keys()
    for key, value in brute.items():
        got = engine[key]
        assert (math.isnan(value) and math.isnan(got)) or got == value, (key, got, value)


def _brute(maps, truths, rule):
    return summarize([gating.apply_rule(q, rule) for q in maps], truths)


def test_engine_matches_brute_force_threshold_and_area():
    maps, truths, hist, H, W = random_set()
    res_t = gating.sweep_threshold(hist, THRESHOLDS)
    res_ta = gating.sweep_threshold_area(hist, H, W, THRESHOLDS, AREAS)
    assert res_ta["mean_dice"].shape == (len(THRESHOLDS), len(AREAS))
    for i, t in enumerate(THRESHOLDS):
        _assert_same(
            {k: v[i] for k, v in res_t.items()}, _brute(maps, truths, {"rule": "threshold", "threshold": t})
        )
        for j, a in enumerate(AREAS):
            rule = {"rule": "threshold_area", "threshold": t, "min_area": a}
            _assert_same({k: v[i, j] for k, v in res_ta.items()}, _brute(maps, truths, rule))


def test_engine_matches_brute_force_triplet():
    maps, truths, hist, H, W = random_set(1)
    tops, bottoms = [0.2, 0.5, 0.7 - 0.1, 0.9], [0.0, 0.1, 0.2, 0.5, 0.6]
    frame = gating.sweep_triplet(hist, H, W, tops, AREAS, bottoms)
    assert len(frame) == (3 + 4 + 5 + 5) * len(AREAS) and (frame["bottom"] <= frame["top"] + 1e-9).all()
    for row in frame.itertuples(index=False):
        rule = {"rule": "triplet", "top": row.top, "min_area": row.min_area, "bottom": row.bottom}
        brute = _brute(maps, truths, rule)
        _assert_same({k: getattr(row, k) for k in brute}, brute)


def test_triplet_rows_are_top_then_area_then_bottom():
    """The grid's order is the tie-break of the rule choice (the first best row wins): by hand."""
    _, _, hist, H, W = random_set(1)
    frame = gating.sweep_triplet(hist, H, W, [0.5, 0.7], [0, 10], [0.3, 0.6, 0.1 * 7])
    rows = list(frame[["top", "min_area", "bottom"]].itertuples(index=False, name=None))
    assert rows == [
        (0.5, 0, 0.3),
        (0.5, 10, 0.3),
        (0.7, 0, 0.3),
        (0.7, 0, 0.6),
        (0.7, 0, 0.1 * 7),  # 0.7000000000000001: equal to the top at 9 decimals, kept
        (0.7, 10, 0.3),
        (0.7, 10, 0.6),
        (0.7, 10, 0.1 * 7),
    ]


def test_engine_chunks_give_same_result(monkeypatch):
    maps, truths, hist, H, W = random_set(2)
    whole = gating.sweep_threshold_area(hist, H, W, THRESHOLDS, AREAS)
    monkeypatch.setattr(gating, "MAX_CELLS", 5)  # one grid row per chunk
    for k, v in gating.sweep_threshold_area(hist, H, W, THRESHOLDS, AREAS).items():
        np.testing.assert_array_equal(v, whole[k])


# ---------------------------------------------------------------- histogram files


def test_histogram_manual_count():
    q = np.array([[0, 5, 5], [255, 5, 0]], np.uint8)
    t = np.array([[1, 1, 0], [1, 0, 0]], bool)
    h = gating.histogram(q, t)
    assert h.shape == (2, 256) and h.dtype == np.int64
    expected = np.zeros((2, 256), np.int64)
    expected[0, 5], expected[0, 0] = 2, 1  # outside: 5, 5, 0
    expected[1, 0], expected[1, 5], expected[1, 255] = 1, 1, 1  # inside: 0, 5, 255
    np.testing.assert_array_equal(h, expected)


def test_histograms_round_trip_and_errors(tmp_path):
    _, _, hist, H, W = random_set()
    ids = [f"img{k}" for k in range(len(hist))]
    path = gating.write_histograms(tmp_path / "s" / "histograms.npz", ids, hist, H, W)
    loaded = gating.load_histograms(tmp_path / "s")
    assert loaded.image_id.tolist() == ids
    np.testing.assert_array_equal(loaded.hist, hist)
    np.testing.assert_array_equal(loaded.height, H)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        gating.load_histograms(tmp_path / "nowhere")
    np.savez(path, image_id=np.array(ids), hist=hist[:, :, :10], height=H, width=W)
    with pytest.raises(ValueError, match="histograms.npz.*256"):
        gating.load_histograms(path)
    np.savez(path, image_id=np.array(ids), hist=hist, height=H + 1, width=W)
    with pytest.raises(ValueError, match="histograms.npz.*height\\*width"):
        gating.load_histograms(path)
    np.savez(path, image_id=np.array(ids), hist=hist)
    with pytest.raises(ValueError, match=r"histograms.npz: missing arrays \['height', 'width'\]"):
        gating.load_histograms(path)
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="histograms.npz"):
        gating.load_histograms(path)


# ---------------------------------------------------------------- the sweep job


def _write_set(root, name, maps, truths, ids, split):
    d = root / name
    (d / "maps").mkdir(parents=True)
    for image_id, q in zip(ids, maps, strict=True):
        Image.fromarray(q).save(d / "maps" / f"{image_id}.png")
    index = pd.DataFrame(
        {
            "image_id": ids,
            "split": split,
            "fold_model": 0,
            "height": [q.shape[0] for q in maps],
            "width": [q.shape[1] for q in maps],
            "has_truth": 1,
            "has_pneumothorax": [int(t.any()) for t in truths],
            "true_area_px": [int(t.sum()) for t in truths],
        }
    )
    index.to_csv(d / "index.csv", index=False)
    hist = np.stack([gating.histogram(q, t) for q, t in zip(maps, truths, strict=True)])
    gating.write_histograms(d / "histograms.npz", ids, hist, index["height"], index["width"])


@pytest.fixture()
def pred_root(tmp_path):
    maps, truths, *_ = random_set(3)
    maps2, truths2, *_ = random_set(4)
    root = tmp_path / "predictions"
    _write_set(root, "oof", maps, truths, [f"a{k}" for k in range(len(maps))], "train")
    _write_set(root, "test", maps2, truths2, [f"b{k}" for k in range(len(maps2))], "test")
    rows = [(f"{p}{k}", rle.encode(t)) for p, ts in (("a", truths), ("b", truths2)) for k, t in enumerate(ts)]
    pd.DataFrame(rows, columns=["ImageId", "EncodedPixels"]).to_csv(tmp_path / "masks.csv", index=False)
    return root, (maps, truths)


def test_run_sweep(pred_root, tmp_path):
    root, (maps, truths) = pred_root
    out = tmp_path / "exp"
    summary = run_sweep(root, out, progress=False, default_threshold=0.5)
    op = json.loads((out / "operating_point.json").read_text())
    assert op["chosen_on"] == summary["chosen_on"] == "oof" and op["n_images"] == len(maps)
    for name in ("oof", "test"):
        for table in ("table3_thresholds", "thresholds_fine", "table4_threshold_area", "triplet", "chosen"):
            assert (out / "sweep" / name / f"{table}.csv").is_file()
    fine = pd.read_csv(out / "sweep" / "oof" / "thresholds_fine.csv")
    table4 = pd.read_csv(out / "sweep" / "oof" / "table4_threshold_area.csv")
    assert (
        len(fine) == 49  # the one grid of the tuned rules: 0.02 .. 0.98 step 0.02
        and len(table4) == 49 * 52
        and list(table4.columns[:3]) == ["threshold", "min_area", "n"]
    )
    assert op["threshold"]["metrics"]["mean_dice"] == pytest.approx(fine["mean_dice"].max())
    assert op["threshold_area"]["metrics"]["mean_dice"] == pytest.approx(table4["mean_dice"].max())
    assert op["best_rule"] in ("threshold", "threshold_area", "triplet") and "lcc" not in op
    # the chosen rules are directly usable and reproduce their metrics on the maps
    for key in ("default", "threshold", "threshold_area", "triplet"):
        brute = _brute(maps, truths, op[key])
        assert op[key]["metrics"]["mean_dice"] == pytest.approx(brute["mean_dice"], abs=1e-9)
    assert set(summary["report"]) == {"oof", "test"} and summary["skipped"] == []
    again = run_sweep(root, tmp_path / "b", report_on=("test", "nope"), progress=False, default_threshold=0.5)
    assert again["skipped"] == ["nope"]
    with pytest.raises(ValueError, match="test"):
        run_sweep(root, out, select_on="test", progress=False, default_threshold=0.5)


def test_run_sweep_lcc(pred_root, tmp_path):
    root, (maps, truths) = pred_root
    out = tmp_path / "exp"
    with pytest.raises(ValueError, match="truth"):
        run_sweep(root, out, lcc=True, progress=False, default_threshold=0.5)
    run_sweep(
        root,
        out,
        lcc=True,
        truth=tmp_path / "masks.csv",
        lcc_thresholds=[0.2, 0.5, 0.8],
        progress=False,
        default_threshold=0.5,
    )
    op = json.loads((out / "operating_point.json").read_text())
    lcc = pd.read_csv(out / "sweep" / "oof" / "lcc_thresholds.csv")
    assert (out / "sweep" / "test" / "lcc_thresholds.csv").is_file() and len(lcc) == 3
    assert op["lcc"]["lcc"] is True and op["lcc"]["rule"] == "threshold"
    for row in lcc.itertuples(index=False):
        brute = _brute(maps, truths, {"rule": "threshold", "threshold": row.threshold, "lcc": True})
        assert row.mean_dice == pytest.approx(brute["mean_dice"], abs=1e-12)


def test_selection_set_rules(pred_root, tmp_path):
    root, _ = pred_root
    (root / "oof").rename(root / "val")
    assert selection_set(root) == "val"
    (root / "val").rename(root / "other")
    with pytest.raises(ValueError, match="oof/ or val/.*found other"):
        selection_set(root)
    index = root / "other" / "index.csv"
    index.write_text(index.read_text().replace(",train,", ",test,"))
    with pytest.raises(ValueError, match="test-split"):
        run_sweep(
            root, tmp_path / "x", select_on="other", report_on=(), progress=False, default_threshold=0.5
        )
