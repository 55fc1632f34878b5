"""prepare throughput: the DICOM tree (30 % JPEG Baseline) vs the PNG conversion, same phantoms.

Generates N phantom radiographs at 1024 px in both layouts, then times `prepare` (decode,
mask, cache at 256 and 512 px) on each, side by side, and prints images/s and the ratio.
Run: make bench  (or .venv/bin/python benchmarks/bench_prepare.py [N] [workers])
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from dualstage.data.phantom import generate
from dualstage.data.prepare import prepare


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 80
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rates = {}
        for layout in ("siim", "png"):
            generate(root / layout, n, size=1024, layout=layout, seed=0, workers=2, progress=False)
        for layout in ("siim", "png"):
            t0 = time.perf_counter()
            summary = prepare(
                root / layout, root / f"prep_{layout}", sizes=(256, 512), workers=workers, progress=False
            )
            seconds = time.perf_counter() - t0
            rates[layout] = summary["images"] / seconds
            print(
                f"prepare {layout:4s}: {summary['images']} images at 1024 px -> cache 256+512 "
                f"in {seconds:.1f}s "
                f"= {rates[layout]:.1f} images/s ({workers} workers, whole command incl. scan and splits)"
            )
        print(f"ratio DICOM / PNG throughput: {rates['siim'] / rates['png']:.2f}x")


if __name__ == "__main__":
    main()
