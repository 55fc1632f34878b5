"""``segment predict`` and ``classify features`` over several processes or GPUs, and the exact merge.

A shard ``i/n`` (``--shard i/n``, or rank/world under ``torchrun``) handles batches i, i + n,
i + 2n ... of the batches one process forms (per model group of ``predict``; over the readable rows
of ``features``) with the same batch size, so every image goes through the network in the very
batch it would in one process (float results can depend on a batch's size and company; this keeps
them bit for bit, for a run that starts afresh). It writes its per-image files (``maps/``,
``hists/`` of a prediction set; ``parts/`` of a feature set) straight into the shared output
folder, then a record ``shards/<step>.<i>of<n>.json``: the run's settings (model files or feature
settings), its ids, the images it could not read, and its timing.

The merge (``--merge``; rank 0 after a barrier under ``torchrun``) checks that the records are
those of one run and that every shard is there (naming the missing ones), recomputes the run's ids
on its own and checks that the shards together wrote every image's files, then runs the step once
more in one process: it finds every image done and writes ``index.csv``, ``histograms.npz`` /
``features.npz`` exactly as a one-process run writes them (same rows, same order, same bytes).
The records are removed once merged; the step's summary lists them under ``shards``.
"""

from __future__ import annotations

import atexit
import time
from collections.abc import Callable
from pathlib import Path

import torch.distributed as dist

from dualstage.artifacts.layout import ExperimentDir
from dualstage.artifacts.prediction_set import PredictionSet
from dualstage.artifacts.shard_records import Shard, parse_shard, read_records, torchrun_shard, write_record
from dualstage.classify.features import _FEATURE_VERSION, describe_weights, extract_features
from dualstage.core.cli import describe_error
from dualstage.core.io import sha256_file, write_json_atomic
from dualstage.core.locks import locked as _locked
from dualstage.data.annotations import read_rle_csv
from dualstage.runtime.distributed import all_gather_objects, pick_device, setup_runtime, teardown
from dualstage.segment.inference import CHECKPOINTS, select_models
from dualstage.segment.predict import input_jobs, predict, split_jobs

__all__ = ["predict_shard", "merge_predict", "features_shard", "merge_features", "run_sharded", "dispatch"]


def _check_cover(records: list[dict], ids: list[str], done: Callable[[str], bool], where: Path) -> None:
    """ValueError unless every id of the run is done, or was skipped (unreadable) by a shard."""
    skipped = {i for r in records for i in r.get("skipped", [])}
    lacking = [i for i in dict.fromkeys(ids) if i not in skipped and not done(i)]
    if not lacking:
        return
    owner = {i: r["shard"] for r in records for i in r.get("ids", [])}
    by_shard: dict[str, list[str]] = {}
    for i in lacking:
        by_shard.setdefault(owner.get(i, "none"), []).append(i)
    parts = [
        f"shard {k} did not write {len(v)} images (e.g. {v[:3]})"
        if k != "none"
        else f"{len(v)} images are in no shard (e.g. {v[:3]})"
        for k, v in sorted(by_shard.items())
    ]
    raise ValueError(f"{where}: {'; '.join(parts)}; rerun the shards (same I/N) before --merge")


def _merged_summary(summary: dict, records: list[dict], counter: str, t0: float) -> dict:
    """The merge's summary: the shards' counts and timing, the merge's own seconds."""
    return {
        **summary,
        counter: sum(r[counter] for r in records),
        "merge_seconds": round(time.perf_counter() - t0, 2),
        "shards": [{k: r[k] for k in ("shard", counter, "seconds", "device")} for r in records],
    }


def _remove(records: list[dict]) -> None:
    for r in records:
        Path(r["path"]).unlink(missing_ok=True)


# -- segment predict ------------------------------------------------------------------------------
def _model_files(run: dict) -> dict[str, list]:
    """{checkpoint path: [size, mtime_ns]} of the models a predict run uses (its identity)."""
    out = {}
    for folder in select_models(ExperimentDir(run["exp_dir"]), run["only"]).values():
        for name in CHECKPOINTS.get(run["checkpoint"], ()):
            path = folder / name if (folder / name).exists() else folder / "last.pt"
            out[str(path.resolve())] = [path.stat().st_size, path.stat().st_mtime_ns]
    return out


def _predict_run(kwargs: dict) -> dict:
    """The settings every shard of one predict run shares (the batch size too: the shares are batches)."""
    paths = {
        k: str(Path(kwargs[k]).resolve()) if kwargs.get(k) is not None else None
        for k in ("exp_dir", "input_dir")
    }
    get = kwargs.get
    run = {
        **paths,
        "split": get("split"),
        "tta": bool(get("tta")),
        "strict": bool(get("strict")),
        "checkpoint": get("checkpoint", "best"),
        "only": sorted(get("only")) if get("only") else None,
        "batch_size": int(get("batch_size", 8)),
        "precision": get("precision", "auto"),
        "max_pixels": get("max_pixels"),
    }
    return {**run, "models": _model_files(run)}


@_locked("segment predict --shard", shared=True)
def predict_shard(shard: Shard, out: str | Path, **kwargs) -> dict:
    """``segment predict`` of one shard into ``out`` (maps, hists) plus its record; its summary."""
    t0, run = time.perf_counter(), _predict_run(kwargs)  # the models it is about to use
    summary = predict(out=out, shard=shard, **kwargs)
    summary["ids"] = [r["image_id"] for r in summary.pop("rows")] + summary["failed"]
    summary.update(
        seconds=round(time.perf_counter() - t0, 2), device=str(pick_device(kwargs.get("device", "auto")))
    )
    write_record(
        Path(out),
        "predict",
        shard,
        run,
        {
            "ids": summary["ids"],
            "skipped": summary["failed"],
            "predicted_now": summary["predicted_now"],
            "seconds": summary["seconds"],
            "device": summary["device"],
        },
    )
    return summary


def _predict_ids(run: dict) -> tuple[list[str], set[str]]:
    """(every id a predict run covers, the ids with truth), recomputed from the experiment."""
    exp = ExperimentDir(run["exp_dir"])
    names = list(select_models(exp, run["only"]))
    if run["input_dir"] is not None:
        jobs = input_jobs(run["input_dir"], names, [], run.get("max_pixels"))[1]
        return [i for _, ids in jobs for i in ids], set()
    groups = split_jobs(run["split"], exp, names)[1]
    return [i for _, ids in groups for i in ids], set(read_rle_csv(exp.masks_csv)["image_id"])


@_locked("segment predict --merge")
def merge_predict(out: str | Path, device: str = "auto", progress: bool = False, workers: int = 0) -> dict:
    """Merge the shards of a predict run in ``out``: the set's files as one process writes them."""
    t0, pset = time.perf_counter(), PredictionSet(out)
    records = read_records(out, "predict")
    run = records[0]["run"]
    now = {**run, "models": _model_files(run)}
    if now != run:
        raise ValueError(f"{pset.folder}/shards: the models changed since the shards ran; rerun the shards")
    ids, truth = _predict_ids(run)
    _check_cover(records, ids, lambda i: pset.is_done(i, i in truth), pset.folder / "shards")
    summary = predict(
        run["exp_dir"],
        out,
        split=run["split"],
        input_dir=run["input_dir"],
        tta=run["tta"],
        checkpoint=run["checkpoint"],
        only=run["only"],
        strict=run["strict"],
        device=device,
        progress=progress,
        workers=workers,
        batch_size=run["batch_size"],
        precision=run["precision"],
        max_pixels=run.get("max_pixels"),
    )
    summary = _merged_summary(summary, records, "predicted_now", t0)
    pset.write_info(summary)
    _remove(records)
    return summary


# -- classify features ----------------------------------------------------------------------------
def _features_run(pred_dir: str | Path, kwargs: dict) -> dict:
    """The settings every shard of one features run shares (the batch size too: the shares are batches)."""
    pset = PredictionSet(pred_dir)
    prepared = kwargs.get("prepared")
    return {
        "pred_dir": str(pset.folder.resolve()),
        "prepared": str(Path(prepared).resolve()) if prepared is not None else None,
        "setting": {
            **describe_weights(kwargs.get("weights", "imagenet")),
            "image_size": int(kwargs.get("image_size", 224)),
            "version": _FEATURE_VERSION,
        },
        "index_sha256": sha256_file(pset.index_path) if pset.index_path.is_file() else None,
        "batch_size": int(kwargs.get("batch_size", 16)),
        "precision": kwargs.get("precision", "auto"),
        "max_pixels": kwargs.get("max_pixels"),
    }


@_locked("classify features --shard", shared=True, folder="out_dir")
def features_shard(shard: Shard, pred_dir: str | Path, out_dir: str | Path, **kwargs) -> dict:
    """``classify features`` of one shard (``parts/``) plus its record; its summary."""
    t0, run = time.perf_counter(), _features_run(pred_dir, kwargs)
    summary = extract_features(pred_dir, out_dir, shard=shard, **kwargs)
    summary.update(
        seconds=round(time.perf_counter() - t0, 2), device=str(pick_device(kwargs.get("device", "auto")))
    )
    write_record(
        Path(out_dir),
        "features",
        shard,
        run,
        {
            "ids": summary["ids"],
            "skipped": summary["rejected_ids"],
            "extracted_now": summary["extracted_now"],
            "seconds": summary["seconds"],
            "device": summary["device"],
        },
    )
    return summary


@_locked("classify features --merge", folder="out_dir")
def merge_features(
    out_dir: str | Path, device: str = "auto", progress: bool = False, workers: int = 0
) -> dict:
    """Merge the shards of a features run in ``out_dir``: the set's files as one process writes them."""
    t0, out_dir = time.perf_counter(), Path(out_dir)
    records = read_records(out_dir, "features")
    run = records[0]["run"]
    kwargs = {
        "prepared": run["prepared"],
        "weights": run["setting"]["weights"],
        "image_size": run["setting"]["image_size"],
        "batch_size": run["batch_size"],
        "precision": run["precision"],
        "max_pixels": run.get("max_pixels"),
    }
    if _features_run(run["pred_dir"], kwargs) != run:
        raise ValueError(
            f"{out_dir}/shards: the predictions or weights changed since the shards ran; rerun the shards"
        )
    ids = PredictionSet(run["pred_dir"]).index()["image_id"].tolist()
    _check_cover(records, ids, lambda i: (out_dir / "parts" / f"{i}.npy").is_file(), out_dir / "shards")
    summary = extract_features(
        run["pred_dir"], out_dir, device=device, progress=progress, workers=workers, **kwargs
    )
    summary = _merged_summary(summary, records, "extracted_now", t0)
    write_json_atomic(out_dir / "features.json", summary)
    _remove(records)
    return summary


# -- what the command line asked for ------------------------------------------------------------
def dispatch(step: str, kwargs: dict, shard: str | None = None, merge: bool = False) -> dict:
    """Run ``step`` (``predict``: :func:`~dualstage.segment.predict.predict` keywords; ``features``:
    :func:`~dualstage.classify.features.extract_features` keywords) as asked: one process, one
    ``--shard I/N``, the ``--merge`` of finished shards, or every rank of ``torchrun`` then the merge."""
    single, one_shard, merger, folder = {
        "predict": (predict, predict_shard, merge_predict, "out"),
        "features": (extract_features, features_shard, merge_features, "out_dir"),
    }[step]
    if shard is not None and merge:
        raise ValueError("--shard and --merge together: run every --shard I/N first, then --merge once")
    merge_kw = {k: kwargs[k] for k in ("device", "progress", "workers") if k in kwargs}
    if merge:
        return merger(kwargs[folder], **merge_kw)
    if shard is not None:
        return one_shard(parse_shard(shard), **kwargs)
    if torchrun_shard() is None:
        return single(**kwargs)

    def work(part: Shard, device: str) -> dict:
        progress = kwargs.get("progress", True) and part.index == 0
        return one_shard(part, **{**kwargs, "device": device, "progress": progress})

    return run_sharded(
        kwargs.get("device", "auto"), work, lambda d: merger(kwargs[folder], **{**merge_kw, "device": d})
    )


# -- torchrun -------------------------------------------------------------------------------------
def run_sharded(device: str, work: Callable[[Shard, str], dict], merge: Callable[[str], dict]) -> dict:
    """Under ``torchrun``: each rank runs ``work(shard, its device)``, then rank 0 merges after a
    barrier (the others wait for it). Rank 0 returns the merged summary, the others their own.
    An error on any rank stops every rank with that one line; the group is left at exit."""
    if not dist.is_initialized():  # once per process: several sets share the group
        atexit.register(teardown)
    runtime = setup_runtime(device)
    mine = _attempt(work, Shard(runtime.rank, runtime.world), str(runtime.device))
    _stop_on_failure(mine, runtime)
    result = _attempt(merge, str(runtime.device)) if runtime.is_main else mine
    _stop_on_failure(result, runtime)
    return result


class _Failed:
    """What :func:`_attempt` returns instead of a result: the error, its line, whether a bug."""

    def __init__(self, exc: Exception):
        line = describe_error(exc)
        self.exc, self.bug, self.message = exc, line is None, line or f"{type(exc).__name__}: {exc}"


def _attempt(func: Callable, *args) -> dict | _Failed:
    """``func(*args)``, or a :class:`_Failed` holding its error."""
    try:
        return func(*args)
    except Exception as exc:  # noqa: BLE001 - every rank learns of it before anyone raises
        return _Failed(exc)


def _stop_on_failure(outcome: dict | _Failed, runtime) -> None:
    """Gather every rank's outcome (a barrier); raise the first failure's line on every rank
    (a rank's own bug keeps its traceback), so no rank waits for one that stopped."""
    failed = isinstance(outcome, _Failed)
    lines = all_gather_objects(outcome.message if failed else None, runtime)
    if failed and outcome.bug:
        raise outcome.exc
    first = next((f"rank {r}: {line}" for r, line in enumerate(lines) if line), None)
    if first is not None:
        raise ValueError(first)
