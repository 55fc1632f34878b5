"""How often ``dualstage predict`` says "unlike the training data": real radiographs vs fresh phantoms.

Claims (benchmarks/results.json), on the demo's experiment:

- ``unlike_training_real_share``: share of the real challenge files in ``../shared/data/siim``
  (10 sample JPEGs, the DICOM and its MONOCHROME1 copy) that get the warning; target >= 1.0.
- ``unlike_training_phantom_count``: warnings among 100 fresh phantoms of the demo's kind (the
  demo YAML's size, layout, lesion contrast and subtle share, another seed: studies the training
  profile never saw); target <= 3.

Both go through the command itself (:func:`dualstage.commands.new_images.predict_new`). Needs the demo's
models (``make demo`` first). Run: .venv/bin/python benchmarks/bench_unlike_training.py
[n_phantoms] [seed] [experiment folder] [siim folder]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pandas as pd
from _results import machine, record

from dualstage.artifacts.layout import ExperimentDir
from dualstage.commands.new_images import predict_new
from dualstage.commands.predictor import Predictor
from dualstage.data.phantom import generate

ROOT = Path(__file__).resolve().parents[1]


def _flagged(out: Path) -> tuple[int, int]:
    table = pd.read_csv(out / "decisions.csv")
    return int(table["unlike_training"].sum()), len(table)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    exp = Path(sys.argv[3]) if len(sys.argv) > 3 else ROOT / "models" / "demo"
    siim = Path(sys.argv[4]) if len(sys.argv) > 4 else ROOT.parent / "shared" / "data" / "siim"
    if not (exp / "crossfit").is_dir():
        print(f"skipped: {exp} holds no trained demo experiment; run `make demo` first")
        return
    data = ExperimentDir(exp).read_config().get("data", {})
    predictor = Predictor.from_experiment(exp, device="cpu")
    info = {"experiment": exp.name, "threshold": predictor.profile.threshold, **machine()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if (siim / "sample_images").is_dir():
            predict_new([siim / "sample_images", siim / "dicom"], exp, root / "real", predictor=predictor)
            k, total = _flagged(root / "real")
            print(f"real challenge files: {k} of {total} flagged")
            record(
                "unlike_training_real_share", k / total, 1.0, "share flagged", flagged=k, files=total, **info
            )
        else:
            print(f"{siim}: real challenge files not found; the real share is not measured")
        options = {
            k: data[f"phantom_{k}"] for k in ("lesion_contrast", "subtle_share") if f"phantom_{k}" in data
        }
        generate(
            root / "phantoms",
            n,
            size=int(data.get("phantom_size", 512)),
            layout=data.get("phantom_layout", "siim"),
            seed=seed,
            workers=2,
            progress=False,
            **options,
        )
        predict_new(root / "phantoms", exp, root / "fresh", predictor=predictor)
        k, total = _flagged(root / "fresh")
    print(f"fresh phantoms (seed {seed}): {k} of {total} flagged")
    record(
        "unlike_training_phantom_count", k, 3, "phantoms flagged", op="<=", phantoms=total, seed=seed, **info
    )


if __name__ == "__main__":
    main()
