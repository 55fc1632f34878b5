"""Find the images and annotations of a dataset folder in one of the supported layouts.

Layouts (``--layout``):

- ``siim``: image files of any depth (DICOM ``.dcm``, or ``.png``/``.jpg``), each named
  ``<ImageId>.<ext>``, plus an RLE CSV (``train-rle.csv``, ``stage_2_train.csv[.gz]`` or
  any CSV of ImageId, EncodedPixels rows). The challenge's DICOM tree
  ``dicom-images-train/<study>/<series>/<sop>.dcm`` is this layout; when a
  ``dicom-images-train`` folder exists only it is scanned (the test images have no
  annotations).
- ``png``: the common Kaggle PNG conversion: ``png_images/``, ``png_masks/`` and
  ``stage_1_train_images.csv`` (new_filename, ImageId, has_pneumo).
- ``folders``: an images folder and a masks folder with matching stems
  (``images/`` + ``masks/``, or ``<x>_images/`` + ``<x>_masks/``); mask foreground ``> 127``.

:func:`scan` turns a folder into work items (one per image) and rejections; it does not
decode pixels. Every ImageId is checked (:func:`dualstage.data.ids.check_image_id`); a bad
one is a rejection. The walk follows symlinked folders, each real folder at most once (two
links to ``.`` do not loop), and skips the ``exclude`` folders (prepare's own output).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from dualstage.data.annotations import looks_like_rle_csv, read_png_index, read_rle_csv
from dualstage.data.ids import check_image_id, show_id

__all__ = ["LAYOUTS", "Item", "detect_layout", "scan", "IMAGE_EXTS"]

LAYOUTS = ("siim", "png", "folders")
IMAGE_EXTS = (".dcm", ".dicom", ".png", ".jpg", ".jpeg")
RLE_CSV_PREFERENCE = ("stage_2_train.csv.gz", "stage_2_train.csv", "train-rle.csv")


@dataclass
class Item:
    """One image to prepare: where its pixels are and where its mask comes from."""

    image_id: str
    image_path: str
    layout: str
    rle_rows: list = field(default_factory=list)  # [(rle string, csv line)] for RLE layouts
    rle_source: str = ""
    mask_path: str = ""  # for png / folders layouts
    has_pneumo: int | None = None  # the PNG index's label, cross-checked against the mask


Exclude = tuple[str, ...]  # real paths of folders the walk must not enter


def _walk(root: Path, exclude: Exclude = ()) -> list[Path]:
    """Every file below ``root``, following symlinked folders (data trees are often linked).

    Each real folder is entered at most once, so symlink loops end; ``exclude`` folders
    (real paths) are skipped.
    """
    found: list[Path] = []
    seen = {os.path.realpath(root)}
    if seen & set(exclude):
        return found
    for folder, dirs, names in os.walk(root, followlinks=True):
        keep = []
        for name in sorted(dirs):
            real = os.path.realpath(os.path.join(folder, name))
            if real not in seen and real not in exclude:
                seen.add(real)
                keep.append(name)
        dirs[:] = keep
        found.extend(Path(folder) / n for n in sorted(names))
    return found


def _valid_stems(paths: list[Path], rejected: list[dict]) -> list[Path]:
    """The files whose stem is a usable ImageId; the others become rejections."""
    ok = []
    for path in paths:
        try:
            check_image_id(path.stem)
        except ValueError as exc:
            rejected.append({"item": str(path), "reason": f"file name is not a usable id: {exc}"})
            continue
        ok.append(path)
    return ok


def _image_files(root: Path, skip_mask_dirs: bool = True, exclude: Exclude = ()) -> list[Path]:
    files = []
    for path in _walk(root, exclude):
        if path.suffix.lower() not in IMAGE_EXTS:
            continue
        rel_parts = [p.lower() for p in path.relative_to(root).parts[:-1]]
        if skip_mask_dirs and any("mask" in p for p in rel_parts):
            continue
        files.append(path)
    return files


def _find_rle_csv(root: Path, exclude: Exclude = ()) -> Path | None:
    files = [p for p in _walk(root, exclude) if p.name.endswith((".csv", ".csv.gz"))]
    for name in RLE_CSV_PREFERENCE:
        hits = [p for p in files if p.name == name]
        if hits:
            return hits[0]
    for path in files:
        if looks_like_rle_csv(path):
            return path
    return None


def _folder_pair(root: Path, exclude: Exclude = ()) -> tuple[Path, Path] | None:
    folders = sorted({p.parent for p in _walk(root, exclude)} | {root})
    for images in folders:
        name = images.name
        if name.lower().endswith("images"):
            masks = images.with_name(
                name[: -len("images")] + ("MASKS" if name.endswith("IMAGES") else "masks")
            )
            if masks.is_dir():
                return images, masks
    return None


def _exclude(folders: list[str | Path] | None) -> Exclude:
    return tuple(os.path.realpath(f) for f in folders or ())


def detect_layout(root: str | Path, exclude: list[str | Path] | None = None) -> str:
    """Name the layout of a dataset folder (ignoring ``exclude`` folders); ``ValueError`` says
    what was looked for."""
    root, skip = Path(root), _exclude(exclude)
    if not root.exists():
        raise ValueError(f"--data {root}: no such folder")
    if not root.is_dir():
        raise ValueError(f"--data {root}: not a folder")
    if (root / "png_images").is_dir() and (root / "stage_1_train_images.csv").is_file():
        return "png"
    if _find_rle_csv(root, skip) is not None:
        return "siim"
    if _folder_pair(root, skip) is not None:
        return "folders"
    raise ValueError(
        f"--data {root}: no supported layout found. Looked for: an RLE CSV (train-rle.csv, "
        "stage_2_train.csv[.gz] or any ImageId,EncodedPixels CSV) beside DICOM/PNG/JPEG files (siim); "
        "png_images/ + png_masks/ + stage_1_train_images.csv (png); an images/ folder with a "
        "matching masks/ folder (folders)."
    )


def _dedupe(paths: list[Path], key, rejected: list[dict]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in paths:
        k = key(path)
        if k in out:
            rejected.append({"item": str(path), "reason": f"duplicate image id {k} (also {out[k]})"})
            continue
        out[k] = path
    return out


def _scan_siim(root: Path, annotations: Path | None, rejected: list[dict], skip: Exclude) -> list[Item]:
    csv_path = annotations or _find_rle_csv(root, skip)
    if csv_path is None:
        raise ValueError(f"--data {root}: siim layout needs an RLE CSV; none found (pass --annotations)")
    if not csv_path.is_file():
        raise ValueError(f"--annotations {csv_path}: not a file")
    image_root = root / "dicom-images-train" if (root / "dicom-images-train").is_dir() else root
    files = _valid_stems(_image_files(image_root, exclude=skip), rejected)
    images = _dedupe(files, lambda p: p.stem.strip(" "), rejected)
    table = read_rle_csv(csv_path, rejected=rejected)
    if table.empty:
        raise ValueError(f"{csv_path}: no usable annotation rows (expected ImageId, EncodedPixels lines)")
    rows: dict[str, list] = {}
    for image_id, encoded, line in table.itertuples(index=False):
        rows.setdefault(image_id, []).append((encoded, line))
    items = []
    for image_id, path in images.items():
        if image_id not in rows:
            rejected.append({"item": str(path), "reason": f"image without annotation in {csv_path.name}"})
            continue
        items.append(Item(image_id, str(path), "siim", rle_rows=rows[image_id], rle_source=str(csv_path)))
    for image_id in rows.keys() - images.keys():
        line = rows[image_id][0][1]
        rejected.append(
            {"item": image_id, "reason": f"annotation without image ({csv_path.name} line {line})"}
        )
    return items


def _scan_png(root: Path, rejected: list[dict]) -> list[Item]:
    index_path = root / "stage_1_train_images.csv"
    image_dir, mask_dir = root / "png_images", root / "png_masks"
    for need in (index_path, image_dir):
        if not need.exists():
            raise ValueError(
                f"--data {root}: png layout needs {need.name} (png_images/, png_masks/ and "
                "stage_1_train_images.csv with new_filename, ImageId, has_pneumo); not found"
            )
    index = read_png_index(index_path)
    on_disk = {p.name for p in image_dir.iterdir() if p.is_file()}
    listed = set(index["new_filename"])
    items: list[Item] = []
    seen: dict[str, int] = {}
    for line, (new_filename, raw_id, has_pneumo) in enumerate(index.itertuples(index=False), start=2):
        try:
            image_id = check_image_id(raw_id)
        except ValueError as exc:
            rejected.append({"item": show_id(raw_id), "reason": f"{index_path.name} line {line}: {exc}"})
            continue
        if image_id in seen:
            reason = f"{index_path.name} line {line}: duplicate ImageId (also line {seen[image_id]})"
            rejected.append({"item": image_id, "reason": reason})
            continue
        seen[image_id] = line
        if new_filename not in on_disk:
            rejected.append(
                {"item": image_id, "reason": f"annotation without image (png_images/{new_filename})"}
            )
            continue
        mask = mask_dir / new_filename
        if not mask.is_file():
            rejected.append(
                {"item": str(image_dir / new_filename), "reason": "mask file missing in png_masks/"}
            )
            continue
        items.append(
            Item(image_id, str(image_dir / new_filename), "png", mask_path=str(mask), has_pneumo=has_pneumo)
        )
    for name in sorted(on_disk - listed):
        rejected.append(
            {"item": str(image_dir / name), "reason": f"image without annotation in {index_path.name}"}
        )
    return items


def _scan_folders(root: Path, rejected: list[dict], skip: Exclude) -> list[Item]:
    pair = _folder_pair(root, skip)
    if pair is None:
        raise ValueError(
            f"--data {root}: folders layout needs images/ and masks/ folders with matching stems"
        )
    image_dir, mask_dir = pair
    files = _valid_stems(_image_files(image_dir, skip_mask_dirs=False, exclude=skip), rejected)
    images = _dedupe(files, lambda p: p.stem.strip(" "), rejected)
    masks = _dedupe(_image_files(mask_dir, skip_mask_dirs=False, exclude=skip), lambda p: p.stem, rejected)
    items = []
    for stem, path in images.items():
        if stem not in masks:
            rejected.append({"item": str(path), "reason": f"image without mask in {mask_dir.name}/"})
            continue
        items.append(Item(stem, str(path), "folders", mask_path=str(masks[stem])))
    for stem in sorted(masks.keys() - images.keys()):
        rejected.append({"item": str(masks[stem]), "reason": f"mask without image in {image_dir.name}/"})
    return items


def scan(
    root: str | Path,
    layout: str = "auto",
    annotations: str | Path | None = None,
    exclude: list[str | Path] | None = None,
) -> tuple[str, list[Item], list[dict]]:
    """List a dataset folder: ``(layout, items, rejected)``; rejected rows have item, reason.

    Folders in ``exclude`` (e.g. prepare's ``--out`` inside ``--data``) are not scanned.
    """
    root, skip = Path(root), _exclude(exclude)
    if layout == "auto":
        layout = detect_layout(root, exclude)
    elif not root.is_dir():
        raise ValueError(f"--data {root}: not a folder")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; valid: auto, {', '.join(LAYOUTS)}")
    rejected: list[dict] = []
    if layout == "siim":
        items = _scan_siim(root, Path(annotations) if annotations else None, rejected, skip)
    elif layout == "png":
        items = _scan_png(root, rejected)
    else:
        items = _scan_folders(root, rejected, skip)
    return layout, items, rejected
