"""Score an external set: frozen and re-chosen gates per study, written as ``external/<set>/``.

Reads what the external command made (``external/<set>/prepared``, ``predictions/<set>[_fold_<k>]``,
``features/<set>[_fold_<k>]``) and the source's choices, and writes (its only writer)::

    external/<set>/counts.csv     image_id, fold (the set's own), true_area, n_pixels and, per variant
                                  (frozen | rechosen) and gate, <variant>.<gate>.{inter,area,decision,digest}
    external/<set>/external.json  the pipelines, every rule and threshold applied (frozen; re-chosen per
                                  external fold), the area rule, skipped gates, studies left out

The report reads these (:mod:`dualstage.report.external`); see :mod:`dualstage.crossfit.external`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dualstage.artifacts.external_counts import write_counts, write_record
from dualstage.artifacts.feature_set import check_same_settings, load_feature_table
from dualstage.artifacts.layout import ExperimentDir
from dualstage.artifacts.prediction_set import PredictionSet
from dualstage.classify.tune import load_classifier, read_params
from dualstage.core.progress import progress as progress_iter
from dualstage.crossfit.external import (
    Pipeline,
    SetData,
    area_factors,
    deployed_pipelines,
    digest,
    frozen_choice,
    rechosen_choices,
    study_masks,
    usable_gates,
)
from dualstage.data.annotations import truth_from_rle_csv
from dualstage.data.spacing import grid_pixel_mm2
from dualstage.data.splits import read_folds

__all__ = ["evaluate_set", "load_set"]


def _probabilities(p: Pipeline, fdir: Path) -> pd.Series:
    """Classifier ``p``'s probability of each study of ``features/<set>`` (index image_id)."""
    check_same_settings(
        read_params(p.classifier).get("features") or {}, fdir, f"the classifier in {p.classifier}"
    )
    ids, X, _, _ = load_feature_table(fdir)
    return pd.Series(load_classifier(p.classifier).predict_proba(X)[:, 1], index=ids)


def load_set(exp: ExperimentDir, name: str, pipes: list[Pipeline], with_probs: bool) -> tuple[SetData, int]:
    """(the external set's data, number of studies left out for lack of features)."""
    psets = [PredictionSet(exp.prediction_set(p.set_name(name))) for p in pipes]
    hists = [ps.histograms() for ps in psets]
    ids = [i for i in hists[0].image_id if all(i in set(h.image_id) for h in hists[1:])]
    probs: list = [None] * len(pipes)
    if with_probs:
        series = [_probabilities(p, exp.feature_set(p.set_name(name))) for p in pipes]
        ids = [i for i in ids if all(i in s.index for s in series)]
        probs = [s.reindex(ids).to_numpy(dtype=np.float64) for s in series]
    left_out = int(hists[0].image_id.size - len(ids))
    ids = np.asarray(ids, dtype=str)
    hists = [_reorder(h, ids) for h in hists]
    prepared = exp.external_prepared(name)
    data = SetData(
        ids,
        read_folds(prepared / "splits.csv", ids, allow_test=True),
        hists,
        probs,
        lambda p, image_id: psets[p].read_map(image_id),
        truth_from_rle_csv(prepared / "masks.csv"),
    )
    return data, left_out


def _reorder(hist, ids: np.ndarray):
    """``hist`` with its rows in the order of ``ids`` (all present)."""
    pos = pd.Index(hist.image_id).get_indexer(ids)
    return type(hist)(hist.image_id[pos], hist.hist[pos], hist.height[pos], hist.width[pos])


def _manifest_mm2(prepared: Path) -> pd.Series:
    path = prepared / "manifest.csv"
    if not path.is_file():
        return pd.Series(dtype=np.float64)
    return grid_pixel_mm2(pd.read_csv(path, dtype={"image_id": str}, keep_default_na=False))


def _overlap(source: Path, external: Path) -> dict:
    """{studies, patients}: how many external image ids / patient ids the source data also holds."""
    if not (source / "manifest.csv").is_file():
        return {}
    read = [pd.read_csv(p / "manifest.csv", dtype=str, keep_default_na=False) for p in (source, external)]
    out = {"studies": len(set(read[0]["image_id"]) & set(read[1]["image_id"]))}
    pats = [set(m["patient_id"]) - {""} for m in read]
    out["patients"] = len(pats[0] & pats[1])
    return out


def _study_row(data: SetData, i: int, gates, frozen, rechosen, factor: float) -> dict:
    """The counts of every gate in both variants for study ``i``."""
    image_id = str(data.ids[i])
    maps = [data.read_map(p, image_id) for p in range(len(data.hists))]
    h, w = maps[0].shape
    truth = np.asarray(data.truth(image_id, h, w)) > 0
    probs = [None if pr is None else float(pr[i]) for pr in data.probs]
    row = {"image_id": image_id, "fold": int(data.folds[i]), "true_area": int(truth.sum()), "n_pixels": h * w}
    fold = int(data.folds[i])
    for variant, choice, f in (("frozen", frozen, factor), ("rechosen", rechosen[fold], 1.0)):
        for key, (mask, decision) in study_masks(maps, probs, choice, gates, f).items():
            row[f"{variant}.{key}.inter"] = int(np.count_nonzero(mask & truth))
            row[f"{variant}.{key}.area"] = int(np.count_nonzero(mask))
            row[f"{variant}.{key}.decision"] = decision
            row[f"{variant}.{key}.digest"] = digest(mask)
    return row


def evaluate_set(
    exp_dir: str | Path,
    name: str,
    folds_setting: str,
    default_threshold: float,
    area: str = "auto",
    progress: bool = False,
) -> dict:
    """Score every gate, frozen and re-chosen, on the external set ``name``; returns external.json's body."""
    exp = ExperimentDir(exp_dir)
    pipes = deployed_pipelines(exp, folds_setting)
    with_probs = all((p.classifier / "model.ubj").is_file() and p.gate for p in pipes) and all(
        (exp.feature_set(p.set_name(name)) / "features.npz").is_file() for p in pipes
    )
    gates, skipped = usable_gates(pipes, with_probs)
    data, left_out = load_set(exp, name, pipes, with_probs and any(g.classifier for g in gates))
    if data.ids.size == 0:
        raise ValueError(f"{exp.external(name)}: no study with maps and features in every pipeline")
    factors, area_info = area_factors(
        area,
        _manifest_mm2(exp.prepared) if area != "grid" else pd.Series(dtype=float),
        _manifest_mm2(exp.external_prepared(name)),
        data.ids,
    )
    overlap = _overlap(exp.prepared, exp.external_prepared(name))
    frozen = frozen_choice(pipes, gates)
    rechosen = rechosen_choices(data, gates, default_threshold, progress)
    rows = [
        _study_row(data, i, gates, frozen, rechosen, float(factors[i]))
        for i in progress_iter(range(data.ids.size), desc=f"external {name}", enabled=progress)
    ]
    write_counts(exp, name, rows)
    record = {
        "set": name,
        "n": int(data.ids.size),
        "left_out_no_features": left_out,
        "pipelines": [p.name for p in pipes],
        "overlap_with_source": overlap,
        "deployed": "main model"
        if pipes[0].name == "main"
        else f"majority vote of {len(pipes)} fold pipelines ({', '.join(p.name for p in pipes)})",
        "gates": [g.key for g in gates],
        "skipped": skipped,
        "area": area_info,
        "external_folds": sorted(int(k) for k in np.unique(data.folds)),
        "frozen": {p.name: c for p, c in zip(pipes, frozen, strict=True)},
        "rechosen": {
            str(j): {p.name: c for p, c in zip(pipes, ch, strict=True)} for j, ch in rechosen.items()
        },
        "rechosen_how": "per external fold j, each pipeline's operating points chosen on the other external "
        "folds' histograms of its maps, each classifier gate's threshold on their probabilities (the "
        "classifier model stays the source's)",
    }
    write_record(exp, name, record)
    return record
