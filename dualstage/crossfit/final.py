"""Final masks under cross-fitting: every study gated by its own fold's rules and classifier.

Writes ``final/oof/<mode>/`` for each classifier gate mode: ``masks/<id>.png`` (0/255 on the
image's grid), ``submission.csv`` (challenge RLE), ``decisions.csv`` (image_id, fold, probability,
threshold, decision, mask_area_px), ``summary.json``, ``seg/<id>.dcm`` (DICOM SEG of each
non-empty mask whose source is a DICOM file) and ``rejected.csv`` (SEGs that could not be written).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dualstage.artifacts.prediction_set import PredictionSet
from dualstage.classify.dicom_seg import seg_sources, write_segs
from dualstage.classify.gate import GATE_MODES
from dualstage.config import Experiment
from dualstage.core import gating, rle
from dualstage.core.io import write_csv_atomic, write_json_atomic, write_png_atomic
from dualstage.core.progress import progress as progress_iter
from dualstage.crossfit.compare import fold_decisions
from dualstage.crossfit.rules import read_fold_rules

__all__ = ["crossfit_final"]


def _mode_final(exp: Experiment, mode: str, rules: dict, pset: PredictionSet, progress: bool) -> dict:
    rows, rles = [], []
    dst = exp.dir.final("oof", mode)
    for k, op in rules.items():
        found = fold_decisions(exp.dir, k, mode)
        if found is None:
            raise FileNotFoundError(
                f"fold {k}: classifier gate {mode!r} not fitted; run `classify tune` first"
            )
        probs, thr = found
        rule = op.rule(GATE_MODES[mode])
        for image_id, p in progress_iter(
            list(zip(probs["image_id"], probs["probability"], strict=True)),
            desc=f"final fold {k} {mode}",
            enabled=progress,
        ):
            q = pset.read_map(image_id)
            keep = bool(p >= thr)
            mask = gating.apply_rule(q, rule) if keep else np.zeros(q.shape, dtype=bool)
            write_png_atomic(dst / "masks" / f"{image_id}.png", mask.astype(np.uint8) * 255)
            rles.append((image_id, rle.encode(mask)))
            rows.append(
                {
                    "image_id": image_id,
                    "fold": k,
                    "probability": float(p),
                    "threshold": thr,
                    "decision": int(keep),
                    "mask_area_px": int(np.count_nonzero(mask)),
                }
            )
    write_csv_atomic(pd.DataFrame(rles, columns=["ImageId", "EncodedPixels"]), dst / "submission.csv")
    decisions = pd.DataFrame(rows)
    write_csv_atomic(decisions, dst / "decisions.csv")
    segs = write_segs(dst, [i for i, _ in rles], seg_sources(exp.dir.root, pset), progress=progress)
    summary = {
        "set": "oof",
        "mode": mode,
        "protocol": "crossfit",
        "n": len(rows),
        "n_present": int(decisions["decision"].sum()),
        "n_nonempty": int((decisions["mask_area_px"] > 0).sum()),
        **segs,
        "out_dir": str(dst),
    }
    write_json_atomic(dst / "summary.json", summary)
    return summary


def crossfit_final(exp: Experiment, progress: bool = False) -> dict:
    """Final masks of every classifier gate mode over every study; returns {mode: summary}."""
    rules = read_fold_rules(exp.dir)
    pset = PredictionSet(exp.dir.prediction_set("oof"))
    return {m: _mode_final(exp, m, rules, pset, progress) for m in exp.gate.modes}
