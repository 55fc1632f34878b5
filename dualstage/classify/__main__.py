"""``python -m dualstage.classify <command>``: stage two over an experiment folder.

features  DenseNet121 features of image + predicted map, plus map statistics, per prediction set
tune      random-search-tuned XGBoost presence classifier on the out-of-fold features; Table 2
gate      choose the gate threshold on out-of-fold data (fit), then empty the masks it rejects (apply)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dualstage.cli import run_cli


def _features(args: argparse.Namespace) -> int:
    from dualstage.classify.features import extract_features

    pred = Path(args.pred)
    single = (pred / "index.csv").exists()
    sets = [pred] if single else [p for p in sorted(pred.iterdir()) if (p / "index.csv").exists()]
    if not sets:
        raise FileNotFoundError(f"--pred {pred}: no prediction set (a folder with index.csv) found")
    exp_dir = pred.parent.parent if single else pred.parent  # models/<exp>/predictions[/<set>]
    if not args.out and (pred.parent if single else pred).name != "predictions":
        raise ValueError(f"--pred {pred} is not inside models/<exp>/predictions: pass --out for the features")
    if single and args.out:
        targets = {sets[0]: Path(args.out)}
    else:
        root = Path(args.out) if args.out else exp_dir / "features"
        targets = {s: root / s.name for s in sets}
    results = {}
    for set_dir, out in targets.items():
        results[set_dir.name] = extract_features(
            set_dir,
            out,
            prepared=args.prepared,
            weights=args.weights,
            image_size=args.image_size,
            batch_size=args.batch_size,
            workers=args.workers,
            device=args.device,
        )
    print(json.dumps(results, indent=2, default=str))
    return 0


def _tune(args: argparse.Namespace) -> int:
    from dualstage.classify.tune import tune

    summary = tune(
        args.exp,
        out_dir=args.out,
        n_iter=args.n_iter,
        scoring=args.scoring,
        seed=args.seed,
        n_jobs=args.n_jobs,
        max_bin=args.max_bin,
        device=args.device,
        dice_rule=args.dice_rule,
        threads=args.threads,
    )
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _gate(args: argparse.Namespace) -> int:
    from dualstage.classify.gate import apply_gate, fit_gate

    if args.action == "fit":
        result = fit_gate(args.exp, mode=args.mode, threads=args.threads)
    else:
        result = apply_gate(
            args.exp, pred_set=args.set, features_set=args.features_set, mode=args.mode, out=args.out
        )
    print(json.dumps(result, indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dualstage.classify",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("features", help="DenseNet image + map features and map statistics")
    p.add_argument("--pred", required=True, help="models/<exp>/predictions (every set) or one set folder")
    p.add_argument(
        "--out", default=None, help="default: models/<exp>/features/<set> (with one set: that folder)"
    )
    p.add_argument("--prepared", default=None, help="prepared folder (default: models/<exp>/prepared)")
    p.add_argument("--weights", default="imagenet", help="imagenet | none | path to a DenseNet121 state dict")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_features)

    p = sub.add_parser("tune", help="XGBoost + RandomizedSearchCV on the project's folds; Table 2")
    p.add_argument("--exp", required=True, help="models/<exp>")
    p.add_argument("--out", default=None, help="default: models/<exp>/classifier")
    p.add_argument("--n-iter", type=int, default=20, help="random-search candidates")
    p.add_argument("--scoring", default="roc_auc", choices=["roc_auc", "f1", "dice"])
    p.add_argument(
        "--dice-rule",
        default="threshold",
        choices=["threshold", "threshold_area"],
        help="pixel rule behind --scoring dice",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-jobs", type=int, default=1, help="parallel candidate fits")
    p.add_argument("--threads", type=int, default=None, help="XGBoost threads per fit")
    p.add_argument("--max-bin", type=int, default=64, help="hist bins (64 cut one fit ~4x vs 256)")
    p.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda")
    p.set_defaults(func=_tune)

    p = sub.add_parser("gate", help="fit the classifier gate on OOF data, or apply it to a set")
    p.add_argument("action", choices=["fit", "apply"])
    p.add_argument("--exp", required=True, help="models/<exp>")
    p.add_argument("--mode", default="classifier", help="classifier | classifier_and_area (fit also: both)")
    p.add_argument("--set", default="test", help="apply: prediction set (test, or a new-image set)")
    p.add_argument("--features-set", default=None, help="apply: feature set name (default: same as --set)")
    p.add_argument("--out", default=None, help="apply: default models/<exp>/final/<set>")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=_gate)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
