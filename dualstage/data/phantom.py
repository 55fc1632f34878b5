"""Synthetic chest-radiograph phantoms with pneumothorax masks, in the SIIM-ACR file layouts.

Each image is a cartoon PA/AP chest film (body outline, lungs with branching vessels, ribs,
clavicles, mediastinum, heart) rendered from analytic fields plus PIL-drawn lines. A
pneumothorax is an avascular, darker crescent hugging the lateral/apical chest wall of one
lung, bounded medially by a thin bright visceral pleural line; its mask is exactly that
crescent. Negatives (and some positives) carry look-alikes: skin folds, tubes and lines,
prominent rib edges.

Statistics follow the real stage-2 table: about 22 % positive; the per-image union area at
1024 px is lognormal (median 8,600 px, sigma 1.14, about 10 % under 2,000 px) clipped to
[55, 161421] and scaled by (size / 1024)^2; about 15 % of positives have two lesions
(two RLE rows). Everything is drawn from ``np.random.SeedSequence([seed, index])`` (plus
one stream per patient), so output does not depend on the number of workers.

Layouts (re-running into the same folder overwrites files with identical bytes):

- ``siim``: ``dicom-images-train/<Study>/<Series>/<SOP>.dcm`` and ``train-rle.csv``
  (``ImageId, EncodedPixels``; values written with a leading space as in the stage-1 file).
- ``png``: ``png_images/<i>_train_<0|1>_.png``, ``png_masks/`` (0/255) and
  ``stage_1_train_images.csv`` (``new_filename, ImageId, has_pneumo``).

Both also get ``phantom_index.csv`` (the table :func:`generate` returns, paths relative).
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from joblib import Parallel, delayed
from PIL import Image
from pydicom import config, dcmwrite
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
)

from dualstage.core.cli import run_cli
from dualstage.core.io import atomic_write_bytes
from dualstage.core.progress import progress as progress_iter
from dualstage.core.rle import decode, encode
from dualstage.data.phantom_cases import (
    UID_PREFIX,
    CaseSpec,
    plan_cases,
    sample_lesion_area,
    sample_presence,
)
from dualstage.data.phantom_render import render_case
from dualstage.data.phantom_site import SITES, Site, SiteLook, apply_site, get_site, site_contrast

__all__ = [
    "UID_PREFIX",
    "SITES",
    "CaseSpec",
    "dicom_bytes",
    "generate",
    "main",
    "plan_cases",
    "render_case",
    "sample_lesion_area",
    "sample_presence",
    "write_preview",
]


# ----------------------------------------------------------------------------- files
def _png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a, "L").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def dicom_bytes(spec: CaseSpec, image: np.ndarray, look: SiteLook | None = None) -> bytes:
    """A Part-10 Secondary Capture file for the uint8 image (H, W), tags like the challenge files;
    ``look`` (a phantom site): MONOCHROME1 storage, pixel spacing of the rendered square."""
    mono1 = look is not None and look.monochrome1
    square = look.square if look is not None else image.shape[0]

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = spec.image_id
    meta.TransferSyntaxUID = JPEGBaseline8Bit if spec.jpeg else ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = spec.image_id
    ds.StudyDate, ds.StudyTime = "19010101", "000000.00"
    ds.AccessionNumber = ""
    ds.Modality = "CR"
    ds.ConversionType = "WSD"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = f"view: {spec.view}"
    ds.PatientName = spec.patient_id
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = spec.sex
    # the challenge files store a bare number (e.g. '62'), which is not a valid AS value
    ds.add(DataElement(0x00101010, "AS", str(spec.age), validation_mode=config.IGNORE))
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = spec.view
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.ImageComments = "dualstage synthetic phantom (not patient data)"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if mono1 else "MONOCHROME2"
    image = 255 - image if mono1 else image  # MONOCHROME1: high values are dark
    ds.Rows, ds.Columns = image.shape
    sp = round(spec.pixel_spacing_1024 * 1024 / square, 4)
    ds.PixelSpacing = [sp, sp]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if spec.jpeg:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        buf = io.BytesIO()
        Image.fromarray(image, "L").save(buf, format="JPEG", quality=95)
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        ds.PixelData = np.ascontiguousarray(image).tobytes()
        ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def _make_one(spec: CaseSpec, out_dir: Path, size: int, layout: str, site: Site = SITES["source"]) -> dict:
    """Render and write one image (and mask) as ``site`` stores it; return its row plus its RLE rows."""
    image, masks = render_case(spec, size)
    image, masks, look = apply_site(image, masks, site, spec.seed, spec.index)
    union = np.zeros(image.shape, dtype=bool)
    for m in masks:
        union |= m
    row = {
        "image_id": spec.image_id,
        "patient_id": spec.patient_id,
        "has_pneumothorax": bool(union.any()),
        "n_lesions": int(sum(m.any() for m in masks)),
        "area_px": int(union.sum()),
        "target_area_px": round(sum(spec.lesion_areas_1024) * (size / 1024.0) ** 2, 1),
        "sex": spec.sex,
        "age": spec.age,
        "view": spec.view,
        "jpeg": spec.jpeg and layout == "siim",
        "index": spec.index,
    }
    if layout == "siim":
        rel = Path("dicom-images-train", spec.study_uid, spec.series_uid, f"{spec.image_id}.dcm")
        atomic_write_bytes(out_dir / rel, dicom_bytes(spec, image, look))
        row["path"], row["mask_path"] = rel.as_posix(), ""
    else:
        name = f"{spec.index}_train_{int(row['has_pneumothorax'])}_.png"
        atomic_write_bytes(out_dir / "png_images" / name, _png_bytes(image))
        atomic_write_bytes(out_dir / "png_masks" / name, _png_bytes(union.astype(np.uint8) * 255))
        row["path"], row["mask_path"] = f"png_images/{name}", f"png_masks/{name}"
    row["rles"] = [encode(m) for m in masks if m.any()] or ["-1"]
    return row


def generate(
    out_dir: str | os.PathLike,
    n: int,
    size: int = 1024,
    layout: str = "siim",
    seed: int = 0,
    jpeg_share: float = 0.3,
    preview: str | os.PathLike | None = None,
    workers: int = 1,
    progress: bool = True,
    lesion_contrast: float = 1.0,
    subtle_share: float = 0.0,
    site: str | None = None,
) -> pd.DataFrame:
    """Write ``n`` phantoms in the ``siim`` or ``png`` layout under ``out_dir``; return the index.

    Columns: image_id, patient_id, has_pneumothorax, n_lesions, area_px (union at ``size``),
    target_area_px, sex, age, view, jpeg, index, path and mask_path (relative to ``out_dir``).
    Existing files of the same names are overwritten with identical content; other files in
    ``out_dir`` are left alone. ``site``: a key of :data:`SITES` (a second hospital's look, see
    :mod:`dualstage.data.phantom_site`); None or ``source`` changes nothing.
    """
    if layout not in ("siim", "png"):
        raise ValueError(f"layout must be 'siim' or 'png', got {layout!r}")
    if n < 1 or not 64 <= size <= 4096:
        raise ValueError(f"need n >= 1 and 64 <= size <= 4096, got n={n}, size={size}")
    if lesion_contrast <= 0:
        raise ValueError(f"lesion_contrast must be > 0, got {lesion_contrast}")
    if not 0 <= jpeg_share <= 1:
        raise ValueError(f"jpeg_share must be in [0, 1], got {jpeg_share}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not 0 <= subtle_share <= 1:
        raise ValueError(f"subtle_share must be in [0, 1], got {subtle_share}")
    where = get_site(site)
    lesion_contrast, subtle_share = site_contrast(where, lesion_contrast, subtle_share)
    specs = plan_cases(n, seed, jpeg_share, lesion_contrast, subtle_share)
    bar = progress_iter(total=n, desc=f"phantom {layout} {size}px", unit="img", enabled=progress)
    if workers > 1:
        jobs = Parallel(n_jobs=workers, return_as="generator", batch_size=4)(
            delayed(_make_one)(s, out, size, layout, where) for s in specs
        )
    else:
        jobs = (_make_one(s, out, size, layout, where) for s in specs)
    rows = []
    for row in jobs:
        rows.append(row)
        bar.update(1)
    bar.close()

    rles = [(r["image_id"], rle) for r in rows for rle in r.pop("rles")]
    table = pd.DataFrame(rows)
    if layout == "siim":
        text = "ImageId, EncodedPixels\n" + "".join(f"{i}, {rle}\n" for i, rle in rles)
        atomic_write_bytes(out / "train-rle.csv", text.encode())
    else:
        png = pd.DataFrame(
            {
                "new_filename": table["path"].str.slice(len("png_images/")),
                "ImageId": table["image_id"],
                "has_pneumo": table["has_pneumothorax"].astype(int),
            }
        )
        atomic_write_bytes(out / "stage_1_train_images.csv", png.to_csv(index=False).encode())
    atomic_write_bytes(out / "phantom_index.csv", table.to_csv(index=False).encode())
    if preview is not None:
        write_preview(out, table, preview, layout)
    return table


# ----------------------------------------------------------------------------- preview
def _read_back(out_dir: Path, row: pd.Series, layout: str, rle_rows: dict[str, list[str]]) -> tuple:
    """Image uint8 (H, W) and union mask bool (H, W) read from the written files."""
    if layout == "siim":
        ds = pydicom.dcmread(out_dir / row["path"])
        image = ds.pixel_array
        image = 255 - image if ds.PhotometricInterpretation == "MONOCHROME1" else image
        mask = decode(rle_rows[row["image_id"]], *image.shape)
    else:
        image = np.asarray(Image.open(out_dir / row["path"]))
        mask = np.asarray(Image.open(out_dir / row["mask_path"])) > 127
    return image, mask


def write_preview(
    out_dir: str | os.PathLike,
    table: pd.DataFrame,
    path: str | os.PathLike,
    layout: str = "siim",
    k: int = 16,
    tile_px: int = 180,
) -> None:
    """Contact sheet of the first ``k`` images (read back from disk) with red mask outlines."""
    import matplotlib  # heavy: loaded when a contact sheet is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: loaded when a contact sheet is drawn

    out = Path(out_dir)
    rle_rows: dict[str, list[str]] = {}
    if layout == "siim":
        rle = pd.read_csv(out / "train-rle.csv", skipinitialspace=True, dtype=str)
        for image_id, enc in zip(rle.iloc[:, 0], rle.iloc[:, 1], strict=True):
            rle_rows.setdefault(image_id, []).append(enc)
    rows = table.head(k)
    ncol = min(4, len(rows))
    nrow = math.ceil(len(rows) / ncol)
    dpi = 100
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(ncol * tile_px / dpi, nrow * (tile_px + 16) / dpi), dpi=dpi, squeeze=False
    )
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (_, row) in zip(axes.ravel()[: len(rows)], rows.iterrows(), strict=True):
        image, mask = _read_back(out, row, layout, rle_rows)
        step = max(1, image.shape[0] // 256)
        ax.imshow(image[::step, ::step], cmap="gray", vmin=0, vmax=255, interpolation="antialiased")
        if mask.any():
            ax.contour(mask[::step, ::step].astype(np.float32), levels=[0.5], colors="red", linewidths=0.6)
        label = f"pos {int(row['area_px'])} px" if row["has_pneumothorax"] else "neg"
        ax.set_title(f"...{row['image_id'][-6:]} {label}", fontsize=6.5, pad=2)
    fig.subplots_adjust(left=0.005, right=0.995, bottom=0.005, top=0.97, wspace=0.02, hspace=0.12)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


# ----------------------------------------------------------------------------- CLI
def _generate_cmd(a: argparse.Namespace) -> int:
    table = generate(
        a.out,
        a.n,
        size=a.size,
        layout=a.layout,
        seed=a.seed,
        jpeg_share=a.jpeg_share,
        preview=a.preview,
        workers=a.workers,
        progress=not a.quiet,
        lesion_contrast=a.lesion_contrast,
        subtle_share=a.subtle_share,
        site=a.site,
    )
    pos = table["has_pneumothorax"]
    print(
        f"wrote {len(table)} images ({int(pos.sum())} positive, {table['patient_id'].nunique()} patients) "
        f"to {a.out}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m dualstage.data.phantom --out DIR [--n 600] ...``; exit status."""
    ap = argparse.ArgumentParser(prog="python -m dualstage.data.phantom", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--n", type=int, default=600, help="number of images")
    ap.add_argument("--size", type=int, default=1024, help="image side in px")
    ap.add_argument("--layout", choices=("siim", "png"), default="siim")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--jpeg-share", type=float, default=0.3, help="share of JPEG Baseline DICOMs (siim layout)"
    )
    ap.add_argument("--preview", default=None, help="write a contact sheet PNG here")
    ap.add_argument("--lesion-contrast", type=float, default=1.0, help=">1: darker pneumothoraces (demos)")
    ap.add_argument(
        "--subtle-share",
        type=float,
        default=0.0,
        help="share of positives kept at the default look (contrast 1)",
    )
    ap.add_argument(
        "--site",
        default=None,
        choices=sorted(SITES),
        help="a second hospital's look (exposure, contrast, noise, portrait size, MONOCHROME1, subtler "
        "lesions, support lines; dualstage/data/phantom_site.py); default: the source look",
    )
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.set_defaults(func=_generate_cmd)
    return run_cli(ap, argv)


if __name__ == "__main__":
    sys.exit(main())
