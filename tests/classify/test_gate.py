"""classify gate: hand-computed threshold choice, oof threshold applied unchanged, challenge outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dualstage.classify.gate import apply_gate, choose_gate, fit_gate, gate_sweep
from dualstage.classify.tune import tune
from dualstage.core import gating, rle
from helpers.stage_two import FAST, SMALL_SPACE, make_experiment

# Four images (counts: inter, pred_area, true_area, n_pixels):
#   A positive, p=0.90, Dice kept 2*80/200 = 0.8, gated 0
#   B positive, p=0.30, Dice kept 2*50/200 = 0.5, gated 0
#   C negative, p=0.20, Dice kept 0 (40 px false positive), gated 1
#   D negative, p=0.55, Dice kept 0 (30 px false positive), gated 1
PROBS = np.array([0.9, 0.3, 0.2, 0.55])
COUNTS = (
    np.array([80, 50, 0, 0]),
    np.array([100, 100, 40, 30]),
    np.array([100, 100, 0, 0]),
    np.full(4, 1024),
)


def test_choose_gate_hand_computed() -> None:
    # mean Dice per candidate (kept iff p >= t):
    #   t=0.00: A B C D kept          (0.8 + 0.5 + 0 + 0) / 4 = 0.325
    #   t=0.25: C gated               (0.8 + 0.5 + 1 + 0) / 4 = 0.575
    #   t=0.50: B, C gated            (0.8 + 0   + 1 + 0) / 4 = 0.45
    #   t=0.75: B, C, D gated         (0.8 + 0   + 1 + 1) / 4 = 0.70  <- best
    #   t=1.00: all gated             (0   + 0   + 1 + 1) / 4 = 0.50
    res = choose_gate(PROBS, COUNTS, [0.0, 0.25, 0.5, 0.75, 1.0])
    assert res["mean_dice_curve"] == pytest.approx([0.325, 0.575, 0.45, 0.7, 0.5])
    assert res["threshold"] == 0.75 and res["mean_dice"] == pytest.approx(0.7)
    assert res["ungated_mean_dice"] == pytest.approx(0.325)
    assert res["metrics"]["pos_dice"] == pytest.approx(0.4) and res["metrics"]["neg_dice"] == 1.0
    # default grid 0.00..1.00 step 0.01: 0.56..0.90 all give 0.70 (B, C, D gated): 35 tied thresholds,
    # ties -> the middle of that plateau = 0.56 + 17 * 0.01 = 0.73
    res = choose_gate(PROBS, COUNTS)
    assert res["threshold"] == pytest.approx(0.73) and res["mean_dice"] == pytest.approx(0.7)
    # whatever the candidates' order: 0.6, 0.7, 0.85 tie (0.95 gates A too), middle 0.7
    assert choose_gate(PROBS, COUNTS, [0.85, 0.7, 0.6, 0.95])["threshold"] == 0.7


def test_gate_sweep_shapes_and_errors() -> None:
    res = gate_sweep(PROBS, COUNTS, [0.0, 0.5])
    assert res["mean_dice"].shape == (2,) and res["n"].tolist() == [4, 4]
    with pytest.raises(ValueError, match="need probs"):
        gate_sweep(PROBS[:3], COUNTS)


@pytest.fixture(scope="module")
def gated(tmp_path_factory) -> Path:
    exp = make_experiment(tmp_path_factory.mktemp("gate"))
    tune(exp, n_iter=2, space=SMALL_SPACE, progress=False, **FAST)
    fit_gate(exp, mode="both", threads=1, train_set="oof")
    return exp


def test_fit_gate_writes_both_modes(gated) -> None:
    gate = json.loads((gated / "classifier" / "gate.json").read_text())
    assert gate["best_mode"] in ("classifier", "classifier_and_area")
    for mode, rule in (("classifier", "threshold"), ("classifier_and_area", "threshold_area")):
        entry = gate[mode]
        assert entry["chosen_on"] == "oof" and entry["pixel_rule"]["rule"] == rule and entry["n"] == 300
        assert entry["mean_dice_oof"] >= entry["ungated_mean_dice_oof"]
    # area rule alone already empties every 4 px blob: nothing left for the classifier to remove, so
    # the chosen threshold sits on a plateau that starts at 0 (keeps what 0 keeps)
    entry = gate["classifier_and_area"]
    assert entry["mean_dice_oof"] == pytest.approx(entry["ungated_mean_dice_oof"])
    oof = pd.read_csv(gated / "classifier" / "oof_probabilities.csv")
    assert len(oof) == 300 and oof["probability"].between(0, 1).all()


def test_oof_threshold_is_applied_unchanged(gated) -> None:
    t_oof = json.loads((gated / "classifier" / "gate.json").read_text())["classifier"]["threshold"]
    assert t_oof > 0  # on oof, gating removes the negatives' false-positive blobs
    summary = apply_gate(gated, "test", progress=False)
    dec = pd.read_csv(gated / "final" / "test" / "classifier" / "decisions.csv", dtype={"image_id": str})
    assert summary["threshold"] == t_oof
    assert np.array_equal(dec["decision"].to_numpy() == 1, dec["probability"].to_numpy() >= t_oof)
    # test maps are perfect, so on test the best threshold would be 0 (no gating): not what is applied
    hist = gating.load_histograms(gated / "predictions" / "test")
    counts = gating.rule_counts(hist.hist, hist.height, hist.width, {"rule": "threshold", "threshold": 0.5})
    probs = dec.set_index("image_id").loc[hist.image_id, "probability"].to_numpy()
    on_test = choose_gate(probs, counts)
    assert on_test["mean_dice_curve"][0] == 1.0 and on_test["mean_dice"] == 1.0
    assert summary["metrics"]["mean_dice"] == pytest.approx(
        gate_sweep(probs, counts, [t_oof])["mean_dice"][0]
    )
    assert summary["presence"]["n"] == 120


def _check_outputs(out: Path, threshold: float) -> pd.DataFrame:
    """submission.csv round-trips to the final masks; decisions.csv agrees with both."""
    sub = pd.read_csv(out / "submission.csv", dtype=str, keep_default_na=False)
    dec = pd.read_csv(out / "decisions.csv", dtype={"image_id": str})
    assert (
        list(sub.columns) == ["ImageId", "EncodedPixels"]
        and sub["ImageId"].tolist() == dec["image_id"].tolist()
    )
    for image_id, code, row in zip(sub["ImageId"], sub["EncodedPixels"], dec.itertuples(), strict=True):
        mask = np.asarray(Image.open(out / "masks" / f"{image_id}.png"))
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert np.array_equal(rle.decode(code, *mask.shape), mask > 0)
        assert row.mask_area_px == np.count_nonzero(mask)
        assert row.mask_area_1024 == pytest.approx(row.mask_area_px * 1024**2 / mask.size)
        if not row.decision:
            assert code == "-1"
        assert row.decision == (row.probability >= threshold)
    return dec


def test_apply_gate_new_images_and_area_mode(gated) -> None:
    gate = json.loads((gated / "classifier" / "gate.json").read_text())
    s1 = apply_gate(gated, "new", progress=False)
    assert "metrics" not in s1 and s1["n"] == 40  # no truth: outputs only
    plain = _check_outputs(gated / "final" / "new" / "classifier", gate["classifier"]["threshold"])
    out = gated / "final" / "new" / "classifier_and_area"  # each mode its own folder: nothing overwritten
    s2 = apply_gate(gated, "new", mode="classifier_and_area", progress=False)
    area = _check_outputs(out, gate["classifier_and_area"]["threshold"])
    assert s2["threshold"] == gate["classifier_and_area"]["threshold"]
    small = (plain["mask_area_px"] > 0) & (
        plain["mask_area_1024"] < 10000
    )  # 4 px blobs kept by the classifier
    assert small.any() and (area.loc[small, "mask_area_px"] == 0).all()
    big = (plain["mask_area_px"] >= 10) & (area["decision"] == 1)
    assert big.any() and (area.loc[big, "mask_area_px"] == plain.loc[big, "mask_area_px"]).all()
    assert (gated / "final" / "new" / "classifier" / "decisions.csv").is_file()
    with pytest.raises(ValueError, match="unknown gate mode"):
        apply_gate(gated, "new", mode="nope", progress=False)


def test_apply_refuses_features_made_differently(gated, tmp_path) -> None:
    """Settings travel with the features: the gate refuses rows made with other weights / size."""
    params_path = gated / "classifier" / "params.json"
    params = json.loads(params_path.read_text())
    made = {"weights": "none", "weights_sha256": None, "image_size": 128, "version": 1}
    params_path.write_text(json.dumps({**params, "features": made}))
    record = gated / "features" / "new" / "features.json"
    try:
        record.write_text(json.dumps({**made, "image_size": 224}))
        with pytest.raises(ValueError, match="image_size=224.*image_size=128"):
            apply_gate(gated, "new", progress=False)
        record.write_text(json.dumps(made))
        assert apply_gate(gated, "new", progress=False)["n"] == 40
    finally:
        params_path.write_text(json.dumps(params))
        record.unlink(missing_ok=True)
