"""Gallery of test studies where the gates disagree: radiograph, true outline, each gate's outline.

Studies are chosen deterministically from the comparison's per-image frame: most gates in the
minority decision (mask vs empty) first, then the widest spread of per-image Dice, then image id.
Radiographs and true masks come from the prepared cache, predicted masks from the test probability
maps under each gate's rule (emptied where the classifier said absent). A study whose files are
missing or unreadable is skipped (the next one takes its place) and named in the caption.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from dualstage.artifacts.gates import COLORS  # noqa: E402
from dualstage.core import gating  # noqa: E402
from dualstage.data import limits  # noqa: E402
from dualstage.data.cache import (
    load_cached,  # noqa: E402
    pick_cache_size,  # noqa: E402
)
from dualstage.report.document import Figure  # noqa: E402
from dualstage.report.figures import save  # noqa: E402

__all__ = ["choose_studies", "gallery"]

DISPLAY = 256  # largest side drawn per panel (pixels)


def choose_studies(per_image: pd.DataFrame, keys: list[str], n: int) -> pd.DataFrame:
    """Up to ``n`` rows of ``per_image`` where the gates ``keys`` disagree, most disagreement first.

    Adds ``minority`` (gates in the minority mask/empty decision) and ``dice_range`` (max - min Dice).
    """
    present = np.stack([per_image[f"{k}_pred_area"].to_numpy() > 0 for k in keys], axis=1)  # (N, G)
    dice = np.stack([per_image[f"{k}_dice"].to_numpy(float) for k in keys], axis=1)
    k = present.sum(axis=1)
    frame = per_image.assign(
        minority=np.minimum(k, len(keys) - k), dice_range=dice.max(axis=1) - dice.min(axis=1)
    )
    frame = frame[(frame["minority"] > 0) | (frame["dice_range"] > 1e-9)]
    frame = frame.sort_values(
        ["minority", "dice_range", "image_id"], ascending=[False, False, True], kind="mergesort"
    )
    return frame.head(max(0, n))


def _resize(a: np.ndarray, side: int, nearest: bool) -> np.ndarray:
    if a.shape == (side, side):
        return a
    im = Image.fromarray(a.astype(np.uint8) * 255 if a.dtype == bool else a)
    out = np.asarray(im.resize((side, side), Image.NEAREST if nearest else Image.BILINEAR))
    return out > 127 if a.dtype == bool else out


def _outline(ax, mask: np.ndarray, color: str, lw: float = 1.3) -> None:
    if mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors=[color], linewidths=lw)


def _load_study(prepared: Path, size: int, maps: Path, image_id: str, side: int):
    """(radiograph (side, side) uint8, truth (side, side) bool, map q (H, W) uint8) of one study."""
    img, truth = load_cached(prepared, size, image_id)
    with limits.open_pillow(maps / f"{image_id}.png") as im:  # a map is on its image's grid: the limit
        q = np.asarray(im)
    return _resize(img, side, False), _resize(truth, side, True), q


def _readable(chosen: pd.DataFrame, prepared: Path, size: int, maps: Path, side: int, n: int):
    """([(row, study)] of the first ``n`` chosen studies whose files load, [skipped study notes])."""
    loaded, skipped = [], []
    for row in chosen.to_dict("records"):
        if len(loaded) == n:
            break
        image_id = str(row["image_id"])
        try:
            loaded.append((row, _load_study(prepared, size, maps, image_id, side)))
        except Exception as exc:  # noqa: BLE001 - a missing or corrupt file skips this study only
            reason = " ".join(str(exc).split())[:200]
            skipped.append(f"...{image_id[-8:]} ({type(exc).__name__}: {reason})")
    return loaded, skipped


def gallery(exp: Path, cmp: dict, out: Path, n: int = 8) -> Figure:
    """Draw ``gallery.png``: one row per chosen study, columns truth + each gate."""
    key = "gallery"
    caption = "Studies where the gates disagree"
    gates = [(k, g) for k, g in cmp["gates"].items() if g.get("params") is not None]
    if n <= 0:
        return Figure(key, caption, None, "not drawn: --gallery 0")
    if len(gates) < 2:
        return Figure(key, caption, None, "not drawn: fewer than two gates to compare")
    size = pick_cache_size(exp / "prepared", DISPLAY, at_most=True)
    pred_set = cmp.get("pred_set", "test")
    maps = exp / "predictions" / pred_set / "maps"
    if size is None or not maps.is_dir():
        missing = "prepared/cache" if size is None else f"predictions/{pred_set}/maps"
        return Figure(key, caption, None, f"not run: {missing} missing")
    keys = [k for k, _ in gates]
    chosen = choose_studies(cmp["per_image"], keys, len(cmp["per_image"]))
    if chosen.empty:
        return Figure(key, caption, None, "not drawn: the gates agree on every test study")
    side = min(size, DISPLAY)
    loaded, skipped = _readable(chosen, exp / "prepared", size, maps, side, n)
    if not loaded:
        return Figure(key, caption, None, f"not drawn: no readable study ({'; '.join(skipped[:3])})")
    fig, axes = plt.subplots(
        len(loaded), len(gates) + 1, figsize=(1.9 * (len(gates) + 1), 2.15 * len(loaded)), squeeze=False
    )
    lines = []
    for r, (row, (img, truth, q)) in enumerate(loaded):
        image_id = str(row["image_id"])
        label = f"positive ({int(row['true_area'])} px)" if row["true_area"] > 0 else "negative"
        ax = axes[r, 0]
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        _outline(ax, truth, "#00d000")
        ax.set_title(f"{r + 1}. truth: {label}", fontsize=8)
        ax.set_ylabel(f"...{image_id[-8:]}", fontsize=8)
        kept, emptied = [], []
        for c, (k, g) in enumerate(gates, start=1):
            keep = int(row.get(f"{k}_decision", 1))
            rule = g["params"]["per_fold"][int(row["fold"])] if "per_fold" in g["params"] else g["params"]
            mask = gating.apply_rule(q, rule) if keep else np.zeros(q.shape, bool)
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=255)
            _outline(ax, truth, "#00d000")
            _outline(ax, _resize(mask, side, True), COLORS.get(k, "#ff0000"))
            decision = "mask" if row[f"{k}_pred_area"] > 0 else "empty"
            (kept if decision == "mask" else emptied).append(g["name"])
            top = f"{g['name']}\n" if r == 0 else ""
            ax.set_title(
                f"{top}{decision}, Dice {row[f'{k}_dice']:.2f}", fontsize=8, color=COLORS.get(k, "k")
            )
        lines.append(
            f"{r + 1}. ...{image_id[-8:]}, {label}: mask = {', '.join(kept) or 'none'}; "
            f"empty = {', '.join(emptied) or 'none'}"
        )
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    if skipped:
        lines.append(f"Skipped (missing or unreadable files): {'; '.join(skipped)}")
    text = (
        f"{caption}: {len(loaded)} of {len(cmp['per_image'])}, most disagreement first. Green: true outline; "
        "each column one gate's final mask outline with its decision and per-image Dice.\n" + "\n".join(lines)
    )
    return Figure(key, text, save(fig, out / f"{key}.png"))
