"""Stage-one speed on phantoms at 256 px on this machine: seconds per training epoch and
predict images/s, for the demo encoder and the papers' ResNet34, fp32 channels_last.

Run: make bench  (or .venv/bin/python benchmarks/bench_stage_one.py [n_images])
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from dualstage.config import load_experiment
from dualstage.data.phantom import generate
from dualstage.data.prepare import prepare
from dualstage.segment.predict import predict
from dualstage.segment.train import train


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 120
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root / "data", n, size=512, layout="siim", seed=0, workers=2, progress=False)
        for encoder, decoder in (("resnet18", [128, 64, 32, 16, 8]), ("resnet34", None)):
            name = f"bench_{encoder}"
            cfg = {
                "name": name,
                "output_root": str(root / "models"),
                "data": {"source": str(root / "data")},
                "model": {"encoder": encoder, "weights": "none", "decoder_channels": decoder},
                "train": {
                    "batch_size": {256: 8},
                    "workers": 0,
                    "amp": "off",
                    "channels_last": True,
                    "phases": [{"resolution": 256, "unfreeze": "all", "loss": "soft_dice", "epochs": 1}],
                },
            }
            (root / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
            exp = load_experiment(root / f"{name}.yaml")
            prepare(root / "data", exp.folder / "prepared", sizes=(256,), n_folds=3, progress=False)
            t0 = time.perf_counter()
            train(exp, progress=False)
            log = json.loads((exp.folder / "segmenter" / "main" / "done.json").read_text())
            epoch = pd.read_csv(exp.folder / "segmenter" / "main" / "log.csv").iloc[0]
            n_train = int((pd.read_csv(exp.folder / "prepared" / "splits.csv")["split"] == "train").sum())
            t1 = time.perf_counter()
            pred = predict(
                exp.folder, exp.folder / "predictions" / "all", split="all", workers=0, progress=False
            )
            print(
                f"{encoder}: epoch of {n_train} train images at 256 px: "
                f"{epoch['seconds']:.1f}s incl. validation "
                f"({n_train / epoch['seconds']:.1f} images/s); train command {t1 - t0:.1f}s; predict "
                f"{pred['images']} images (maps back to 512 px): {pred['images_per_second']:.1f} images/s; "
                f"{log['world']} process"
            )


if __name__ == "__main__":
    main()
