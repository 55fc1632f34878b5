"""Training-step speed on CPU: fp32 vs bf16 autocast, contiguous vs channels_last.

One U-Net training step (forward, backward, Adam) per configuration, measured side by side
in one run (the machine is noisy: compare the ratios, not the absolute times).
Run: make bench  (or .venv/bin/python benchmarks/bench_train_step.py [encoder] [size] [batch])
"""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext

import torch

from dualstage.segment import losses, models


def step_seconds(
    encoder: str, size: int, batch: int, bf16: bool, channels_last: bool, repeats: int = 4
) -> float:
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = models.build_model(encoder, "none").to(memory_format=fmt).train()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    loss_fn = losses.build_loss({"name": "weighted_bce", "pos_weight": 5.0})
    x = torch.rand(batch, 3, size, size).contiguous(memory_format=fmt)
    y = (torch.rand(batch, 1, size, size) > 0.9).float()
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            logits = net(x).float()
        loss = loss_fn(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    encoder = sys.argv[1] if len(sys.argv) > 1 else "resnet18"
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 128
    batch = int(sys.argv[3]) if len(sys.argv) > 3 else 16
    print(
        f"U-Net {encoder}, {size} px, batch {batch}, {torch.get_num_threads()} threads: median step seconds"
    )
    base = None
    for bf16 in (False, True):
        for cl in (False, True):
            s = step_seconds(encoder, size, batch, bf16, cl)
            base = base or s
            print(
                f"  {'bf16' if bf16 else 'fp32'} {'channels_last' if cl else 'contiguous   '}: {s:.3f}s  "
                f"speed-up vs fp32 contiguous {base / s:.2f}x  ({batch / s:.1f} images/s)"
            )


if __name__ == "__main__":
    main()
