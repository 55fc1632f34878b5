"""dualstage.classify.features: map statistics by hand, extraction shapes, determinism, resume, weights."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image

from dualstage.classify import features as fx
from dualstage.classify.features import (
    STAT_NAMES,
    embed,
    extract_features,
    feature_names,
    load_densenet,
    map_statistics,
    pick_cache_size,
)
from helpers.stage_two import make_prediction_set

N = 5


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp")
    ids = [f"id{k}" for k in range(N)]
    pred = make_prediction_set(root, ids)
    out = root / "features" / "test"
    summary = extract_features(
        pred, out, prepared=root / "prepared", weights="none", image_size=64, batch_size=4, progress=False
    )
    return pred, out, ids, summary


# ---------------------------------------------------------------- map statistics


def test_map_statistics_by_hand():
    q = np.zeros((8, 16), np.uint8)  # 128 px: one pixel = 1024**2 / 128 = 8192 px at 1024 scale
    q[1:3, 1:4] = 255  # blob A: 6 px, p = 1
    q[6, 12], q[7, 13] = 200, 140  # blob B: 2 px, diagonal neighbours (8-connected), p .78 / .55
    q[0, 15] = 100  # p = .39: above 0.3 only
    s = map_statistics(q)
    assert list(s) == list(STAT_NAMES)
    assert s["stat_max_prob"] == 1.0
    assert s["stat_topk_mean_prob"] == 1.0  # k = max(1, round(100 * 128 / 1024**2)) = 1
    assert s["stat_area_p30"] == 9 * 8192  # q >= 77
    assert s["stat_area_p50"] == 8 * 8192  # q >= 128
    assert s["stat_area_p70"] == 7 * 8192  # q >= 179
    assert s["stat_area_p90"] == 6 * 8192  # q >= 230
    assert s["stat_n_components_p50"] == 2
    assert s["stat_largest_area_p50"] == 6 * 8192
    assert s["stat_largest_row"] == pytest.approx((1.5 + 0.5) / 8)  # rows 1, 2
    assert s["stat_largest_col"] == pytest.approx((2.0 + 0.5) / 16)  # cols 1, 2, 3
    assert s["stat_mean_prob"] == pytest.approx((6 * 255 + 200 + 140 + 100) / 128 / 255)


def test_map_statistics_topk_and_empty():
    q = np.zeros((512, 512), np.uint8)  # k = round(100 * 512**2 / 1024**2) = 25
    q[0, :20] = 255
    q[100, 100:110] = 100
    assert map_statistics(q)["stat_topk_mean_prob"] == pytest.approx((20 * 255 + 5 * 100) / 25 / 255)
    empty = map_statistics(np.zeros((96, 80), np.uint8))
    assert empty["stat_largest_row"] == empty["stat_largest_col"] == -1.0
    others = {k: v for k, v in empty.items() if k not in ("stat_largest_row", "stat_largest_col")}
    assert all(v == 0.0 for v in others.values())
    with pytest.raises(ValueError, match="uint8"):
        map_statistics(np.zeros((4, 4), np.float32))


def test_pick_cache_size(tmp_path):
    for s in (32, 64, 128):
        (tmp_path / "cache" / str(s)).mkdir(parents=True)
    assert [pick_cache_size(tmp_path, s) for s in (16, 64, 100, 224)] == [32, 64, 128, 128]
    assert pick_cache_size(tmp_path / "nothing", 64) is None


# ---------------------------------------------------------------- extraction


def test_shapes_names_and_index(run):
    pred, out, ids, summary = run
    with np.load(out / "features.npz") as z:
        X, names, got_ids = z["X"], z["feature_names"].tolist(), z["image_id"].tolist()
    assert X.shape == (N, 2048 + len(STAT_NAMES)) and X.dtype == np.float32
    assert names == feature_names() and names[0] == "img_dn0" and names[1024] == "map_dn0"
    assert got_ids == ids and np.isfinite(X).all()
    assert not np.allclose(X[:, :1024], X[:, 1024:2048])  # image half vs map half
    index = pd.read_csv(out / "index.csv", dtype={"image_id": str})
    assert index["image_id"].tolist() == ids
    assert index["fold_model"].tolist()[:2] == ["fold_0", "fold_1"]
    assert list(index.columns[:5]) == ["image_id", "split", "fold_model", "has_truth", "has_pneumothorax"]
    q = np.asarray(Image.open(pred / "maps" / f"{ids[2]}.png"))
    want = map_statistics(q)
    np.testing.assert_allclose(index.loc[2, list(STAT_NAMES)].astype(float), list(want.values()), rtol=1e-6)
    np.testing.assert_allclose(X[2, 2048:], list(want.values()), rtol=1e-6)
    assert summary["cache_size"] == 64 and summary["extracted_now"] == N and summary["pretrained"] is False
    record = json.loads((out / "features.json").read_text())
    assert record["weights"] == "none" and record["image_size"] == 64 and "untrained" in record["note"]


def test_deterministic_resume_and_refusal(run, tmp_path):
    pred, out, ids, _ = run
    X1 = np.load(out / "features.npz")["X"]
    prepared = pred.parent.parent / "prepared"
    extract_features(
        pred,
        tmp_path / "again",
        prepared=prepared,
        weights="none",
        image_size=64,
        batch_size=3,
        progress=False,
    )
    np.testing.assert_array_equal(np.load(tmp_path / "again" / "features.npz")["X"], X1)
    again = extract_features(pred, out, prepared=prepared, weights="none", image_size=64, progress=False)
    assert again["extracted_now"] == 0 and again["reused"] == N
    np.testing.assert_array_equal(np.load(out / "features.npz")["X"], X1)
    with pytest.raises(ValueError, match="another --out"):
        extract_features(pred, out, prepared=prepared, weights="none", image_size=32, progress=False)


def test_input_set_reads_image_path(tmp_path):
    ids = ["new0", "new1"]
    pred = make_prediction_set(tmp_path / "elsewhere", ids, split="input", cache_sizes=(), image_paths=True)
    summary = extract_features(pred, tmp_path / "f", weights="none", image_size=32, progress=False)
    assert summary["prepared"] is None and summary["images"] == 2
    index = pd.read_csv(pred / "index.csv").drop(columns="image_path")
    index.to_csv(pred / "index.csv", index=False)
    with pytest.raises(FileNotFoundError, match="image_path"):
        extract_features(pred, tmp_path / "g", weights="none", image_size=32, progress=False)


# ---------------------------------------------------------------- weights


def test_local_weights_file(tmp_path):
    torch.manual_seed(1)
    src = torchvision.models.densenet121(num_classes=14).eval()  # e.g. a CheXpert head
    wrapped = tmp_path / "chexpert.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, wrapped)
    trunk_only = tmp_path / "trunk.pt"
    torch.save(src.features.state_dict(), trunk_only)  # features-relative keys, no head
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        want = embed(src, x)
    for path in (wrapped, trunk_only):
        net, info = load_densenet(path)
        assert info["weights"] == str(path.resolve()) and len(info["weights_sha256"]) == 64
        with torch.no_grad():
            torch.testing.assert_close(embed(net, x), want, rtol=0, atol=0)
    bad = tmp_path / "bad.pth"
    torch.save({"encoder.conv1.weight": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="no key matches"):
        load_densenet(bad)
    with pytest.raises(FileNotFoundError):
        load_densenet(tmp_path / "missing.pth")


def test_imagenet_unavailable_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty hub cache

    def no_network(url, *args, **kwargs):  # never download from a test, even where a network exists
        raise OSError(f"network disabled in tests: {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError) as err:
        fx.load_densenet("imagenet")
    assert time.perf_counter() - t0 < 10
    assert "--weights none" in str(err.value) and "--weights /path/to/densenet121.pth" in str(err.value)
