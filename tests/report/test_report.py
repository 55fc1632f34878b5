"""The comparison report on a small synthetic experiment folder: bootstrap, table numbers, HTML, notes."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dualstage.artifacts.operating_points import OperatingPoints
from dualstage.commands.experiment import record_experiment
from dualstage.config import Experiment, ModelConfig
from dualstage.core import gating
from dualstage.core.metrics import presence_report, summarize_counts
from dualstage.report import build_report
from dualstage.report.__main__ import main as report_main
from dualstage.report.compare import (
    METRICS,
    bootstrap_indices,
    compare,
    interval,
    point_metrics,
    resampled_metrics,
)
from dualstage.segment.evaluate import evaluate

SIDE, N = 32, 12
OP = {
    "chosen_on": "oof",
    "n_images": 40,
    "default": {"rule": "threshold", "threshold": 0.5},
    "threshold": {"rule": "threshold", "threshold": 0.6},
    "threshold_area": {"rule": "threshold_area", "threshold": 0.6, "min_area": 5000},
    "triplet": {"rule": "triplet", "top": 0.7, "min_area": 3000, "bottom": 0.5},
    "best_rule": "threshold_area",
}
GATE_THRESHOLD = 0.3


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _maps(rng: np.random.Generator) -> tuple[list[str], np.ndarray, np.ndarray]:
    """ids, uint8 maps (N, S, S) and bool truths: 6 positives with a square lesion, 6 negatives."""
    ids, maps, truths = [f"img{i:02d}" for i in range(N)], [], []
    for i in range(N):
        q = rng.integers(0, 100, (SIDE, SIDE)).astype(np.uint8)
        truth = np.zeros((SIDE, SIDE), bool)
        if i < 6:
            truth[8 : 8 + 3 + i, 10:16] = True
            q[8 : 8 + 2 + i, 10:15] = 150 + 15 * (i % 4)  # a partial hit, strength varies
        spots = i % 4  # scattered false-positive specks of 0..3 px
        q[25, 2 : 2 + spots] = 170 + 20 * (i % 3)
        maps.append(q)
        truths.append(truth)
    return ids, np.stack(maps), np.stack(truths)


def _sweep_tables(exp: Path, hist: np.ndarray) -> None:
    """sweep/{test,oof}: fine thresholds and Table 4 grids."""
    # the tables (the selection set reuses the test histograms: only the layout matters here)
    fine = np.round(np.arange(1, 100) / 100, 2)
    for split in ("test", "oof"):
        d = exp / "sweep" / split
        d.mkdir(parents=True)
        pd.DataFrame({"threshold": fine, **gating.sweep_threshold(hist, fine)}).to_csv(
            d / "thresholds_fine.csv", index=False
        )
        areas = np.arange(0, 5001, 500)
        res = gating.sweep_threshold_area(hist, [SIDE] * N, [SIDE] * N, fine, areas)
        t, a = np.meshgrid(fine, areas, indexing="ij")
        pd.DataFrame(
            {"threshold": t.ravel(), "min_area": a.ravel(), **{k: np.ravel(v) for k, v in res.items()}}
        ).to_csv(d / "table4_threshold_area.csv", index=False)


def _classifier_outputs(exp: Path, ids, present: np.ndarray, hist: np.ndarray, rng) -> None:
    """classifier/ (probabilities, gate.json, Table 2) and final/test/<mode>/ decisions."""
    # classifier + gate decisions
    tuned = np.clip(present * 0.5 + rng.uniform(0, 0.5, N), 0, 1)
    tuned[0], tuned[7] = 0.1, 0.45  # one missed positive, one kept negative
    cls = exp / "classifier"
    cls.mkdir(parents=True)
    pd.DataFrame(
        {"image_id": ids, "has_pneumothorax": present, "default": rng.uniform(0, 1, N), "tuned": tuned}
    ).to_csv(cls / "test_probabilities.csv", index=False)
    gate = {}
    for mode, key, folder in (
        ("classifier", "threshold", "test/classifier"),
        ("classifier_and_area", "threshold_area", "test/classifier_and_area"),
    ):
        rule = {k: v for k, v in OP[key].items()}
        gate[mode] = {"mode": mode, "threshold": GATE_THRESHOLD, "chosen_on": "oof", "pixel_rule": rule}
        keep = (tuned >= GATE_THRESHOLD).astype(int)
        area = gating.rule_counts(hist, [SIDE] * N, [SIDE] * N, rule)[1]
        d = exp / "final" / folder
        d.mkdir(parents=True)
        pd.DataFrame(
            {"image_id": ids, "probability": tuned, "decision": keep, "mask_area_px": area * keep}
        ).to_csv(d / "decisions.csv", index=False)
        (d / "summary.json").write_text(json.dumps({"pixel_rule": rule, "threshold": GATE_THRESHOLD}))
    (cls / "gate.json").write_text(json.dumps(gate))
    rows = [(m, c, 0.8, 0.7, 0.75, 6) for m in ("default", "tuned") for c in ("absent", "present")]
    pd.DataFrame(rows, columns=["model", "class", "precision", "recall", "f1", "support"]).to_csv(
        cls / "table2.csv", index=False
    )


def _segmenter_log(exp: Path) -> None:
    """segmenter/main: a log with two phases, config, versions."""
    # one segmenter model: log with two phases, config, versions
    seg = exp / "segmenter" / "main"
    seg.mkdir(parents=True)
    pd.DataFrame(
        {
            "phase": [0, 0, 1, 1],
            "phase_name": ["bce", "bce", "dice", "dice"],
            "epoch": [0, 1, 2, 3],
            "train_loss": [0.9, 0.7, 0.5, 0.4],
            "val_loss": [0.95, 0.8, 0.6, 0.55],
            "val_mean_dice": [0.2, 0.4, 0.5, 0.6],
        }
    ).to_csv(seg / "log.csv", index=False)
    (seg / "config.json").write_text(json.dumps({"name": "syn", "model": {"encoder": "resnet18"}}))
    (seg / "versions.json").write_text(json.dumps({"python": "3.11", "torch": "x"}))


def reported_experiment(root: Path) -> Path:
    """A complete synthetic experiment folder ``root/models/syn`` (evaluate run, as the pipeline does)."""
    rng = np.random.default_rng(0)
    exp = root / "models" / "syn"
    ids, maps, truths = _maps(rng)
    pred = exp / "predictions" / "test"
    hist = np.stack([gating.histogram(q, t) for q, t in zip(maps, truths, strict=True)])
    gating.write_histograms(pred / "histograms.npz", ids, hist, [SIDE] * N, [SIDE] * N)
    for image_id, q, t in zip(ids, maps, truths, strict=True):
        _png(pred / "maps" / f"{image_id}.png", q)
        _png(
            exp / "prepared" / "cache" / "32" / "images" / f"{image_id}.png",
            rng.integers(0, 255, (SIDE, SIDE), np.uint8),
        )
        _png(exp / "prepared" / "cache" / "32" / "masks" / f"{image_id}.png", t.astype(np.uint8) * 255)
    present = truths.any(axis=(1, 2)).astype(int)
    pd.DataFrame(
        {
            "image_id": ids,
            "split": "test",
            "fold_model": "fold_0+fold_1",
            "has_truth": 1,
            "has_pneumothorax": present,
        }
    ).to_csv(pred / "index.csv", index=False)
    pd.DataFrame({"image_id": ids, "has_pneumothorax": present}).to_csv(
        exp / "prepared" / "manifest.csv", index=False
    )
    (exp / "prepared" / "masks.csv").write_text("ImageId,EncodedPixels\n")
    rules = {k: OP[k] for k in ("default", "threshold", "threshold_area", "triplet")}
    OperatingPoints("oof", OP["n_images"], OP["best_rule"], rules).write(exp / "operating_point.json")
    _sweep_tables(exp, hist)
    _classifier_outputs(exp, ids, present, hist, rng)
    _segmenter_log(exp)
    record_experiment(
        Experiment(name="syn", model=ModelConfig(encoder="resnet18"), output_root=str(root / "models"))
    )
    evaluate([exp])  # stages write artifacts; the report only reads them
    return exp


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    exp = reported_experiment(tmp_path_factory.mktemp("report"))
    return exp, build_report(exp, resamples=1000, seed=3, gallery=4)


def _counts(exp: Path, rule: dict, decisions: str | None = None):
    h = gating.load_histograms(exp / "predictions" / "test")
    inter, area, true, npix = gating.rule_counts(h.hist, h.height, h.width, rule)
    if decisions:
        keep = (
            pd.read_csv(exp / "final" / decisions / "decisions.csv")
            .set_index("image_id")
            .loc[h.image_id, "decision"]
        )
        inter, area = inter * keep.to_numpy(), area * keep.to_numpy()
    return inter, area, true, npix


def test_bootstrap_hand_cases():
    n = 20
    idx = bootstrap_indices(n, 1500, seed=1)
    assert idx.shape == (1500, n) and idx.min() >= 0 and idx.max() < n
    assert np.array_equal(idx, bootstrap_indices(n, 1500, seed=1))
    assert not np.array_equal(idx, bootstrap_indices(n, 1500, seed=2))
    # every image Dice 0.5 (inter 1, areas 2 and 2) -> a zero-width interval at 0.5
    same = resampled_metrics(np.ones(n), np.full(n, 2), np.full(n, 2), idx)
    assert interval(same["mean_dice"]) == (0.5, 0.5)
    # a known mean lies inside its interval
    rng = np.random.default_rng(0)
    true = rng.integers(1, 50, n)
    inter = rng.integers(0, true + 1)
    pred = inter + rng.integers(0, 20, n)
    boot = resampled_metrics(inter, pred, true, idx)
    lo, hi = interval(boot["mean_dice"])
    mean = summarize_counts(inter, pred, true, 1024)["mean_dice"]
    assert lo < mean < hi
    # a gate against itself: the paired difference is exactly 0 in every resample
    again = resampled_metrics(inter, pred, true, idx)
    assert np.all(boot["mean_dice"] - again["mean_dice"] == 0)
    # identity resample reproduces the point metrics
    ident = resampled_metrics(inter, pred, true, np.arange(n)[None])
    point = point_metrics(inter, pred, true, 1024)
    for m in METRICS:
        assert np.isclose(ident[m][0], point[m], equal_nan=True), m


def test_table_matches_direct_metrics(built):
    exp, res = built
    table = res["table"].set_index("gate")
    cases = {
        "no gate (0.5)": (OP["default"], None),
        "best threshold": (OP["threshold"], None),
        "threshold + min area": (OP["threshold_area"], None),
        "triplet": (OP["triplet"], None),
        "classifier gate": (OP["threshold"], "test/classifier"),
        "classifier AND min area": (OP["threshold_area"], "test/classifier_and_area"),
    }
    for name, (rule, dec) in cases.items():
        inter, area, true, npix = _counts(exp, rule, dec)
        s, p = summarize_counts(inter, area, true, npix), presence_report(area > 0, true > 0)
        row = table.loc[name]
        for key in ("mean_dice", "pos_dice", "neg_dice", "pos_accuracy", "iou_pos"):
            assert row[key] == pytest.approx(s[key]), (name, key)
        assert row["precision"] == pytest.approx(p["present"]["precision"])
        assert row["recall"] == pytest.approx(p["present"]["recall"])
        assert row["f1"] == pytest.approx(p["present"]["f1"])
        assert row["specificity"] == pytest.approx(p["specificity"])
        for key in METRICS:  # the point lies inside (or on) its interval
            if not np.isnan(row[key]):
                assert row[f"{key}_lo"] - 1e-12 <= row[key] <= row[f"{key}_hi"] + 1e-12, (name, key)
    ref = table.loc["threshold + min area"]
    assert ref["diff_mean_dice"] == ref["diff_mean_dice_lo"] == ref["diff_mean_dice_hi"] == 0.0
    base = table.loc["all empty (baseline)"]
    assert base["mean_dice"] == pytest.approx(6 / 12)  # share of negative test studies
    # the gates really differ here (otherwise the comparison tests little)
    assert table["mean_dice"].nunique() >= 3


def test_seeded_reproducibility(built):
    exp, res = built
    a = compare(exp, resamples=1000, seed=3)["gates"]["triplet"]["metrics"]["mean_dice"]
    b = res["table"].set_index("gate").loc["triplet"]
    assert (a["lo"], a["hi"]) == (b["mean_dice_lo"], b["mean_dice_hi"])


class _Parse(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: dict[str, int] = {}
        self.images: list[str] = []
        self.captions: list[str] = []
        self._in_caption = False

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        self._in_caption = tag == "caption"

    def handle_endtag(self, tag):
        if tag == "caption":
            self._in_caption = False

    def handle_data(self, data):
        if self._in_caption:
            self.captions.append(data)


def test_html_has_every_table_and_figure(built):
    exp, res = built
    html = Path(res["report_html"]).read_text(encoding="utf-8")
    p = _Parse()
    p.feed(html)
    # comparison + progressive 2, 3, 4, k-fold + dual-stage 1, 2 + provenance
    assert p.tags["table"] == p.tags["caption"] == 8
    joined = " | ".join(p.captions)
    for text in (
        "Gate comparison",
        "Table 2: backbones",
        "Table 3",
        "Table 4",
        "k-fold",
        "Table 1",
        "Table 2: classifier",
    ):
        assert text in joined, text
    figures = sorted(Path(f).name for f in res["figures"])
    assert figures == sorted(
        f"{k}.png"
        for k in (
            "dice_vs_threshold",
            "threshold_area_heatmap",
            "classifier_roc_pr",
            "classifier_probability",
            "training_curves",
            "gallery",
        )
    )
    assert len(p.images) == len(figures) and all(s.startswith("data:image/png;base64,") for s in p.images)
    assert "<img" in html and "figures/" not in html.split("<body>")[1].split("data:image")[0]
    md = Path(res["report_md"]).read_text()
    assert all(f"figures/{f}" in md for f in figures)
    # Table 3 and the k-fold summary were not run (no table3 csv, no fold models): said so, not dropped
    tables = json.loads(Path(res["metrics_json"]).read_text())["tables"]
    assert [k for k, t in tables.items() if not t["run"]] == ["prog_table3", "prog_cv"]
    assert all(tables[k]["note"].startswith("not run") for k in ("prog_table3", "prog_cv"))
    assert md.count("_not run") >= 2
    assert "all empty (baseline)" in res["markdown"] and "Δ mean Dice" in res["summary_markdown"]


def test_metrics_json_has_intervals(built):
    exp, res = built
    m = json.loads(Path(res["metrics_json"]).read_text())
    c = m["comparison"]
    assert c["resamples"] == 1000 and c["seed"] == 3 and c["split"] == "test"
    for key in (
        "default",
        "threshold",
        "threshold_area",
        "triplet",
        "classifier",
        "classifier_and_area",
        "empty",
    ):
        md = c["gates"][key]["metrics"]["mean_dice"]
        assert md["lo"] <= md["value"] <= md["hi"]
        assert set(c["gates"][key]["diff_vs_reference"]) >= {"value", "lo", "hi", "share_above_zero"}
    assert c["baseline"]["other"] == "empty" and c["best"] in c["gates"]
    assert m["provenance"]["inputs_sha256"]["prepared/manifest.csv"]
    assert m["provenance"]["numbers"]["operating_points_chosen_on"] == "oof"


def test_missing_inputs_give_not_run_notes(tmp_path):
    exp = reported_experiment(tmp_path)
    shutil.rmtree(exp / "final" / "test" / "classifier_and_area")
    shutil.rmtree(exp / "classifier")
    res = build_report(exp, out=tmp_path / "out", resamples=1000, gallery=2)
    names = set(res["table"]["gate"])
    assert "classifier AND min area" not in names and "threshold + min area" in names
    html = Path(res["report_html"]).read_text()
    assert "final/test/classifier_and_area/decisions.csv missing" in html
    assert "classifier/table2.csv missing" in html and "test_probabilities.csv missing" in html
    m = json.loads(Path(res["metrics_json"]).read_text())
    assert "classifier AND min area" in m["comparison"]["skipped"]
    # without test predictions the comparison itself says "not run", the rest still renders
    shutil.rmtree(exp / "predictions")
    res = build_report(exp, out=tmp_path / "out2", resamples=1000)
    assert res["table"].empty and "not run" in res["markdown"]
    assert "not run" in Path(res["report_html"]).read_text()


def test_cli(built, tmp_path, capsys):
    exp, _ = built
    assert (
        report_main(
            ["--exp", str(exp), "--out", str(tmp_path / "r"), "--resamples", "1000", "--gallery", "0"]
        )
        == 0
    )
    assert "report:" in capsys.readouterr().out and (tmp_path / "r" / "report.html").is_file()
    assert report_main(["--exp", str(tmp_path / "nope")]) == 2


def test_paper_siblings_found_by_saved_config(tmp_path):
    """A paper experiment under any folder name joins the backbone table through its saved config."""
    from dualstage.config import ReportConfig

    exp = reported_experiment(tmp_path)
    sib = Experiment(
        name="renamed_run",
        model=ModelConfig(encoder="se_resnext50_32x4d"),
        report=ReportConfig(paper_table="progressive"),
        output_root=str(tmp_path / "models"),
    )
    record_experiment(sib)
    row = {
        "experiment": "renamed_run",
        "backbone": "se_resnext50_32x4d",
        "operating_point": "threshold 0.5",
        "n": 10,
        "mean_dice": 0.81,
        "pos_dice": 0.4,
        "neg_dice": 0.9,
        "pos_accuracy": 0.7,
    }
    (tmp_path / "models" / "renamed_run" / "evaluation").mkdir(parents=True)
    pd.DataFrame([row]).to_csv(tmp_path / "models" / "renamed_run" / "evaluation" / "progressive_table2.csv")
    res = build_report(exp, out=tmp_path / "out", resamples=200, gallery=0)
    md = Path(res["report_md"]).read_text()
    table2 = md.split("Table 2: backbones")[1].split("\n\n")[1:4]
    text = "\n".join(table2)
    assert "SE-ResNeXt-50" in text and "renamed_run" in text and "0.81" in text
    assert "ResNet34" not in text.split("not run")[0]  # the paper's other backbones: named as not run
    assert "EfficientNet" in md
