"""CSV quirks: BOM, CRLF, header with/without space, no header, gzip, bad rows."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from dualstage.data.annotations import looks_like_rle_csv, masks_from_rows, read_png_index, read_rle_csv


@pytest.mark.parametrize(
    "content",
    [
        "ImageId,EncodedPixels\r\na,1 2\r\nb,-1\r\n",
        "ImageId, EncodedPixels\na, 1 2\nb, -1\n",
        "\ufeffa,1 2\r\nb,-1\r\n",
    ],
)
def test_rle_csv_variants(tmp_path, content):
    path = tmp_path / "t.csv"
    path.write_bytes(content.encode("utf-8"))
    table = read_rle_csv(path)
    assert table["image_id"].tolist() == ["a", "b"]
    assert table["rle"].tolist() == ["1 2", "-1"]
    assert looks_like_rle_csv(path)


def test_gzip_and_line_numbers(tmp_path):
    path = tmp_path / "t.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("ImageId, EncodedPixels\na,1 2\na,5 1\nb,-1\n")
    table = read_rle_csv(path)
    assert table["row"].tolist() == [2, 3, 4]
    mask, n_lesions = masks_from_rows(table[table.image_id == "a"], 3, 3)
    assert n_lesions == 2 and mask.sum() == 3


def test_bad_rle_error_names_file_line_and_id(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("ImageId,EncodedPixels\nimg7,1 2 3\n")
    table = read_rle_csv(path)
    with pytest.raises(ValueError, match=r"t\.csv: line 2: ImageId img7: .*odd number"):
        masks_from_rows(table, 3, 3, source=str(path))


def test_wrong_field_count(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,1 2,extra\n")
    with pytest.raises(ValueError, match="line 1: expected 2 fields"):
        read_rle_csv(path)


def test_not_an_rle_csv(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("name,age\nbob,3\n")
    assert not looks_like_rle_csv(path)


def test_png_index(tmp_path):
    path = tmp_path / "stage_1_train_images.csv"
    path.write_text("new_filename,ImageId,has_pneumo\n0_train_0_.png,1.2.3,0\n1_train_1_.png,1.2.4,1\n")
    index = read_png_index(path)
    assert index["has_pneumo"].tolist() == [0, 1] and index["image_id"].tolist() == ["1.2.3", "1.2.4"]
    path.write_text("new_filename,ImageId\nx.png,1\n")
    with pytest.raises(ValueError, match="missing column"):
        read_png_index(path)
    path.write_text("new_filename,ImageId,has_pneumo\nx.png,1,yes\n")
    with pytest.raises(ValueError, match="line 2: has_pneumo must be 0 or 1"):
        read_png_index(path)


def test_masks_from_rows_empty_image():
    import pandas as pd

    rows = pd.DataFrame([("a", "-1", 2)], columns=["image_id", "rle", "row"])
    mask, n = masks_from_rows(rows, 4, 5)
    assert mask.shape == (4, 5) and not mask.any() and n == 0
    assert np.asarray(mask).dtype == bool


def test_non_utf8_csv_names_the_file(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("ImageId,EncodedPixels\ncaf\u00e9,-1\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin\.csv: not UTF-8 text"):
        read_rle_csv(path)
    index = tmp_path / "stage_1_train_images.csv"
    index.write_bytes("new_filename,ImageId,has_pneumo\n\xe9.png,a,0\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"stage_1_train_images\.csv: not UTF-8 text"):
        read_png_index(index)
    assert not looks_like_rle_csv(path)


def test_truncated_gzip_names_the_file(tmp_path):
    path = tmp_path / "stage_2_train.csv.gz"
    body = "ImageId,EncodedPixels\n" + "".join(f"id{i},{i} 3\n" for i in range(2000))
    path.write_bytes(gzip.compress(body.encode())[:-40])
    with pytest.raises(ValueError, match=r"stage_2_train\.csv\.gz: truncated or corrupt gzip"):
        read_rle_csv(path)
    looks_like_rle_csv(path)  # reads only the first line; must not raise


def test_unsafe_ids_raise_or_become_rejected_rows(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("ImageId,EncodedPixels\nok,-1\n../../x,-1\n/abs/x,1 2\n,-1\n")
    with pytest.raises(ValueError, match=r"t\.csv: line 3: ImageId '\.\./\.\./x'"):
        read_rle_csv(path)
    rejected: list[dict] = []
    table = read_rle_csv(path, rejected=rejected)
    assert table["image_id"].tolist() == ["ok"]
    assert [r["reason"].split(":")[0] for r in rejected] == ["t.csv line 3", "t.csv line 4", "t.csv line 5"]
    assert "absolute path" in rejected[1]["reason"] and "is empty" in rejected[2]["reason"]


def test_empty_png_index_names_the_file(tmp_path):
    path = tmp_path / "stage_1_train_images.csv"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"stage_1_train_images\.csv: empty file"):
        read_png_index(path)
