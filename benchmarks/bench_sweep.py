"""Sweep speed: histogram engine (dualstage.core.gating) vs brute-force re-thresholding of the maps.

Makes N synthetic 1024 x 1024 uint8 probability maps one at a time (never all in RAM) and their
per-image histograms, then times the 99-threshold x 51-min-area grid (and the triplet grid)
from the histograms over all N images. Brute force re-thresholds every map at every threshold
(counts per threshold, all min areas from those counts) on a subset, checks that both give
identical metrics there, and is extrapolated per image to N. Also reports the engine's peak
traced memory on 10x the images.
Run: .venv/bin/python benchmarks/bench_sweep.py [--n 1000] [--brute 20]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from dualstage.core import gating
from dualstage.core.metrics import summarize_counts
from dualstage.segment.sweep import BOTTOMS, FINE, MIN_AREAS, TOPS


def synthetic(seed: int, size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 map, bool truth) of one image: smooth blobs, 30% positives, noisy background.

    Drawn at size / 4 and repeated 4 x 4 (cheap); the sweep sees a full size x size map."""
    rng = np.random.default_rng(seed)
    low = size // 4
    field = np.repeat(np.repeat(rng.normal(size=(32, 32)).astype(np.float32), low // 32, 0), low // 32, 1)
    truth = field > 1.5 if rng.random() < 0.3 else np.zeros((low, low), bool)
    noise = rng.normal(scale=0.8, size=(low, low)).astype(np.float32)
    q = np.round(255 / (1 + np.exp(-(1.5 * truth + 0.8 * field - 3.0 + noise)))).astype(np.uint8)
    return tuple(np.repeat(np.repeat(a, 4, 0), 4, 1) for a in (q, truth))


def brute_force(seeds, thresholds, min_areas) -> dict:
    """Metrics (T, A) by re-thresholding each map at each threshold (min areas from the counts)."""
    lv = gating.levels(thresholds)
    shape = (len(lv), len(min_areas), len(seeds))
    inter, area = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    true_area, n_pix = np.zeros(len(seeds), np.int64), np.zeros(len(seeds), np.int64)
    for i, seed in enumerate(seeds):
        q, truth = synthetic(seed)
        true_area[i], n_pix[i] = truth.sum(), truth.size
        for j, t in enumerate(thresholds):
            mask = gating.apply_rule(q, {"rule": "threshold", "threshold": t})
            a, n = np.count_nonzero(mask), np.count_nonzero(mask & truth)
            keep = gating.keep_area(a, truth.size, np.asarray(min_areas))
            inter[j, :, i], area[j, :, i] = np.where(keep, n, 0), np.where(keep, a, 0)
    return summarize_counts(inter, area, true_area, n_pix)


def loop_triplet_grid(tops, areas, bottoms) -> tuple[np.ndarray, ...]:
    """The triplet grid as sweep_triplet built it before: a Python loop with round() per cell."""
    grid = [(t, a, b) for t in tops for a in areas for b in bottoms if round(b, 9) <= round(t, 9)]
    return tuple(np.array(c) for c in zip(*grid, strict=True))


def grid_ratio(rounds: int = 3) -> None:
    """Triplet-grid construction, loop vs ``gating.triplet_grid``, timed alternately; same cells
    in the same order."""
    grids = [np.asarray(g, dtype=np.float64) for g in (TOPS, MIN_AREAS, BOTTOMS)]
    best = {"loop": float("inf"), "numpy": float("inf")}
    for _ in range(rounds):
        for name, fn in (("loop", loop_triplet_grid), ("numpy", gating.triplet_grid)):
            t0 = time.perf_counter()
            out = fn(*grids)
            best[name] = min(best[name], time.perf_counter() - t0)
            if name == "loop":
                ref = out
    same = all(np.array_equal(x, y) for x, y in zip(ref, out, strict=True))
    print(
        f"triplet grid ({ref[0].size} cells) built by a Python loop {best['loop']:.3f} s, by numpy "
        f"{best['numpy']:.4f} s: {best['loop'] / best['numpy']:.0f}x, identical cells in order: {same}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="images (1024 x 1024)")
    parser.add_argument("--brute", type=int, default=20, help="images brute-forced (then extrapolated)")
    args = parser.parse_args()
    grid_ratio()

    t0 = time.perf_counter()
    hist = np.stack([gating.histogram(*synthetic(seed)) for seed in range(args.n)])
    t_hist = time.perf_counter() - t0
    H = W = np.full(args.n, 1024)
    n_pos = int((hist[:, 1].sum(1) > 0).sum())
    print(f"{args.n} synthetic 1024x1024 maps ({n_pos} positive): made + histogrammed in {t_hist:.1f} s")
    print(
        f"grid: {len(FINE)} thresholds x {len(MIN_AREAS)} min areas = {len(FINE) * len(MIN_AREAS)} settings"
    )

    t0 = time.perf_counter()
    engine = gating.sweep_threshold_area(hist, H, W, FINE, MIN_AREAS)
    t_engine = time.perf_counter() - t0
    t0 = time.perf_counter()
    trip = gating.sweep_triplet(hist, H, W, TOPS, MIN_AREAS, BOTTOMS)
    t_trip = time.perf_counter() - t0

    t0 = time.perf_counter()
    brute = brute_force(range(args.brute), FINE, MIN_AREAS)
    t_brute = time.perf_counter() - t0
    sub = gating.sweep_threshold_area(hist[: args.brute], H[: args.brute], W[: args.brute], FINE, MIN_AREAS)
    same = all(np.array_equal(sub[k], brute[k], equal_nan=True) for k in brute)
    t_brute_n = t_brute / args.brute * args.n

    print(f"histogram engine, threshold x area over {args.n} images: {t_engine:.2f} s")
    print(f"histogram engine, triplet grid ({len(trip)} settings) over {args.n} images: {t_trip:.2f} s")
    print(
        f"brute force, threshold x area over {args.brute} images: {t_brute:.2f} s "
        f"-> {t_brute_n:.0f} s extrapolated to {args.n} images"
    )
    print(f"identical metrics on the brute-forced subset: {same}")
    print(f"ratio brute / engine (threshold x area, {args.n} images): {t_brute_n / t_engine:.0f}x")

    big = np.concatenate([hist] * 10)
    tracemalloc.start()
    t0 = time.perf_counter()
    gating.sweep_threshold_area(big, np.full(len(big), 1024), np.full(len(big), 1024), FINE, MIN_AREAS)
    t_big = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    print(f"engine on {len(big)} images: {t_big:.2f} s, peak traced memory {peak:.0f} MiB")
    best = np.unravel_index(np.argmax(engine["mean_dice"]), engine["mean_dice"].shape)
    print(
        f"(best on this synthetic set: threshold {FINE[best[0]]}, min_area {MIN_AREAS[best[1]]}, "
        f"mean Dice {engine['mean_dice'][best]:.4f})"
    )


if __name__ == "__main__":
    main()
