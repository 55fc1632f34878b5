"""``python -m dualstage.classify <command>``: stage two over an experiment.

features  DenseNet121 features of image + predicted map, plus map statistics, per prediction set
tune      random-search-tuned XGBoost presence classifier on the out-of-fold features; Table 2
gate      choose the gate threshold on out-of-fold data (fit), then empty the masks it rejects (apply)

Every command takes ``--exp`` (experiments/<name>.yaml or models/<name>); options come from the
experiment's ``features`` / ``tune`` / ``gate`` sections and a flag overrides one value.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from dualstage.artifacts.shard_records import parse_shard
from dualstage.classify.gate import apply_gate, fit_gate
from dualstage.commands import steps
from dualstage.commands.experiment import (
    add_experiment_argument,
    add_max_pixels_argument,
    add_progress_argument,
    add_shard_arguments,
    open_experiment,
    with_max_pixels,
)
from dualstage.config import override
from dualstage.core.cli import run_cli
from dualstage.crossfit.deploy import crossfit_apply, fold_set_names
from dualstage.crossfit.final import crossfit_final


def _features(args: argparse.Namespace) -> int:
    if args.shard is not None:
        parse_shard(args.shard)  # a bad --shard fails before anything is loaded
    exp = with_max_pixels(open_experiment(args.exp), args.max_pixels)
    exp = override(
        exp,
        "features",
        weights=args.weights,
        image_size=args.image_size,
        batch_size=args.batch_size,
        workers=args.workers,
        precision=args.precision,
    )
    sets = args.set or [p.name for p in sorted(exp.dir.predictions.glob("*")) if (p / "index.csv").is_file()]
    sets = [x for s in sets for x in _with_fold_sets(exp, s)]
    if not sets:
        raise FileNotFoundError(f"{exp.dir.predictions}: no prediction set; run `segment predict` first")
    results = {
        s: steps.features_experiment(
            exp, s, not args.no_progress, shard=args.shard, merge=args.merge, device=args.device
        )
        for s in sets
    }
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun rank 0 prints the merged summaries
    print(json.dumps(results, indent=2, default=str))
    for s, summary in results.items():
        if summary.get("rejected"):
            where = exp.dir.feature_set(s) / "rejected.csv"
            print(f"{summary['rejected']} image(s) of set {s} rejected: see {where}", file=sys.stderr)
    return 0


def _with_fold_sets(exp, name: str) -> list[str]:
    """``[name]``, or its per-fold sets ``<name>_fold_<k>`` when new images went through every fold."""
    if exp.dir.prediction_set(name).is_dir():
        return [name]
    per_fold = list(fold_set_names(exp.dir, name).values())
    return per_fold if per_fold and all(exp.dir.prediction_set(s).is_dir() for s in per_fold) else [name]


def _tune(args: argparse.Namespace) -> int:
    exp = override(
        open_experiment(args.exp),
        "tune",
        n_iter=args.n_iter,
        scoring=args.scoring,
        dice_rule=args.dice_rule,
        seed=args.seed,
        n_jobs=args.n_jobs,
        threads=args.threads,
        max_bin=args.max_bin,
        search=args.search,
    )
    if not args.force and steps.tune_done(exp):
        print(f"tune: done already ({exp.dir.crossfit} / {exp.dir.classifier}); --force re-runs it")
        return 0
    summary = steps.tune_experiment(exp, progress=not args.no_progress)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _gate_set(exp, name: str | None) -> str:
    """The set ``gate apply`` works on: ``--set``, else oof (cross-fitted) or test (holdout view);
    ValueError naming the sets that exist when it has no maps."""
    if name is None:
        name = "oof" if steps_crossfit_only(exp) else "test"
    if name != "oof" and _with_fold_sets(exp, name) == [name] and not exp.dir.prediction_set(name).is_dir():
        sets = sorted(p.name for p in exp.dir.predictions.glob("*") if (p / "index.csv").is_file())
        raise ValueError(
            f"--set {name!r}: no prediction set {exp.dir.prediction_set(name)} "
            f"(sets: {', '.join(sets) or 'none'}); a cross-fitted experiment scores every study with "
            "--set oof, new images need `segment predict --input DIR --set NAME` first"
        )
    return name


def steps_crossfit_only(exp) -> bool:
    """Cross-fitted without the holdout view's main model and classifier."""
    return exp.train.folds == "all" or not (exp.dir.classifier / "model.ubj").is_file()


def _gate(args: argparse.Namespace) -> int:
    exp = open_experiment(args.exp)
    modes = list(exp.gate.modes) if args.mode in (None, "both") else [args.mode]
    if args.action == "fit" and steps_crossfit_only(exp):
        print(
            "gate fit: cross-fitted experiment, each fold's gate threshold was chosen by `classify tune` "
            "(crossfit/fold_<k>/classifier/gate.json); nothing to fit"
        )
        return 0
    if args.action == "fit":
        result = fit_gate(exp.folder, mode=modes, threads=args.threads or exp.gate.threads)
        print(json.dumps(result, indent=2, default=str))
        return 0
    args.set = _gate_set(exp, args.set)
    if args.set != "oof" and _with_fold_sets(exp, args.set) != [args.set]:
        result = {m: crossfit_apply(exp.folder, args.set, m, progress=not args.no_progress) for m in modes}
    elif args.set == "oof":  # cross-fitted: each study with its own fold's classifier and rules
        result = crossfit_final(override(exp, "gate", modes=modes), progress=not args.no_progress)
    else:
        if args.out and len(modes) > 1:
            raise ValueError("--out with several modes: name one --mode")
        result = {
            m: apply_gate(
                exp.folder,
                pred_set=args.set,
                features_set=args.features_set,
                mode=m,
                out=args.out,
                progress=not args.no_progress,
            )
            for m in modes
        }
    print(json.dumps(result, indent=2, default=str))
    if args.action == "apply":
        for summary in result.values():
            n_bad = summary.get("n_seg_rejected", 0) + summary.get("n_no_features", 0)
            if n_bad:
                print(f"{n_bad} study(ies) rejected: see {summary['out_dir']}/rejected.csv", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dualstage.classify",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("features", help="DenseNet image + map features and map statistics")
    add_experiment_argument(p)
    p.add_argument("--set", nargs="+", default=None, help="prediction set(s) (default: every one)")
    p.add_argument("--weights", default=None, help="imagenet | none | path to a DenseNet121 state dict")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (torchrun: each rank's GPU)")
    add_shard_arguments(p, "features.npz, index.csv")
    add_max_pixels_argument(p)
    p.add_argument(
        "--precision", default=None, choices=["auto", "fp32", "bf16"], help="default features.precision"
    )
    add_progress_argument(p)
    p.set_defaults(func=_features)

    p = sub.add_parser("tune", help="XGBoost + RandomizedSearchCV on the project's folds; Table 2")
    add_experiment_argument(p)
    p.add_argument("--n-iter", type=int, default=None, help="random-search candidates")
    p.add_argument("--scoring", default=None, choices=["roc_auc", "f1", "dice"])
    p.add_argument("--dice-rule", default=None, choices=["threshold", "threshold_area"])
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--n-jobs", type=int, default=None, help="parallel candidate fits")
    p.add_argument("--threads", type=int, default=None, help="XGBoost threads per fit")
    p.add_argument("--max-bin", type=int, default=None, help="hist bins (64 cut one fit ~4x vs 256)")
    p.add_argument(
        "--search",
        default=None,
        choices=["halving", "random"],
        help="successive halving (default) or plain random search: same candidates",
    )
    p.add_argument("--force", action="store_true", help="re-run the searches even when finished")
    add_progress_argument(p)
    p.set_defaults(func=_tune)

    p = sub.add_parser("gate", help="fit the classifier gate on OOF data, or apply it to a set")
    p.add_argument("action", choices=["fit", "apply"])
    add_experiment_argument(p)
    p.add_argument(
        "--mode", default=None, help="classifier | classifier_and_area | both (default: gate.modes)"
    )
    p.add_argument(
        "--set", default=None, help="apply: prediction set (default: oof when cross-fitted, else test)"
    )
    p.add_argument("--features-set", default=None, help="apply: feature set name (default: same as --set)")
    p.add_argument("--out", default=None, help="apply: default models/<exp>/final/<set>/<mode>")
    p.add_argument("--threads", type=int, default=None)
    add_progress_argument(p)
    p.set_defaults(func=_gate)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)
