"""``python -m dualstage predict IN... --exp models/<exp> --out OUT``: new radiographs in, a result
a person can look at.

IN: image files (DICOM, PNG, JPEG), folders of them, or DICOM study / series folders (searched
recursively; DICOM files without an extension are found by their marker). Everything runs through
the :class:`~dualstage.commands.predictor.Predictor`, set up once. OUT, a folder of the user's choosing and
never inside an input folder, holds::

    masks/<id>.png      final mask, uint8 0/255, on the image's own grid
    seg/<id>.dcm        DICOM SEG of each non-empty final mask whose source is a DICOM file
    overlays/<id>.jpg   outline | probability heat, the decision, its reason and the warning
    thumbs/<id>.jpg     the overlay's panels, small, for the page
    decisions.csv       per study: decision, mean classifier probability, mask area, each pipeline's
                        probability / threshold / vote / mask area, distance to the training data,
                        its threshold, unlike_training (0/1), warning, reason, file
    rejected.csv        item (file), stage (id / header / decode / seg), reason
    review.html         the review page (:mod:`dualstage.report.review`)
    run.json            the set-up (experiment, mode, pipelines), counts, seconds, studies/s
    parts/<id>.json     one finished study: a rerun into the same OUT skips it (resumable)

A file that cannot be read is a ``rejected.csv`` row; the others go on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from dualstage.classify.dicom_seg import package_version, write_seg
from dualstage.commands.predictor import Prediction, Predictor
from dualstage.core.gating import REF_PIXELS
from dualstage.core.io import atomic_write, write_csv_atomic, write_json_atomic, write_png_atomic
from dualstage.core.locks import holding
from dualstage.core.progress import progress as progress_iter
from dualstage.data.images import is_dicom_file, read_image_file
from dualstage.report.overlay import panel_rows, render_overlay, thumbnail
from dualstage.report.review import PAGE_NAME, write_review_page
from dualstage.segment.predict import input_jobs

__all__ = ["predict_new", "check_out", "study_row"]

PANEL = 512
REJECTED_COLUMNS = ["item", "stage", "reason"]


def check_out(inputs: Sequence[str | Path], out: str | Path) -> Path:
    """``out`` resolved; FileNotFoundError naming a missing input, ValueError when ``out`` is a file
    or lies inside an input folder (its masks would be read as new images on the next run)."""
    out = Path(out).expanduser().resolve()
    for item in map(Path, inputs):
        if not item.exists():
            raise FileNotFoundError(f"--input {item}: no such file or folder")
        src = item.resolve()
        if out == src or (src.is_dir() and src in out.parents):
            raise ValueError(
                f"--out {out}: inside the input folder {src}; choose an output folder outside it"
            )
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    return out


def _start(out: Path, setup: dict) -> None:
    """Record the set-up in run.json; refuse an OUT holding another experiment's or mode's results."""
    path = out / "run.json"
    keys = ("experiment", "mode", "checkpoint", "tta")
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8")).get("setup", {})
        if any(old.get(k) != setup.get(k) for k in keys):
            raise ValueError(
                f"--out {out}: holds results of {old.get('experiment')} (mode {old.get('mode')}, "
                f"checkpoint {old.get('checkpoint')}); now {setup['experiment']} (mode {setup['mode']}): "
                "use another --out"
            )
    elif (out / "parts").is_dir() and any((out / "parts").iterdir()):
        raise ValueError(f"--out {out}: has parts/ but no run.json; use another --out, or delete it")
    write_json_atomic(path, {"setup": setup, "status": "running"})


def _part(out: Path, image_id: str) -> Path:
    return out / "parts" / f"{image_id}.json"


def _finished(out: Path, image_id: str, path: Path) -> dict | None:
    """The saved record of a study finished from the same file, else None."""
    part = _part(out, image_id)
    if not part.is_file():
        return None
    try:
        record = json.loads(part.read_text(encoding="utf-8"))
    except ValueError:
        return None
    return record if record.get("row", {}).get("file") == str(path.resolve()) else None


def study_row(image_id: str, path: Path, result: Prediction) -> dict:
    """The decisions.csv row of one study (paths of its files relative to OUT)."""
    area = int(result.mask.sum())
    row = {
        "image_id": image_id,
        "decision": result.decision,
        "probability": round(result.probability, 6),
        "mask_area_px": area,
        "mask_area_1024": round(area * REF_PIXELS / result.mask.size, 1),
        "votes": sum(v.vote for v in result.votes),
        "pipelines": len(result.votes),
    }
    for v in result.votes:
        row[f"probability_{v.pipeline}"] = round(v.probability, 6)
        row[f"threshold_{v.pipeline}"] = v.threshold
        row[f"vote_{v.pipeline}"] = v.vote
        row[f"mask_area_{v.pipeline}"] = v.mask_area_px
    dist = None if result.distance is None else round(result.distance, 3)
    row.update(distance=dist, distance_threshold=result.distance_threshold)
    row.update(unlike_training=int(result.unlike_training), warning=result.warning, reason=result.reason())
    row.update(
        mask=f"masks/{image_id}.png", overlay=f"overlays/{image_id}.jpg", thumbnail=f"thumbs/{image_id}.jpg"
    )
    return {**row, "seg": "", "file": str(path.resolve())}


def _save_image(path: Path, array: np.ndarray, fmt: str, **options) -> None:
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format=fmt, **options))


def _write_study(out: Path, image_id: str, path: Path, image: np.ndarray, result: Prediction) -> list[dict]:
    """Mask, SEG (DICOM sources), overlay, thumbnail, then the part record; returns rejected rows."""
    rejected = []
    row = study_row(image_id, path, result)
    write_png_atomic(out / row["mask"], result.mask.astype(np.uint8) * 255)
    seg = out / "seg" / f"{image_id}.dcm"
    seg.unlink(missing_ok=True)
    if result.decision and is_dicom_file(path):
        try:
            write_seg(path, result.mask, seg, algorithm_version=package_version())
            row["seg"] = f"seg/{image_id}.dcm"
        except ValueError as exc:
            rejected.append({"item": str(path), "stage": "seg", "reason": str(exc)})
    state = f"PRESENT, mask {row['mask_area_px']:,} px" if result.decision else "absent"
    title = f"{image_id}: {state}; classifier p {result.probability:.2f} (mean of {len(result.votes)})"
    lines = result.reason().split("; ")
    overlay = render_overlay(image, result.probability_map, result.mask, title, lines, result.warning, PANEL)
    _save_image(out / row["overlay"], overlay, "JPEG", quality=92, subsampling=0)  # 4:4:4: crisp text
    _save_image(
        out / row["thumbnail"], thumbnail(overlay, panel_rows(image.shape, PANEL)), "JPEG", quality=85
    )
    write_json_atomic(_part(out, image_id), {"row": row, "rejected": rejected})
    return rejected


def _read_batch(ids: list[str], path_of: dict[str, Path]) -> tuple[dict[str, np.ndarray], list[dict]]:
    """({id: uint8 (H, W) image}, rejected rows of the files that could not be decoded)."""
    images, rejected = {}, []
    for image_id in ids:
        try:
            images[image_id] = read_image_file(path_of[image_id])[0]
        except ValueError as exc:
            rejected.append({"item": str(path_of[image_id]), "stage": "decode", "reason": str(exc)})
    return images, rejected


def _decide(
    predictor: Predictor, state: dict, ids: list[str], images: dict, out: Path, path_of: dict, writer
):
    """Finish one batch's predictions and hand each study to the writers; their futures."""
    results = predictor.finish(state)
    return [
        writer.submit(_write_study, out, i, path_of[i], images[i], r)
        for i, r in zip(ids, results, strict=True)
    ]


def _run(out: Path, predictor: Predictor, todo: list[str], path_of: dict, batch: int, progress: bool) -> list:
    """Predict ``todo`` in batches, overlapped: while the models run on batch b, batch b + 1 is read,
    batch b - 1's statistics, classifiers and votes are finished and finished studies written;
    returns the rejected rows."""
    batches = [todo[k : k + batch] for k in range(0, len(todo), batch)]
    rejected: list[dict] = []
    pools = ThreadPoolExecutor(1), ThreadPoolExecutor(1), ThreadPoolExecutor(2)
    reader, decider, writer = pools
    try:
        pending, deciding = [], None
        ahead = reader.submit(_read_batch, batches[0], path_of) if batches else None
        for b, ids in enumerate(
            progress_iter(batches, desc="predict new images", unit="batch", enabled=progress)
        ):
            images, failed = ahead.result()
            ahead = reader.submit(_read_batch, batches[b + 1], path_of) if b + 1 < len(batches) else None
            rejected += failed
            ok = [i for i in ids if i in images]
            state = predictor.forward([images[i] for i in ok]) if ok else None
            if deciding is not None:
                pending += deciding.result()
            deciding = (
                decider.submit(_decide, predictor, state, ok, images, out, path_of, writer) if ok else None
            )
            while len(pending) > 2 * batch:  # bound the studies waiting in memory
                rejected += pending.pop(0).result()
        if deciding is not None:
            pending += deciding.result()
        for job in pending:
            rejected += job.result()
    finally:
        for pool in pools:
            pool.shutdown()
    return rejected


def predict_new(
    inputs: str | Path | Sequence[str | Path],
    exp_dir: str | Path,
    out: str | Path,
    mode: str | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    progress: bool = True,
    predictor: Predictor | None = None,
) -> dict:
    """Predict new radiographs into ``out`` (see the module docstring); returns run.json's summary.

    ``predictor``: one already set up (else one from ``exp_dir``); finished studies are skipped.
    One writer per ``out`` (:mod:`dualstage.core.locks`): a second run into it stops with one line."""
    inputs = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    out = check_out(inputs, out)
    with holding(out, "python -m dualstage predict"):
        return _predict_new(inputs, exp_dir, out, mode, device, batch_size, progress, predictor)


def _predict_new(inputs, exp_dir, out, mode, device, batch_size, progress, predictor) -> dict:
    t0 = time.perf_counter()
    rejected: list[dict] = []
    _, _, path_of = input_jobs(inputs, ["predictor"], rejected)
    predictor = predictor or Predictor.from_experiment(exp_dir, mode=mode, device=device)
    setup = predictor.describe()
    _start(out, setup)
    records = {i: r for i in path_of if (r := _finished(out, i, path_of[i])) is not None}
    todo = [i for i in path_of if i not in records]
    t_run = time.perf_counter()
    rejected += _run(out, predictor, todo, path_of, batch_size or predictor.settings["batch_size"], progress)
    run_seconds = time.perf_counter() - t_run
    records = {i: r for i in path_of if (r := _finished(out, i, path_of[i])) is not None}
    rejected += [r for i, rec in records.items() if i not in todo for r in rec["rejected"]]
    rejected_frame = pd.DataFrame(rejected, columns=REJECTED_COLUMNS)
    write_csv_atomic(rejected_frame, out / "rejected.csv")
    if not records:
        names = ", ".join(map(str, inputs))
        raise ValueError(
            f"--input {names}: no readable image ({len(rejected)} rejected: {out / 'rejected.csv'})"
        )
    decisions = pd.DataFrame([rec["row"] for rec in records.values()])
    write_csv_atomic(decisions, out / "decisions.csv")
    write_review_page(out, decisions, rejected_frame, setup)
    n_now = len([i for i in todo if i in records])
    summary = {
        "setup": setup,
        "status": "complete",
        "out": str(out),
        "page": str(out / PAGE_NAME),
        "studies": len(records),
        "predicted_now": n_now,
        "reused": len(records) - n_now,
        "present": int(decisions["decision"].sum()),
        "unlike_training": int(decisions["unlike_training"].sum()),
        "rejected": len(rejected_frame),
        "seconds": round(time.perf_counter() - t0, 2),
        "studies_per_second": round(n_now / run_seconds, 3) if n_now and run_seconds > 0 else None,
        "version": package_version(),
    }
    write_json_atomic(out / "run.json", summary)
    return summary
