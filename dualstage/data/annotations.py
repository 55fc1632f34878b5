"""Annotation tables of the challenge: RLE CSVs and the Kaggle PNG conversion's index.

The RLE CSVs come in several shapes, all handled here: a header ``ImageId,EncodedPixels``
or ``ImageId, EncodedPixels`` (leading space) or no header at all, a UTF-8 BOM, CRLF line
ends, ``-1`` or `` -1`` for empty, several rows per image (one per lesion, may overlap),
optionally gzip-compressed.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from dualstage.core import rle
from dualstage.data.ids import check_image_id, show_id

__all__ = ["read_rle_csv", "looks_like_rle_csv", "read_png_index", "masks_from_rows"]

RLE_COLUMNS = ("image_id", "rle", "row")


def _open_text(path: Path) -> io.TextIOBase:
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    # utf-8-sig drops a BOM; newline="" lets csv handle CRLF
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn decoding errors of a CSV (text or gzip) into a ``ValueError`` naming the file."""
    try:
        yield
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the CSV as UTF-8"
        ) from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(f"{path}: truncated or corrupt gzip file ({exc})") from None
    except csv.Error as exc:
        raise ValueError(f"{path}: not a readable CSV ({exc})") from None


def _is_header(fields: list[str]) -> bool:
    return len(fields) >= 1 and fields[0].strip().lower() in ("imageid", "image_id", "image id")


def read_rle_csv(path: str | Path, rejected: list[dict] | None = None) -> pd.DataFrame:
    """Read a challenge RLE CSV into a frame with columns image_id, rle, row.

    ``row`` is the 1-based line number in the file (the header, when present, is
    line 1), for error messages. Strings are stripped; they are not decoded here
    (that needs each image's size). Raises ``ValueError`` naming the file and line for a
    row without exactly two fields, and for a file that is not UTF-8 or a truncated gzip.
    An unsafe ImageId (:func:`check_image_id`) raises too, or, when ``rejected`` is a list,
    becomes a row ``{"item", "reason"}`` there and is skipped.
    """
    path = Path(path)
    records = []
    with _reading(path), _open_text(path) as fh:
        for line_no, fields in enumerate(csv.reader(fh), start=1):
            if not fields or all(not f.strip() for f in fields):
                continue
            if line_no == 1 and _is_header(fields):
                continue
            if len(fields) != 2:
                raise ValueError(
                    f"{path}: line {line_no}: expected 2 fields (ImageId, EncodedPixels), got {len(fields)}"
                )
            try:
                image_id = check_image_id(fields[0].strip())
            except ValueError as exc:
                if rejected is None:
                    raise ValueError(f"{path}: line {line_no}: {exc}") from None
                rejected.append({"item": show_id(fields[0]), "reason": f"{path.name} line {line_no}: {exc}"})
                continue
            records.append((image_id, fields[1].strip(), line_no))
    return pd.DataFrame.from_records(records, columns=list(RLE_COLUMNS))


def looks_like_rle_csv(path: str | Path) -> bool:
    """True when the file's first non-empty line is an RLE header or an (id, rle) row."""
    try:
        with _open_text(Path(path)) as fh:
            for fields in csv.reader(fh):
                if not fields:
                    continue
                if _is_header(fields):
                    return len(fields) == 2 and "encodedpixels" in fields[1].strip().lower()
                if len(fields) != 2:
                    return False
                token = fields[1].strip().split(" ")[0] if fields[1].strip() else ""
                return token.lstrip("-").isdigit()
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, csv.Error):
        return False
    return False


def masks_from_rows(rows: pd.DataFrame, height: int, width: int, source: str = "") -> tuple:
    """Decode all RLE rows of one image; returns ``(mask bool (H, W), n_lesions)``.

    ``rows`` holds the image's rows of :func:`read_rle_csv`. A malformed string raises
    ``ValueError`` naming the file, line and ImageId.
    """
    strings = []
    for image_id, encoded, line_no in rows[list(RLE_COLUMNS)].itertuples(index=False):
        try:
            rle.parse_runs(encoded, height * width)
        except ValueError as exc:
            raise ValueError(
                f"{source}: line {line_no}: ImageId {image_id}: bad RLE for a {height}x{width} image: {exc}"
            ) from None
        strings.append(encoded)
    n_lesions = sum(1 for s in strings if s.strip() not in ("", rle.EMPTY))
    return rle.decode(strings, height, width), n_lesions


def read_png_index(path: str | Path) -> pd.DataFrame:
    """Read the Kaggle PNG conversion's ``stage_1_train_images.csv``.

    Returns columns new_filename, image_id, has_pneumo (int). Column names are matched
    after stripping spaces; a missing column raises ``ValueError`` naming the file.
    """
    path = Path(path)
    try:
        with _reading(path), _open_text(path) as fh:
            df = pd.read_csv(fh, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: empty file; expected columns new_filename, ImageId, has_pneumo") from None
    except pd.errors.ParserError as exc:
        raise ValueError(f"{path}: not a readable CSV ({' '.join(str(exc).split())})") from None
    df.columns = [c.strip() for c in df.columns]
    need = {"new_filename", "ImageId", "has_pneumo"}
    missing = need - set(df.columns)
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {sorted(missing)}; expected {sorted(need)}, got {list(df.columns)}"
        )
    out = pd.DataFrame(
        {
            "new_filename": df["new_filename"].str.strip(),
            "image_id": df["ImageId"].str.strip(),
            "has_pneumo": pd.to_numeric(df["has_pneumo"].str.strip(), errors="coerce"),
        }
    )
    bad = out["has_pneumo"].isna() | ~out["has_pneumo"].isin([0, 1])
    if bad.any():
        first = int(bad.to_numpy().nonzero()[0][0])
        raise ValueError(
            f"{path}: line {first + 2}: has_pneumo must be 0 or 1, got {df['has_pneumo'].iloc[first]!r}"
        )
    out["has_pneumo"] = out["has_pneumo"].astype(int)
    return out


TruthFn = Callable[[str, int, int], np.ndarray]  # (image id, height, width) -> bool mask


def truth_from_rle_csv(path: str | Path) -> TruthFn:
    """Truth loader ``(image_id, height, width) -> bool mask`` from an RLE CSV (prepare's masks.csv)."""
    groups = dict(tuple(read_rle_csv(path).groupby("image_id")))

    def load(image_id: str, height: int, width: int) -> np.ndarray:
        if image_id not in groups:
            raise ValueError(f"{path}: no row for image {image_id}")
        return masks_from_rows(groups[image_id], height, width, source=str(path))[0]

    return load
