"""DICOM Segmentation objects of the final masks, one per study whose source is a DICOM file.

:func:`write_seg` writes one binary DICOM Segmentation (highdicom) with a single segment
"Pneumothorax" (category SCT 49755003 Morphologically Abnormal Structure, type SCT 36118008
Pneumothorax, algorithm "dualstage" of the installed version, type AUTOMATIC) on the source
frame's grid (Rows x Columns). It copies the source's patient and study, and references the
source study, series and SOP instance, so viewers (OHIF, 3D Slicer, Weasis) overlay it on the
radiograph. :func:`write_segs` does it for a final folder::

    final/<set>/<mode>/seg/<image_id>.dcm   one SEG per non-empty final mask of a DICOM source
    final/<set>/<mode>/rejected.csv         image_id, stage, reason: SEGs that could not be written

**Empty decisions write no SEG.** A SEG exists to be drawn over the image; a segment without a
pixel says nothing a viewer can show, and several readers mishandle segments without frames.
"No pneumothorax" is recorded in ``decisions.csv`` (decision 0 / mask_area_px 0) and in
``submission.csv`` ("-1"); an absent ``seg/<image_id>.dcm`` means the same.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from pydicom.valuerep import DA, TM

from dualstage.artifacts.layout import ExperimentDir
from dualstage.artifacts.prediction_set import PredictionSet
from dualstage.core.io import atomic_write, write_csv_atomic
from dualstage.core.progress import progress as progress_iter
from dualstage.data import limits
from dualstage.data.images import is_dicom_file

__all__ = ["write_seg", "write_segs", "seg_sources", "package_version", "SEG_DIR", "REJECTED_COLUMNS"]

SEG_DIR = "seg"
REJECTED_COLUMNS = ["image_id", "stage", "reason"]
_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
# Type 2 patient / study attributes highdicom copies: empty when a source (e.g. a bare
# Secondary Capture) lacks them; an empty Type 2 value is valid DICOM.
_TYPE2 = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def package_version() -> str:
    """The installed ``dualstage`` version ("unknown" when it is not installed)."""
    try:
        return importlib.metadata.version("dualstage")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _read_source(source: Path):
    """The source header (no pixels), with empty Type 2 patient / study attributes it lacks."""
    try:
        ds = pydicom.dcmread(source, stop_before_pixels=True)
    except InvalidDicomError:  # no preamble / file meta: as the readers do
        ds = pydicom.dcmread(source, stop_before_pixels=True, force=True)
    missing = [k for k in (*_UIDS, "Rows", "Columns") if not ds.get(k)]
    if missing:
        raise ValueError(f"no {', '.join(missing)}: a SEG must reference the source image")
    for keyword in _TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    _clean_dates(ds)
    return ds


def _clean_dates(ds) -> None:
    """Old ACR-NEMA separators ('14:04:38', '1993.02.18') removed from the dates and times the
    SEG copies; a value that still does not parse becomes empty (they are Type 2)."""
    for keyword, kind, seps in (
        ("StudyDate", DA, "-./"),
        ("PatientBirthDate", DA, "-./"),
        ("StudyTime", TM, ":"),
    ):
        text = str(ds.get(keyword, "") or "").strip()
        for sep in seps:
            text = text.replace(sep, "")
        try:
            kind(text)
        except ValueError:
            text = ""
        setattr(ds, keyword, text)


def _frames(ds, mask: np.ndarray, frame: int) -> np.ndarray:
    """The SEG's pixel array: (1, H, W), or (F, H, W) with the mask at ``frame`` for a multi-frame
    source in patient coordinates (highdicom matches frames by plane position).

    A source without patient coordinates (projection radiographs, Secondary Capture) loses its
    Pixel Spacing here: highdicom would copy it into a Pixel Measures item without the Slice
    Thickness such an image does not have, which its own reader (and others) refuse. The SEG then
    lies on the referenced image's pixel grid, whose spacing the viewer takes from the source.
    """
    from highdicom.spatial import get_image_coordinate_system  # heavy: loaded when a DICOM SEG is written

    n_frames = int(str(ds.get("NumberOfFrames", "") or "1").strip() or 1)
    if not 0 <= frame < n_frames:
        raise ValueError(f"frame {frame} out of range: the source has {n_frames} frame(s)")
    has_coordinates = get_image_coordinate_system(ds) is not None
    if not has_coordinates:
        for keyword in ("PixelSpacing", "SliceThickness", "SpacingBetweenSlices"):
            if keyword in ds:
                delattr(ds, keyword)
    if n_frames > 1 and has_coordinates:
        stack = np.zeros((n_frames, *mask.shape), dtype=bool)
        stack[frame] = mask
        return stack
    if frame != 0:
        raise ValueError(f"frame {frame} of a multi-frame source without patient coordinates")
    return mask[None]


def _uid(*parts: object) -> str:
    """A UID determined by ``parts`` (the same SEG content gets the same UIDs on a rerun)."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _segmentation(ds, frames: np.ndarray, version: str, series_number: int, digest: str):
    import highdicom as hd  # heavy: loaded when a DICOM SEG is written
    from highdicom.seg import (
        SegmentAlgorithmTypeValues,
        Segmentation,
        SegmentationTypeValues,
        SegmentDescription,
    )  # heavy: loaded when a DICOM SEG is written

    algorithm = hd.AlgorithmIdentificationSequence(
        name="dualstage", family=codes.cid7162.ArtificialIntelligence, version=version
    )
    segment = SegmentDescription(
        segment_number=1,
        segment_label="Pneumothorax",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,  # SCT 49755003
        segmented_property_type=codes.SCT.Pneumothorax,  # SCT 36118008
        algorithm_type=SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    key = (ds.SOPInstanceUID, version, series_number, digest)
    return Segmentation(
        source_images=[ds],
        pixel_array=frames,
        segmentation_type=SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=_uid("series", *key),
        series_number=series_number,
        sop_instance_uid=_uid("instance", *key),
        instance_number=1,
        manufacturer="dualstage",
        manufacturer_model_name="dualstage",
        software_versions=version,
        device_serial_number="none",
        content_label="PNEUMOTHORAX",
        content_description="dualstage final pneumothorax mask",
        series_description="dualstage pneumothorax SEG",
    )


def write_seg(
    source: Path,
    mask: np.ndarray,
    out: Path,
    *,
    algorithm_version: str,
    series_number: int = 900,
    frame: int = 0,
) -> Path:
    """Write the binary DICOM SEG of ``mask`` (H, W) bool over ``source`` (a DICOM image) to ``out``.

    ``mask`` must be on the source frame's grid (H, W = Rows, Columns); ``frame`` is the source
    frame it was made from (0-based; the readers use the first). An empty mask writes nothing:
    empty decisions get no SEG (see the module docstring). Written atomically. Any failure
    (unreadable source, missing UIDs, grid mismatch, highdicom refusing the source) is one
    ``ValueError`` line naming ``source``.
    """
    source, out = Path(source), Path(out)
    try:
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
        mask = mask.astype(bool)
        if not mask.any():
            raise ValueError("empty mask: empty decisions get no SEG")
        ds = _read_source(source)
        frames = int(str(ds.get("NumberOfFrames", "") or "1").strip() or 1)
        limits.check_pixels(source, int(ds.Rows), int(ds.Columns))  # the pixel limit, before any array
        limits.check_pixels(
            source, frames * int(ds.Rows), int(ds.Columns), what="its frames together declare"
        )
        if mask.shape != (int(ds.Rows), int(ds.Columns)):
            raise ValueError(f"mask is {mask.shape[0]}x{mask.shape[1]}, source frame {ds.Rows}x{ds.Columns}")
        digest = hashlib.sha256(np.packbits(mask).tobytes() + str(mask.shape).encode()).hexdigest()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # highdicom's notes on the source's own value checks
            seg = _segmentation(ds, _frames(ds, mask, frame), algorithm_version, series_number, digest)
        atomic_write(out, lambda tmp: seg.save_as(tmp))
    except limits.ImageTooLarge as exc:
        raise ValueError(
            f"{source}: cannot write DICOM SEG ({str(exc).replace(f'{source}: ', '', 1)})"
        ) from exc
    except Exception as exc:  # pydicom / highdicom raise many types for unusable sources
        text = " ".join(str(exc).split())
        reason = text if isinstance(exc, ValueError) and text else f"{type(exc).__name__}: {text}"
        raise ValueError(f"{source}: cannot write DICOM SEG ({reason})") from exc
    return out


def seg_sources(exp_dir: str | Path, pset: PredictionSet) -> dict[str, tuple[Path, int]]:
    """{image_id: (source DICOM file, frame)} of a prediction set's studies whose source is DICOM.

    The source is the set's ``index.csv`` ``image_path`` (new images), else the experiment's
    ``prepared/manifest.csv`` ``image_path``; ``frame`` is the index's ``frame`` column (else 0).
    Studies with a PNG / JPEG source, or with no known source (no index.csv), are left out.
    """
    if not pset.exists():
        return {}
    index = pset.index()
    if "image_path" not in index.columns:
        manifest = ExperimentDir(exp_dir).prepared / "manifest.csv"
        if not manifest.is_file():
            return {}
        paths = pd.read_csv(manifest, dtype={"image_id": str}, usecols=["image_id", "image_path"])
        index = index.drop(columns=["frame"], errors="ignore").merge(paths, on="image_id", how="left")
    frames = index["frame"] if "frame" in index.columns else pd.Series(0, index=index.index)
    out = {}
    for image_id, path, frame in zip(index["image_id"], index["image_path"], frames, strict=True):
        if isinstance(path, str) and path and is_dicom_file(path):
            out[str(image_id)] = (Path(path), int(frame) if pd.notna(frame) else 0)
    return out


def write_segs(
    final_dir: str | Path,
    ids: Sequence[str],
    sources: dict[str, tuple[Path, int]],
    rejected: Sequence[dict] = (),
    progress: bool = False,
) -> dict:
    """A SEG for each of ``ids`` with a DICOM source and a non-empty ``masks/<id>.png``.

    Writes ``final_dir/seg/<id>.dcm`` (a stale one of an id now empty or failing is removed) and
    ``final_dir/rejected.csv``: the given ``rejected`` rows ({image_id, stage, reason}) plus one
    row (stage "seg") per SEG that could not be written; the others go on. Returns
    {n_seg, n_seg_rejected}.
    """
    final_dir = Path(final_dir)
    version, rows, n_seg = package_version(), list(rejected), 0
    todo = [i for i in ids if i in sources]
    for image_id in progress_iter(todo, desc=f"seg {final_dir.name}", enabled=progress):
        path, frame = sources[image_id]
        out = final_dir / SEG_DIR / f"{image_id}.dcm"
        try:
            with limits.open_pillow(final_dir / "masks" / f"{image_id}.png") as im:
                mask = np.asarray(im) > 0
            if not mask.any():
                out.unlink(missing_ok=True)
                continue
            write_seg(path, mask, out, algorithm_version=version, frame=frame)
            n_seg += 1
        except ValueError as exc:
            out.unlink(missing_ok=True)
            rows.append({"image_id": image_id, "stage": "seg", "reason": str(exc)})
    write_csv_atomic(pd.DataFrame(rows, columns=REJECTED_COLUMNS), final_dir / "rejected.csv")
    return {"n_seg": n_seg, "n_seg_rejected": sum(r["stage"] == "seg" for r in rows)}
