"""External validation on tiny phantoms: frozen gates are the source's rules applied by hand,
re-chosen rules never see the study they score, another layout and image size work, areas carry
over physically, and the command's errors are one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from xgboost import XGBClassifier

from dualstage.artifacts.external_counts import gate_columns, read_counts
from dualstage.artifacts.feature_set import load_feature_table
from dualstage.artifacts.gates import GATES
from dualstage.artifacts.layout import ExperimentDir
from dualstage.artifacts.operating_points import OperatingPoints
from dualstage.artifacts.prediction_set import INDEX_COLUMNS, PredictionSet
from dualstage.classify.tune import load_classifier, save_model
from dualstage.core import gating
from dualstage.core.rle import decode
from dualstage.crossfit.external import (
    SetData,
    area_factors,
    deployed_pipelines,
    rechosen_choices,
    study_masks,
    usable_gates,
)
from dualstage.crossfit.external_eval import evaluate_set, load_set
from dualstage.data.images import read_image_file
from dualstage.data.phantom import generate
from dualstage.data.prepare import prepare
from dualstage.report.document import render_markdown
from dualstage.report.external import external_comparison, external_section, external_summary
from dualstage.report.readme import EXTERNAL_BLOCK, EXTERNAL_REFERENCE, render_external_block, replace_block
from helpers.commands import call

ROOT = Path(__file__).resolve().parents[2]
RULES = [
    {
        "default": {"rule": "threshold", "threshold": 0.5},
        "threshold": {"rule": "threshold", "threshold": 0.4},
        "threshold_area": {"rule": "threshold_area", "threshold": 0.3, "min_area": 900},
        "triplet": {"rule": "triplet", "top": 0.7, "min_area": 300, "bottom": 0.3},
    },
    {
        "default": {"rule": "threshold", "threshold": 0.5},
        "threshold": {"rule": "threshold", "threshold": 0.6},
        "threshold_area": {"rule": "threshold_area", "threshold": 0.5, "min_area": 2000},
        "triplet": {"rule": "triplet", "top": 0.6, "min_area": 1200, "bottom": 0.4},
    },
    {
        "default": {"rule": "threshold", "threshold": 0.5},
        "threshold": {"rule": "threshold", "threshold": 0.5},
        "threshold_area": {"rule": "threshold_area", "threshold": 0.4, "min_area": 500},
        "triplet": {"rule": "triplet", "top": 0.5, "min_area": 600, "bottom": 0.5},
    },
]
SETTINGS = {"weights": "none", "weights_sha256": None, "image_size": 32, "version": 1}


def _map(rng, truth: np.ndarray, k: int) -> np.ndarray:
    """A fake uint8 probability map (H, W): noise, brighter inside the truth, a false blob sometimes."""
    q = rng.uniform(0, 0.35, truth.shape) + 0.45 * truth * rng.uniform(0.6, 1.2)
    if rng.random() < 0.4:
        h, w = truth.shape
        r, c = rng.integers(0, h - 12), rng.integers(0, w - 12)
        q[r : r + 4 + 3 * k, c : c + 8] += 0.5
    return np.clip(np.round(q * 255), 0, 255).astype(np.uint8)


def _pipeline(exp: ExperimentDir, k: int, rng) -> None:
    """Source fold pipeline k: operating points, a tiny classifier on 5 features, its gate file."""
    op = OperatingPoints("oof folds", 10, "threshold_area", RULES[k], {}, {}, fitted_ids=("a",))
    op.write(exp.crossfit_fold(k) / "operating_point.json")
    cdir = exp.crossfit_fold(k) / "classifier"
    X, y = rng.normal(size=(40, 5)), rng.integers(0, 2, 40)
    save_model(XGBClassifier(n_estimators=4, max_depth=2, random_state=0).fit(X, y), cdir / "model.ubj")
    params = {"features": SETTINGS, "best_params": {}, "base": {"seed": 0, "max_bin": 64}}
    (cdir / "params.json").write_text(json.dumps(params))
    gate = {
        "classifier": {"threshold": 0.3 + 0.1 * k, "pixel_rule": RULES[k]["threshold"]},
        "classifier_and_area": {"threshold": 0.5, "pixel_rule": RULES[k]["threshold_area"]},
    }
    (cdir / "gate.json").write_text(json.dumps(gate))


def _external_set(exp: ExperimentDir, name: str, rng) -> None:
    """Maps and features of the prepared external set for every fold pipeline (as the command makes)."""
    prepared = exp.external_prepared(name)
    manifest = pd.read_csv(prepared / "manifest.csv", dtype={"image_id": str})
    truth = pd.read_csv(prepared / "masks.csv", dtype={"ImageId": str}).set_index("ImageId")
    for k in range(3):
        pset = PredictionSet(exp.prediction_set(f"{name}_fold_{k}"))
        for r in manifest.itertuples():
            mask = decode(truth.loc[r.image_id, "EncodedPixels"], r.height, r.width)
            pset.write_image(r.image_id, _map(rng, mask, k), mask)
        index = manifest.assign(
            split="all", fold_model=f"fold_{k}", has_truth=1, true_area_px=manifest["mask_area_px"]
        )
        pset.write_index(index[[*INDEX_COLUMNS]])
        fdir = exp.feature_set(f"{name}_fold_{k}")
        fdir.mkdir(parents=True)
        ids = manifest["image_id"].to_numpy(str)
        np.savez(
            fdir / "features.npz",
            image_id=ids,
            X=rng.normal(size=(ids.size, 5)).astype(np.float32),
            feature_names=np.array([f"f{i}" for i in range(5)]),
        )
        pd.DataFrame({"image_id": ids, "has_pneumothorax": manifest["has_pneumothorax"]}).to_csv(
            fdir / "index.csv", index=False
        )
        (fdir / "features.json").write_text(json.dumps(SETTINGS))


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A source experiment of 3 fold pipelines and a shifted-site external set in the png layout
    (120 x 96 px, not the source's square grid), scored."""
    tmp = tmp_path_factory.mktemp("ext")
    rng = np.random.default_rng(0)
    exp = ExperimentDir(tmp / "exp")
    for k in range(3):
        _pipeline(exp, k, rng)
    data = tmp / "site"
    generate(data, 24, size=96, layout="png", seed=3, site="shifted", lesion_contrast=2.5, progress=False)
    prepare(data, exp.external_prepared("site"), sizes=(64,), workers=0, n_folds=3, progress=False)
    _external_set(exp, "site", rng)
    record = evaluate_set(exp.root, "site", "all", 0.5, area="auto")
    return exp, record


def test_an_external_set_in_another_layout_and_size_is_scored(scored):
    exp, record = scored
    counts = read_counts(exp, "site")
    assert len(counts) == 24 and record["n"] == 24 and record["area"]["mode"] == "grid"  # png: no spacing
    assert set(counts["n_pixels"]) == {120 * 96}
    assert record["deployed"].startswith("majority vote of 3")
    assert record["gates"] == [g.key for g in GATES] and record["external_folds"] == [0, 1, 2]


def test_frozen_gates_are_the_source_rules_applied_by_hand(scored):
    exp, _ = scored
    counts = read_counts(exp, "site").set_index("image_id")
    truth = pd.read_csv(exp.external_prepared("site") / "masks.csv", dtype={"ImageId": str}).set_index(
        "ImageId"
    )
    probs = []
    for k in range(3):
        ids, X, _, _ = load_feature_table(exp.feature_set(f"site_fold_{k}"))
        p = load_classifier(exp.crossfit_fold(k) / "classifier").predict_proba(X)[:, 1]
        probs.append(dict(zip(ids, p, strict=True)))
    thresholds = [
        json.loads((exp.crossfit_fold(k) / "classifier" / "gate.json").read_text()) for k in range(3)
    ]
    for image_id, row in counts.iterrows():
        maps = [PredictionSet(exp.prediction_set(f"site_fold_{k}")).read_map(image_id) for k in range(3)]
        true = decode(truth.loc[image_id, "EncodedPixels"], *maps[0].shape) > 0
        for g in GATES:
            votes = []
            for k in range(3):
                mask = gating.apply_rule(maps[k], RULES[k][g.rule])
                if g.classifier and probs[k][image_id] < thresholds[k][g.key]["threshold"]:
                    mask = np.zeros_like(mask)
                votes.append(mask)
            final = np.sum(votes, axis=0) >= 2
            assert row[f"frozen.{g.key}.area"] == final.sum(), (image_id, g.key)
            assert row[f"frozen.{g.key}.inter"] == (final & true).sum(), (image_id, g.key)


def test_rechosen_rules_never_see_the_study_they_score(scored):
    exp, _ = scored
    pipes = deployed_pipelines(exp, "all")
    gates, _ = usable_gates(pipes, True)
    data, _ = load_set(exp, "site", pipes, True)
    before = rechosen_choices(data, gates, 0.5)
    for i in (0, int(np.flatnonzero(data.hists[0].hist[:, 1].sum(axis=1) > 0)[0])):
        hists = []
        for h in data.hists:  # study i's label flips: its truth pixels become background or all lesion
            hist = h.hist.copy()
            if hist[i, 1].sum():
                hist[i, 0] += hist[i, 1]
                hist[i, 1] = 0
            else:
                hist[i, 1], hist[i, 0] = hist[i, 0], 0
            hists.append(type(h)(h.image_id, hist, h.height, h.width))
        after = rechosen_choices(data._replace(hists=hists), gates, 0.5)
        fold = int(data.folds[i])
        assert after[fold] == before[fold]  # its own fold's choices never saw it
        maps = [data.read_map(p, data.ids[i]) for p in range(3)]
        probs = [float(p[i]) for p in data.probs]
        same = study_masks(maps, probs, after[fold], gates)
        for key, (mask, decision) in study_masks(maps, probs, before[fold], gates).items():
            assert np.array_equal(mask, same[key][0]) and decision == same[key][1]
    assert any(after[j] != before[j] for j in after)  # the flip does reach the other folds' choices


def test_the_transfer_table_gap_and_report_section(scored, tmp_path):
    exp, _ = scored
    ext = external_comparison(exp.root, "site", resamples=200, seed=0)
    assert ext["gap"]["default"] == {"value": 0.0, "lo": 0.0, "hi": 0.0, "share_above_zero": 0.0}
    for key, g in ext["gap"].items():
        f = ext["frozen"]["gates"][key]["metrics"]["mean_dice"]["value"]
        r = ext["rechosen"]["gates"][key]["metrics"]["mean_dice"]["value"]
        assert g["value"] == pytest.approx(f - r) and g["lo"] <= g["hi"]
    s = external_summary(ext, None)
    assert set(s["gates"]["threshold_area"]) >= {"source", "frozen", "rechosen", "gap", "travels"}
    text = render_markdown("r", [external_section(ext, s)], tmp_path)
    assert "External validation: site" in text and "Gap frozen" in text and "1024 x 1024 grid" in text
    block = render_external_block(json.loads(json.dumps(s)))
    assert "Travel (gap interval not below 0)" in block


def test_a_minimum_area_carries_over_physically():
    source = pd.Series([0.02, 0.02, 0.03])  # mm^2 per 1024-grid pixel
    external = pd.Series([0.05, 0.025], index=["a", "b"])
    factors, info = area_factors("auto", source, external, np.array(["a", "b"]))
    assert info["mode"] == "spacing" and factors == pytest.approx([0.4, 0.8])
    rule = {"rule": "threshold_area", "threshold": 0.5, "min_area": 1000}  # 1000 px x 0.02 = 20 mm^2
    q = np.zeros((512, 512), np.uint8)  # image a: 1 px = 0.05 * 1024^2 / 512^2 = 0.2 mm^2
    spec = next(g for g in GATES if g.key == "threshold_area")
    choice = [{"rules": {"threshold_area": rule}, "thresholds": {}}]
    q[:10, :9] = 255  # 90 px = 18 mm^2 < 20
    assert not study_masks([q], [None], choice, [spec], factors[0])["threshold_area"][0].any()
    q[:10, :10] = 255  # 100 px = 20 mm^2
    assert study_masks([q], [None], choice, [spec], factors[0])["threshold_area"][0].sum() == 100
    factors, info = area_factors("auto", pd.Series([0.02, np.nan]), external, np.array(["a", "b"]))
    assert info["mode"] == "grid" and factors.tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="PixelSpacing"):
        area_factors("spacing", pd.Series([np.nan]), external, np.array(["a"]))
    with pytest.raises(ValueError, match="valid choices: auto, grid, spacing"):
        area_factors("mm", source, external, np.array(["a"]))


def test_the_shifted_site_stores_portrait_monochrome1_dicoms(tmp_path):
    table = generate(tmp_path, 6, size=64, layout="siim", seed=2, site="shifted", progress=False)
    rle = pd.read_csv(tmp_path / "train-rle.csv", skipinitialspace=True, dtype=str)
    kinds = set()
    for row in table.itertuples():
        image, info = read_image_file(tmp_path / row.path)
        assert image.shape == (80, 64)
        kinds.add(info.get("photometric"))
        enc = rle.loc[rle.iloc[:, 0] == row.image_id].iloc[:, 1].tolist()
        assert decode(enc, 80, 64).sum() == row.area_px
    assert "MONOCHROME1" in kinds
    with pytest.raises(ValueError, match="valid sites: source, shifted"):
        generate(tmp_path / "x", 2, size=64, site="mars", progress=False)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--exp", "no/such/exp", "--data", "."], "--exp no/such/exp"),
        (
            ["--exp", "experiments/demo.yaml", "--data", ".", "--set", "oof"],
            "the pipeline owns this set name",
        ),
        (
            ["--exp", "experiments/demo.yaml", "--data", ".", "--area", "mm"],
            "valid choices: auto, grid, spacing",
        ),
    ],
)
def test_command_errors_are_one_line(args, message, monkeypatch):
    monkeypatch.chdir(ROOT)
    proc = call("dualstage", "external", *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr


def test_gate_columns_name_valid_variants(scored):
    exp, _ = scored
    with pytest.raises(ValueError, match="valid: frozen, rechosen"):
        gate_columns(read_counts(exp, "site"), "thawed", "threshold")
    assert isinstance(SetData, type)


def test_the_readme_external_block_is_the_render_of_the_reference():
    reference = json.loads((ROOT / EXTERNAL_REFERENCE).read_text())
    text = (ROOT / "README.md").read_text()
    assert replace_block(text, EXTERNAL_BLOCK, render_external_block(reference)) == text, (
        f"README's {EXTERNAL_BLOCK} block differs from the render of {EXTERNAL_REFERENCE}: run "
        "`python -m dualstage.report.readme render --block demo-external` (or `make demo-external-reference`)"
    )
