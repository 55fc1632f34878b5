"""The installed environment: one NCCL (torch's), xgboost and torch import together."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import subprocess
import sys

import pytest
from packaging.requirements import Requirement

NCCL_LIB = "nvidia/nccl/lib/libnccl.so.2"


def _torch_nccl() -> str | None:
    """Name of the nvidia-nccl-* distribution torch requires on this platform (None: CPU build)."""
    try:
        requires = md.requires("torch") or []
    except md.PackageNotFoundError:
        return None
    for line in requires:
        req = Requirement(line)
        if req.name.startswith("nvidia-nccl") and (req.marker is None or req.marker.evaluate({"extra": ""})):
            return req.name
    return None


def _record_sha256(dist: md.Distribution, rel: str) -> tuple[str, object]:
    """(urlsafe-base64 sha256 from the RECORD file, located path) of one file of ``dist``."""
    for f in dist.files or []:
        if str(f) == rel:
            assert f.hash is not None and f.hash.mode == "sha256", f"{dist.name}: no sha256 for {rel}"
            return f.hash.value, f.locate()
    raise AssertionError(f"{dist.name} does not list {rel} in its RECORD")


def _urlsafe_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()


def test_libnccl_is_the_one_torch_installed():
    name = _torch_nccl()
    if name is None:
        pytest.skip("torch is a CPU build (no nvidia-nccl-* requirement): no NCCL to check")
    dist = md.distribution(name)
    expected, path = _record_sha256(dist, NCCL_LIB)
    owners = sorted(
        d.metadata["Name"]
        for d in md.distributions()
        if (d.metadata["Name"] or "").lower().startswith("nvidia-nccl")
        and any(str(f) == NCCL_LIB for f in d.files or [])
    )
    assert owners == [dist.metadata["Name"]], (
        f"{NCCL_LIB} is claimed by {owners}: one overwrites the other (is `xgboost` installed instead "
        "of `xgboost-cpu`? `pip uninstall -y xgboost nvidia-nccl-cu12`, then reinstall "
        f"`{name}` with --force-reinstall --no-deps)"
    )
    assert _urlsafe_sha256(path) == expected, (
        f"{path} is not the file {name} installed (RECORD sha256 differs): another wheel overwrote it; "
        f"`pip install --force-reinstall --no-deps {name}=={dist.version}`"
    )


def test_xgboost_and_torch_import_together():
    code = "import xgboost, torch; print(xgboost.__version__, torch.__version__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
