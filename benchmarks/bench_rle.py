"""Codec speed: dualstage.core.rle (vectorised) vs the per-run Python loop most Kaggle kernels use.

Decodes every image of the real stage-2 table (12,954 rows, 12,047 images) with its area,
one image at a time, with both decoders side by side, and prints the ratio.
Run: make bench  (or .venv/bin/python benchmarks/bench_rle.py [path/to/stage_2_train.csv.gz])
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from dualstage.core import rle
from dualstage.data.annotations import read_rle_csv

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "siim" / "stage_2_train.csv.gz"


def loop_decode(rles: list[str], height: int = 1024, width: int = 1024) -> np.ndarray:
    """The common kernel decoder: a Python loop over runs (reference for the ratio)."""
    flat = np.zeros(height * width, dtype=np.uint8)
    for text in rles:
        if text.strip() == "-1":
            continue
        values = [int(v) for v in text.split()]
        position = 0
        for offset, length in zip(values[0::2], values[1::2], strict=True):
            position += offset
            flat[position : position + length] = 1
            position += length
    return flat.reshape(width, height).T


def pixel_loop_encode(mask: np.ndarray) -> str:
    """The challenge starter kit's ``mask2rle``: a Python loop over every pixel (reference)."""
    flat = mask.T.flatten()
    runs, start, last, run = [], -1, 0, 0
    for index, value in enumerate(flat):
        if value and start == -1:
            start, run = index, 1
        elif value:
            run += 1
        elif start != -1:
            runs.extend([start - last, run])
            last, start = start + run, -1
    if start != -1:
        runs.extend([start - last, run])
    return " ".join(map(str, runs)) if runs else "-1"


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    if not path.exists():
        print(f"skip: {path} not found")
        return
    t0 = time.perf_counter()
    table = read_rle_csv(path)
    groups: dict[str, list[str]] = {}
    for image_id, text in zip(table["image_id"].tolist(), table["rle"].tolist(), strict=True):
        groups.setdefault(image_id, []).append(text)
    read_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = [rle.area(rle.decode(v)) for v in groups.values()]
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = [int(np.count_nonzero(loop_decode(v).T)) for v in groups.values()]
    ref_s = time.perf_counter() - t0
    assert ours == ref, "decoders disagree"
    n_pos = sum(a > 0 for a in ours)
    print(f"table: {len(table)} rows, {len(groups)} images, {n_pos} positive; read {read_s:.2f}s")
    print(f"decode+area, vectorised: {ours_s:.2f}s  ({len(groups) / ours_s:,.0f} images/s)")
    print(f"decode+area, run loop:   {ref_s:.2f}s")
    print(f"ratio loop / vectorised: {ref_s / ours_s:.2f}x")
    masks = [rle.decode(v) for v, a in zip(groups.values(), ours, strict=True) if a > 0][:20]
    t0 = time.perf_counter()
    enc = [rle.encode(m) for m in masks]
    enc_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    enc_ref = [pixel_loop_encode(m) for m in masks]
    enc_ref_s = time.perf_counter() - t0
    assert enc == enc_ref, "encoders disagree"
    print(f"encode {len(masks)} positive masks: vectorised {enc_s:.3f}s, pixel loop {enc_ref_s:.2f}s")
    print(f"ratio pixel loop / vectorised encode: {enc_ref_s / enc_s:.0f}x")


if __name__ == "__main__":
    main()
