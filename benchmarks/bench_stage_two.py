"""Stage two at the full size: successive halving vs the plain random search, and K = 10 cost.

(a) Quality: the plain ``RandomizedSearchCV`` (20 candidates x 3 folds, every candidate at full
rounds) and successive halving over the same 20 candidates and folds, on the same synthetic
rows (``--compare-rows`` x width, at a size where the plain one finishes), each winner refit on
all of them; held-out ROC AUC on a separate ``--test-rows`` set, and the time ratio.
(b) Cost: the cross-fitted tuning at ``--rows`` (12,000) x width with 10 outer folds, per outer
fold exactly what ``crossfit/classifier.py`` does (``tune_fold``: halving search on the other
folds grouped into 3 inner folds, refit, fold k's probabilities; then ``choose_gate`` on the
winner's inner out-of-fold probabilities). The folds are same-size jobs: the default times
``--measure-folds 1`` of them and reports 10 x its seconds as the K = 10 projection. Beside the
wall time it reports the process's CPU time / threads: on a shared machine the wall time
measures the neighbours too (and OpenMP threads spin while descheduled: with 2 threads on an
oversubscribed box the CPU time itself inflates), so ``--threads 1`` CPU time is the cleanest
measure of the work.

Synthetic table: float32 N(0, 1), 22 % positives (about SIIM stage-2 train's share), a weak
signal: ``--informative`` columns shifted by ``--shift`` in positives (half of them only where
another column is positive: an interaction trees must find). Width: the real one
(``len(feature_names())``: 2 x 1024 DenseNet + 9 map statistics) unless ``--width``.
Run: .venv/bin/python benchmarks/bench_stage_two.py [--measure-folds 10] [--table2]
Claims recorded in benchmarks/results.json (or $DUALSTAGE_BENCH_RESULTS) by ``_results.record``.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from dualstage.classify.gate import choose_gate
from dualstage.classify.halving import halving_like_random
from dualstage.classify.tune import random_search, search_space
from dualstage.classify.xgb import make_classifier
from dualstage.config import Experiment, TuneConfig
from dualstage.crossfit.search import base_settings, tune_fold

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import record  # noqa: E402

POSITIVE_SHARE = 0.22  # SIIM-ACR stage-2 train: about 22 % of studies show a pneumothorax


def real_width() -> int:
    from dualstage.classify.features import feature_names

    return len(feature_names())


def synthetic(n: int, width: int, informative: int, shift: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """X (n, width) float32, y (n,) int with ``POSITIVE_SHARE`` positives and a weak signal."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < POSITIVE_SHARE).astype(np.int64)
    X = rng.standard_normal((n, width), dtype=np.float32)
    half = informative // 2
    X[:, :half] += np.float32(shift) * y[:, None]
    gate = X[:, half : half + 1] > 0  # interaction: the other half only counts where column `half` > 0
    X[:, half + 1 : informative] += np.float32(2 * shift) * (y[:, None] * gate)
    return X, y


def cpu_seconds() -> float:
    """User + system CPU seconds of this process, all threads (contention-free work measure)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compare(args, width: int) -> dict:
    """(a): plain random search vs halving on the same rows, candidates and folds."""
    X, y = synthetic(args.compare_rows + args.test_rows, width, args.informative, args.shift, args.seed)
    n = args.compare_rows
    Xtr, ytr, Xte, yte = X[:n], y[:n], X[n:], y[n:]
    folds = np.arange(ytr.size) % 3
    dims = search_space((ytr.size - ytr.sum()) / ytr.sum())
    parts = ("roc_auc", {}, nullcontext(), None)

    def make():
        return make_classifier(0, 64, "auto", n_jobs=args.threads)

    out = {}
    for kind in ("halving", "random"):
        t0 = time.perf_counter()
        if kind == "halving":
            search, _, _ = halving_like_random(Xtr, ytr, folds, dims, parts, make, 20, 0, 3, args.min_rounds)
        else:
            search, _, _ = random_search(Xtr, ytr, folds, dims, parts, make, 20, 1, 0, False)
        seconds = time.perf_counter() - t0  # search + refit on all rows (+ halving's default CV)
        auc = float(roc_auc_score(yte, search.best_estimator_.predict_proba(Xte)[:, 1]))
        best = {k: v.item() if hasattr(v, "item") else v for k, v in search.best_params_.items()}
        out[kind] = {"seconds": seconds, "test_auc": auc, "cv_auc": float(search.best_score_), "best": best}
        print(f"  {kind:8s} {seconds:7.1f} s  inner CV AUC {search.best_score_:.4f}  held-out AUC {auc:.4f}")
    return out


def full_size(args, width: int) -> dict:
    """(b): the K = 10 cross-fitted tuning at full size, ``--measure-folds`` of the 10 folds timed."""
    t0 = time.perf_counter()
    X, y = synthetic(args.rows, width, args.informative, args.shift, args.seed + 1)
    folds = np.arange(y.size) % args.k
    print(f"  data {X.shape} {X.nbytes / 2**20:.0f} MiB in {time.perf_counter() - t0:.1f} s")
    t = TuneConfig(threads=args.threads, halving_min_rounds=args.min_rounds, table2=args.table2)
    parts = ("roc_auc", {}, nullcontext(), None)
    rng = np.random.default_rng(0)
    pred, true = rng.integers(0, 80, y.size), 60 * y
    inter = np.minimum(rng.integers(0, 50, y.size), np.minimum(pred, true))
    counts = np.stack([inter, pred, true, np.full(y.size, 1024**2)])  # (4, n) as rule_counts(...).T
    per_fold, cpu, aucs = [], [], []
    for k in range(args.measure_folds):
        t1, c1 = time.perf_counter(), cpu_seconds()
        res = tune_fold(t, X, y, folds, k, parts)
        gate = choose_gate(res["inner"], counts[:, res["rows"]])
        extra = _table2(t, X, y, folds, k, res) if args.table2 else 0.0
        per_fold.append(time.perf_counter() - t1)
        cpu.append(cpu_seconds() - c1)
        aucs.append(float(roc_auc_score(y[~res["rows"]], res["probabilities"])))
        print(
            f"  fold {k}: {per_fold[-1]:.1f} s wall, {cpu[-1]:.1f} s CPU (table2 {extra:.1f} s wall)"
            f"  best {res['best_params']}"
        )
        print(
            f"    inner AUC {res['best_cv_score']:.4f}  fold AUC {aucs[-1]:.4f}  gate {gate['threshold']}"
            f"  seconds { ({k: round(v, 1) for k, v in res.get('timing', {}).items()}) }"
        )
    return {
        "fold_seconds": per_fold,
        "fold_cpu_seconds": cpu,
        "fold_auc": aucs,
        "minutes_k": args.k * float(np.mean(per_fold)) / 60,
        "cpu_minutes_k_per_core": args.k * float(np.mean(cpu)) / 60 / args.threads,
    }


def _table2(t: TuneConfig, X, y, folds, k: int, res: dict) -> float:
    """Seconds of fold k's 4 Table 2 models (``fold_table2_models``) on top of the gate classifier."""
    from dualstage.crossfit.table2 import fold_table2_models

    names = np.array([f"f{j}" for j in range(X.shape[1] - 9)] + [f"stat_{j}" for j in range(9)])
    data = {"X": X, "y": y, "folds": folds, "names": names, "ids": np.arange(y.size).astype(str)}
    t0 = time.perf_counter()
    fold_table2_models(
        Experiment(name="bench", tune=t),
        k,
        data,
        ("roc_auc", {}, nullcontext(), None),
        (res["estimator"], res["inner"]),
        res["inner_folds"],
        base_settings(t),
    )
    return time.perf_counter() - t0


def write_results(claims: dict) -> None:
    """Record each claim through ``_results.record`` (benchmarks/results.json or $DUALSTAGE_BENCH_RESULTS);
    claims without a target go into the info of the claim named by their ``of`` key."""
    extra: dict[str, dict] = {}
    for name, c in claims.items():
        if c.get("target") is None:
            extra.setdefault(c.get("of", ""), {})[name] = c["measured"]
    for name, c in claims.items():
        if c.get("target") is not None:
            info = {k: v for k, v in c.items() if k not in ("measured", "target", "unit", "op")}
            info.update(extra.get(name, {}))
            record(name, c["measured"], c["target"], c["unit"], op=c.get("op", "<="), **info)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=None, help="features (default: the real width)")
    parser.add_argument("--rows", type=int, default=12000, help="studies of the full-size table")
    parser.add_argument("--k", type=int, default=10, help="outer folds")
    parser.add_argument("--measure-folds", type=int, default=1, help="folds timed (10: all, 0: none)")
    parser.add_argument("--compare-rows", type=int, default=1500, help="training rows of (a)")
    parser.add_argument("--test-rows", type=int, default=4000, help="held-out rows of (a)")
    parser.add_argument("--informative", type=int, default=300)
    parser.add_argument("--shift", type=float, default=0.2)
    parser.add_argument("--min-rounds", type=int, default=10, help="tune.halving_min_rounds")
    parser.add_argument("--threads", type=int, default=2, help="XGBoost threads (tune.threads)")
    parser.add_argument("--table2", action="store_true", help="also time the 4 Table 2 models per fold")
    parser.add_argument("--skip-compare", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    width = args.width or real_width()
    claims = {}
    if not args.skip_compare:
        print(f"(a) plain random search vs halving: 20 candidates x 3 folds, {args.compare_rows} x {width}")
        cmp = compare(args, width)
        gap = cmp["random"]["test_auc"] - cmp["halving"]["test_auc"]
        ratio = cmp["random"]["seconds"] / cmp["halving"]["seconds"]
        print(f"  held-out AUC gap (plain - halving) {gap:+.4f} (target <= 0.005); time ratio {ratio:.1f}x")
        claims["stage_two_auc_gap_vs_plain"] = {
            "measured": round(gap, 4),
            "target": 0.005,
            "unit": "ROC AUC, plain minus halving, held out",
            "note": f"{args.compare_rows} x {width} train, {args.test_rows} test, 20 candidates x 3 folds",
        }
        claims["stage_two_search_speedup_vs_plain"] = {
            "measured": round(ratio, 2),
            "target": None,
            "unit": "x, plain seconds / halving seconds",
            "of": "stage_two_auc_gap_vs_plain",
        }
    if args.measure_folds < 1:  # (a) only
        write_results(claims)
        return
    print(f"(b) K={args.k} cross-fitted tuning, {args.rows} x {width}, {args.measure_folds} fold(s) timed")
    full = full_size(args, width)
    label = "all folds" if args.measure_folds >= args.k else f"projected from {args.measure_folds} fold(s)"
    print(
        f"  K={args.k}: {full['minutes_k']:.1f} min wall ({label}, target <= 30); CPU minutes / "
        f"{args.threads} threads {full['cpu_minutes_k_per_core']:.1f}; peak RSS {peak_rss_mb():.0f} MiB"
    )
    claims["stage_two_k10_tuning_minutes"] = {
        "measured": round(full["minutes_k"], 2),
        "target": 30,
        "unit": f"minutes on 2 cores, {args.rows:,} x {width} features",
        "note": f"{label}: {args.k} x mean of {[round(s, 1) for s in full['fold_seconds']]} s wall, "
        f"XGBoost threads {args.threads}" + ("; with Table 2" if args.table2 else "; tune.table2 off"),
    }
    claims["stage_two_k10_cpu_minutes_per_core"] = {
        "measured": round(full["cpu_minutes_k_per_core"], 2),
        "target": 30,
        "unit": f"CPU minutes / {args.threads} threads (the wall time on idle cores)",
        "note": f"{label}; differs from the wall figure when other processes share the cores",
    }
    claims["stage_two_peak_rss_mb"] = {
        "measured": round(peak_rss_mb()),
        "target": None,
        "unit": "MiB",
        "of": "stage_two_k10_tuning_minutes",
    }
    write_results(claims)


if __name__ == "__main__":
    main()
