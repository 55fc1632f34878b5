"""bf16 + channels_last vs fp32 inference: speed, and whether the final masks agree.

With a finished demo (``make demo``: models/demo with out-of-fold maps and per-fold operating
points) it predicts the demo's studies at fp32 and at bf16 with the demo's fold models (each study
by the model that did not train on it) and applies each study's fold rule to both. Otherwise it
trains a small phantom model (the demo's U-Net ResNet18 with half decoder at 128 px, 8 epochs),
chooses its operating point with ``segment sweep`` on val (fp32 maps), then predicts every study
at fp32 and at bf16 and applies that rule to both. Claims (benchmarks/results.json):

- ``bf16_inference_speedup``: fp32 predict seconds / bf16 predict seconds, target > 1;
- ``bf16_vs_fp32_mask_dice``: mean Dice between the two precisions' final masks (both empty = 1),
  target >= 0.995;
- ``bf16_vs_fp32_presence_agreement``: share of studies with the same presence decision (mask
  empty or not), target >= 0.99.

The studies with a non-empty fp32 mask, the mean map difference and which models were used are
recorded beside the claims.
Run: make bench  (or .venv/bin/python benchmarks/bench_bf16_agreement.py)
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from _results import alternate, machine, record
from _setup import phantom_experiment

from dualstage.artifacts.layout import ExperimentDir
from dualstage.artifacts.operating_points import OperatingPoints
from dualstage.artifacts.prediction_set import PredictionSet
from dualstage.core import gating
from dualstage.crossfit.rules import read_fold_rules
from dualstage.data.splits import read_folds
from dualstage.runtime.precision import cpu_bf16_supported
from dualstage.segment.predict import predict
from dualstage.segment.sweep import run_sweep
from dualstage.segment.train import train


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def compare(fp32: PredictionSet, bf16: PredictionSet, rule_of) -> dict:
    """Final masks of both sets under ``rule``: mean Dice, presence agreement, studies, studies with a
    non-empty fp32 mask, and the mean |q_fp32 - q_bf16| of the uint8 maps."""
    dices, same, nonempty, diffs = [], [], 0, []
    for image_id in fp32.index()["image_id"]:
        qa, qb = fp32.read_map(image_id), bf16.read_map(image_id)
        rule = rule_of(image_id)
        a, b = gating.apply_rule(qa, rule), gating.apply_rule(qb, rule)
        dices.append(dice(a, b))
        same.append(bool(a.any()) == bool(b.any()))
        nonempty += bool(a.any())
        diffs.append(float(np.abs(qa.astype(np.int16) - qb.astype(np.int16)).mean()))
    return {
        "mean_dice": float(np.mean(dices)),
        "agreement": float(np.mean(same)),
        "studies": len(dices),
        "nonempty_fp32": nonempty,
        "map_mean_abs_diff": float(np.mean(diffs)),
    }


def stress_rule(pset: PredictionSet, share: float = 0.002) -> dict:
    """A threshold rule at the fp32 maps' (1 - share) pixel quantile: masks on many studies, many pixels
    near the threshold (a harder test than a sharp model's operating point)."""
    q = np.concatenate([pset.read_map(i).ravel()[::7] for i in pset.index()["image_id"]])
    level = int(np.quantile(q, 1 - share))
    return {"rule": "threshold", "threshold": min(0.99, max(0.0, (level - 0.5) / 255))}


def trained_phantom(root: Path):
    """A freshly trained small phantom experiment and its rule (chosen on val, fp32 maps)."""
    phases = [
        {
            "name": "bce",
            "resolution": 128,
            "unfreeze": "all",
            "loss": {"name": "weighted_bce", "pos_weight": 5.0},
            "epochs": 8,
            "base_lr": 3.0e-4,
            "max_lr": 3.0e-3,
            "positive_share": 0.5,
        },
    ]
    exp = phantom_experiment(
        root,
        120,
        512,
        128,
        "resnet18",
        decoder_channels=[128, 64, 32, 16, 8],
        batch_size=16,
        train={"phases": phases, "max_val_images": 24},
    )
    train(exp, progress=False)
    preds = exp.folder / "predictions"
    predict(exp.folder, preds / "val", split="val", workers=0, device="cpu", progress=False, precision="fp32")
    run_sweep(
        preds,
        exp.folder,
        select_on="val",
        report_on=(),
        progress=False,
        default_threshold=exp.train.val_threshold,
    )
    rule = OperatingPoints.read(exp.folder / "operating_point.json").rule("best")
    return exp, rule


def finished_demo() -> tuple[Path, dict] | None:
    """(models/demo, {image id: its fold's chosen rule}) when a finished demo is at hand, else None."""
    d = ExperimentDir(Path(__file__).resolve().parents[1] / "models" / "demo")
    if not (d.prediction_set("oof") / "predict.json").is_file() or not d.crossfit_folds():
        return None
    rules = read_fold_rules(d)
    ids = PredictionSet(d.prediction_set("oof")).index()["image_id"].to_numpy(dtype=str)
    folds = read_folds(d.splits_csv, ids, allow_test=True)
    return d.root, {i: rules[int(f)].rule("best") for i, f in zip(ids, folds, strict=True)}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        demo = finished_demo()
        if demo:
            folder, rules = demo
            split, model, rule = "oof", "the demo's 3 fold models (models/demo), each study by its own", None
        else:
            exp, rule = trained_phantom(root)
            folder, rules, split = exp.folder, None, "all"
            model = "phantom U-Net ResNet18 half decoder, 128 px, 8 epochs (no finished demo at hand)"
        sets = {p: PredictionSet(root / f"all_{p}") for p in ("fp32", "bf16")}

        def run(precision: str, out: Path) -> None:
            predict(
                folder,
                out,
                split=split,
                batch_size=8,
                workers=0,
                device="cpu",
                progress=False,
                precision=precision,
            )

        for precision, pset in sets.items():  # the kept sets (also the warm-up)
            run(precision, pset.folder)
        k = {"n": 0}

        def timed(precision: str):
            def fn() -> None:
                k["n"] += 1
                folder = root / f"t{k['n']}"
                run(precision, folder)
                shutil.rmtree(folder)

            return fn

        times = alternate({"fp32": timed("fp32"), "bf16": timed("bf16")}, rounds=2, warmup=False)
        c = compare(sets["fp32"], sets["bf16"], rules.get if rules else lambda _: rule)
        srule = stress_rule(sets["fp32"])
        stress = {**compare(sets["fp32"], sets["bf16"], lambda _: srule), "rule": srule}
    speedup = min(times["fp32"]) / min(times["bf16"])
    print(
        f"{model}: {c['studies']} studies ({c['nonempty_fp32']} with a fp32 mask), rule "
        f"{rule or 'of each fold'}: mean Dice fp32 vs "
        f"bf16 final masks {c['mean_dice']:.4f}, same presence decision {c['agreement']:.2%}, "
        f"mean |q32 - q16| {c['map_mean_abs_diff']:.3f}; predict fp32 {min(times['fp32']):.2f}s, bf16 "
        f"{min(times['bf16']):.2f}s: bf16 {speedup:.2f}x (native bf16: {cpu_bf16_supported()})"
    )
    print(
        f"stress rule {stress['rule']}: mean Dice {stress['mean_dice']:.4f}, same presence "
        f"{stress['agreement']:.2%} ({stress['nonempty_fp32']} studies with a fp32 mask)"
    )
    info = {
        **c,
        "stress": stress,
        "rule": rule or "each study's fold rule (crossfit/fold_k)",
        "model": model,
        "seconds_fp32": times["fp32"],
        "seconds_bf16": times["bf16"],
        **machine(),
    }
    record("bf16_inference_speedup", speedup, 1.0, "fp32 s / bf16 s (segment predict)", op=">", **info)
    record("bf16_vs_fp32_mask_dice", c["mean_dice"], 0.995, "mean Dice", **info)
    record("bf16_vs_fp32_presence_agreement", c["agreement"], 0.99, "share of studies", **info)


if __name__ == "__main__":
    main()
