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


def test_source_hash_follows_csrc_and_is_compiled_in(tmp_path, monkeypatch):
    """scripts/gpu_check.sh --prebuilt trusts a built extension only if the hash compiled
    into it (_C.source_hash) equals this tree's: any change under csrc/ must change it."""
    import shutil

    shutil.copytree(os.path.join(ROOT, "csrc"), tmp_path / "csrc")
    h0 = _build.source_hash(str(tmp_path))
    assert h0 == _build.source_hash(ROOT) and len(h0) == 16
    assert _build.source_hash(str(tmp_path)) == h0  # stable
    f = tmp_path / "csrc" / "kernels" / "common.h"
    f.write_text(f.read_text() + "\n")
    h1 = _build.source_hash(str(tmp_path))
    assert h1 != h0
    (tmp_path / "csrc" / "kernels" / "new.h").write_text("")
    assert _build.source_hash(str(tmp_path)) not in (h0, h1)
    # both compilers get it; the phase-timing macro only when asked for
    monkeypatch.delenv("FUSED_RNN_PHASE_TIMING", raising=False)
    assert f"-DFRNN_SOURCE_HASH={h0}" in _build.cxx_flags()
    assert f"-DFRNN_SOURCE_HASH={h0}" in _build.nvcc_flags(["9.0a"])
    assert "-DFRNN_PHASE_TIMING=1" not in _build.nvcc_flags(["9.0a"])
    monkeypatch.setenv("FUSED_RNN_PHASE_TIMING", "1")
    assert "-DFRNN_PHASE_TIMING=1" in _build.nvcc_flags(["9.0a"])
    assert "-DFRNN_PHASE_TIMING=1" in _build.cxx_flags()


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
