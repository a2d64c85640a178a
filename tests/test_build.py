"""Build configuration and the never-fail import of the extension."""

import os
import subprocess
import sys

import torch

import fused_rnn
from fused_rnn import _build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sources_cover_kernels_and_binding():
    srcs = _build.sources()
    assert all(s.startswith("csrc/") for s in srcs)
    assert all(os.path.exists(os.path.join(ROOT, s)) for s in srcs)
    assert any(s.startswith("csrc/kernels/") and s.endswith(".cu") for s in srcs)


def test_arch_list_and_gencode(monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    assert _build.arch_list() == ["8.0", "9.0a"]
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0a")
    assert _build.arch_list() == ["9.0a"]
    assert _build.gencode_flags(["8.0", "9.0a"]) == [
        "-gencode=arch=compute_80,code=sm_80",
        "-gencode=arch=compute_90a,code=sm_90a",
    ]
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0 9.0a+PTX")
    assert _build.gencode_flags(_build.arch_list())[-1] == "-gencode=arch=compute_90a,code=sm_90a"


def test_no_extension_on_a_cpu_build_and_a_reason():
    if torch.version.cuda is not None:
        return
    assert _build.load_extension() is None
    status = _build.extension_status()
    assert status["tried"] and not status["loaded"] and status["reason"]
    info = fused_rnn.backend_info()
    assert info["default_path"].startswith("reference")


def test_import_is_cheap_and_never_builds():
    """Importing fused_rnn loads neither Dynamo nor the extension."""
    code = ("import sys, fused_rnn; "
            "assert 'torch._dynamo' not in sys.modules, 'dynamo imported'; "
            "assert not fused_rnn._build.extension_status()['tried']")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_setup_without_cuda_installs_pure_python_with_a_notice():
    out = subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    assert out.strip().splitlines()[-1] == "fused_rnn"
    if torch.version.cuda is None:
        assert "installing the pure-Python package" in out
    env = dict(os.environ, FUSED_RNN_SKIP_CUDA_BUILD="1")
    out = subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, check=True,
                         capture_output=True, text=True, env=env).stdout
    assert "FUSED_RNN_SKIP_CUDA_BUILD=1" in out
