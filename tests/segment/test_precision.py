"""Inference precision (auto | fp32 | bf16), BatchNorm folding, and bf16 predict close to fp32."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from _setup import phantom_experiment, save_model
from torch import nn

from dualstage.artifacts.prediction_set import PredictionSet
from dualstage.config import ConfigError, PredictConfig, from_dict
from dualstage.runtime import precision
from dualstage.runtime.precision import inference_dtype, precision_name
from dualstage.segment import models
from dualstage.segment.inference import fold_batchnorm
from dualstage.segment.predict import predict

CPU = torch.device("cpu")


def test_inference_dtype_on_cpu(monkeypatch):
    assert inference_dtype("fp32", CPU) is None
    assert inference_dtype("bf16", CPU) is torch.bfloat16
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: True)
    monkeypatch.setattr(precision, "AUTO_CPU_BF16", True)
    assert inference_dtype("auto", CPU) is torch.bfloat16
    monkeypatch.setattr(precision, "AUTO_CPU_BF16", False)  # not measured faster: fp32
    assert inference_dtype("auto", CPU) is None
    monkeypatch.setattr(precision, "AUTO_CPU_BF16", True)
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: False)  # no native bf16: fp32
    assert inference_dtype("auto", CPU) is None
    with pytest.raises(ValueError, match="precision 'fp16'"):
        inference_dtype("fp16", CPU)
    assert [precision_name(d) for d in (None, torch.bfloat16, torch.float16)] == ["fp32", "bf16", "fp16"]


def test_precision_config_key():
    assert PredictConfig().precision == "auto"
    assert from_dict(PredictConfig, {"precision": "bf16"}, "predict").precision == "bf16"
    with pytest.raises(ConfigError, match="predict.precision"):
        from_dict(PredictConfig, {"precision": "int8"}, "predict")


def _random_bn(net: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


@torch.no_grad()
def test_fold_batchnorm_keeps_the_output():
    net = _random_bn(models.build_model("resnet18", "none", decoder_channels=[32, 16, 8, 8, 8]))
    folded = copy.deepcopy(net)
    assert fold_batchnorm(folded)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-4)


class _ReluBetween(nn.Module):  # conv1 / bn1 names, but a ReLU between them: must not be folded
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn1(torch.relu(self.conv1(x)))


@torch.no_grad()
def test_fold_batchnorm_undoes_a_wrong_fold():
    net = _random_bn(_ReluBetween())
    x = torch.rand(1, 3, 64, 64)
    want = net(x)
    assert not fold_batchnorm(net)
    assert isinstance(net.bn1, nn.BatchNorm2d)
    torch.testing.assert_close(net(x), want)


def test_predict_bf16_maps_close_to_fp32(tmp_path):
    exp = phantom_experiment(tmp_path, 6, 96, 64, "resnet18", decoder_channels=[32, 16, 8, 8, 8])
    save_model(exp, bias=None)
    sets = {}
    for p in ("fp32", "bf16"):
        summary = predict(
            exp.folder, tmp_path / p, split="all", workers=0, device="cpu", progress=False, precision=p
        )
        assert summary["precision"] == p and summary["channels_last"] is True
        assert json.loads((tmp_path / p / "predict.json").read_text())["precision"] == p
        sets[p] = PredictionSet(tmp_path / p)
    ids = sets["fp32"].index()["image_id"]
    fp32, bf16 = (np.stack([sets[p].read_map(i).astype(int) for i in ids]) for p in ("fp32", "bf16"))
    diff = np.abs(fp32 - bf16)
    assert diff.mean() < 1.0 and np.quantile(diff, 0.99) <= 4, (diff.mean(), diff.max())
