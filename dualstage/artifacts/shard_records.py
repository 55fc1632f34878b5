"""The shard record: which share of a step's images one process handles, and its record file.

A shard ``i/n`` handles batches i, i + n, ... of the batches one process forms; its record
``<folder>/shards/<step>.<i>of<n>.json`` holds the run's settings, its ids and failures
(:mod:`dualstage.commands.shards` runs and merges them; ``segment predict`` and ``classify
features`` pick their rows here).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from dualstage.core.io import write_json_atomic

__all__ = [
    "Shard",
    "parse_shard",
    "torchrun_shard",
    "shard_jobs",
    "shard_rows",
    "record_path",
    "read_records",
    "write_record",
]

_SHARD = re.compile(r"(\d+)/(\d+)")


@dataclass(frozen=True)
class Shard:
    """Share ``index`` of ``count``: the ``index``-th of every ``count`` ids in sorted order."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def tag(self) -> str:
        """The name part of its record file, e.g. ``0of2``."""
        return f"{self.index}of{self.count}"

    def pick(self, ids: list[str], batch: int) -> list[str]:
        """This shard's ids of ``ids`` cut into batches of ``batch``: batches index, index + count ... ."""
        return [x for j, x in enumerate(ids) if (j // max(1, batch)) % self.count == self.index]


def parse_shard(text: str, flag: str = "--shard") -> Shard:
    """``"i/n"`` with 0 <= i < n -> Shard; ValueError naming ``flag`` otherwise."""
    match = _SHARD.fullmatch(str(text).strip())
    if not match or int(match.group(2)) < 1 or int(match.group(1)) >= int(match.group(2)):
        raise ValueError(f"{flag} {text!r}: expected I/N with 0 <= I < N, e.g. 0/2 and 1/2 for two processes")
    return Shard(int(match.group(1)), int(match.group(2)))


def torchrun_shard() -> Shard | None:
    """Shard RANK/WORLD_SIZE under ``torchrun`` (WORLD_SIZE > 1), else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Shard(int(os.environ.get("RANK", "0")), world) if world > 1 else None


def shard_jobs(groups: list[tuple[list[str], list[str]]], shard: Shard | None, batch: int) -> list:
    """``[(models, ids)]`` jobs of ``predict`` cut to the shard's batches of each job (order kept)."""
    return groups if shard is None else [(names, shard.pick(ids, batch)) for names, ids in groups]


def shard_rows(shard: Shard | None, sources: list, todo: list[int], batch: int) -> list[int]:
    """The rows ``todo`` of ``features`` in the shard's batches of the readable rows (order kept)."""
    if shard is None:
        return todo
    mine = set(shard.pick([k for k, source in enumerate(sources) if source is not None], batch))
    return [k for k in todo if k in mine]


def record_path(folder: str | Path, step: str, shard: Shard) -> Path:
    """``<folder>/shards/<step>.<i>of<n>.json``."""
    return Path(folder) / "shards" / f"{step}.{shard.tag}.json"


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_record(folder: Path, step: str, shard: Shard, run: dict, extra: dict) -> Path:
    """Write one shard's record: its run (settings that must agree across shards) and ``extra``."""
    record = {
        "step": step,
        "shard": str(shard),
        "index": shard.index,
        "count": shard.count,
        "run": run,
        "run_id": _digest(run),
        **extra,
    }
    return write_json_atomic(record_path(folder, step, shard), record)


def read_records(folder: str | Path, step: str) -> list[dict]:
    """Every shard record of ``step`` in ``folder``, checked to be one complete run (ValueError)."""
    where = Path(folder) / "shards"
    paths = sorted(where.glob(f"{step}.*of*.json"))
    if not paths:
        raise FileNotFoundError(f"{where}: no {step} shard records; run with --shard I/N first")
    records = []
    for path in paths:
        try:
            records.append({**json.loads(path.read_text(encoding="utf-8")), "path": str(path)})
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not a valid shard record ({exc})") from None
    runs = {(r.get("count"), r.get("run_id")) for r in records}
    if len(runs) > 1:
        names = ", ".join(f"{Path(r['path']).name} (run {r.get('run_id')})" for r in records)
        raise ValueError(f"{where}: shard records of different runs ({names}); delete the stale ones, rerun")
    count = records[0]["count"]
    missing = sorted(set(range(count)) - {r["index"] for r in records})
    if missing:
        files = ", ".join(record_path(folder, step, Shard(i, count)).name for i in missing)
        raise ValueError(
            f"{where}: missing shards {', '.join(f'{i}/{count}' for i in missing)} of {count} "
            f"(no {files}); run them first"
        )
    return sorted(records, key=lambda r: r["index"])
