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
    assert info["default_path"].startswith("native")


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


def test_source_root_is_the_package_when_it_carries_csrc(tmp_path):
    """An installed copy has fused_rnn/csrc (setup.py's build_py); a source tree has csrc/
    beside the package."""
    pkg = tmp_path / "fused_rnn"
    pkg.mkdir()
    assert _build.source_root(str(pkg)) == str(tmp_path)
    (pkg / "csrc" / "kernels").mkdir(parents=True)
    (pkg / "csrc" / "kernels" / "a.cu").write_text("// a\n")
    assert _build.source_root(str(pkg)) == str(pkg)
    assert _build.sources(str(pkg)) == ["csrc/kernels/a.cu"]
    assert _build.source_root() == ROOT and _build.CSRC == os.path.join(ROOT, "csrc")


def test_csrc_files_are_what_the_hash_covers(tmp_path):
    (tmp_path / "csrc" / "emu" / "__pycache__").mkdir(parents=True)
    (tmp_path / "csrc" / "emu" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    (tmp_path / "csrc" / "b.h").write_text("b")
    (tmp_path / "csrc" / "emu" / "a.cpp").write_text("a")
    assert _build.csrc_files(str(tmp_path)) == ["csrc/b.h", "csrc/emu/a.cpp"]
    h = _build.source_hash(str(tmp_path))
    (tmp_path / "csrc" / "emu" / "__pycache__" / "x.pyc").write_bytes(b"\1")
    assert _build.source_hash(str(tmp_path)) == h  # caches are not sources
    assert "csrc/kernels/philox.cuh" in _build.csrc_files()


def _fake_cuda_torch(monkeypatch, why_no_jit="no CUDA toolkit (nvcc) found for a JIT build"):
    """torch with CUDA and a device, the prebuilt extension missing, no JIT possible."""
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    monkeypatch.setattr(_build, "_state", {"tried": False, "module": None, "how": None,
                                           "reason": None})
    monkeypatch.setattr(_build, "_try_prebuilt",
                        lambda: (None, "prebuilt fused_rnn._C not importable (No module named "
                                       "'fused_rnn._C')"))
    monkeypatch.setattr(_build, "_try_jit", lambda: (None, why_no_jit))


def test_cuda_torch_without_the_extension_warns_once_with_the_reason_and_the_fix(monkeypatch):
    import warnings

    _fake_cuda_torch(monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _build.load_extension() is None
        assert _build.load_extension() is None  # the second call: no second warning
        info = fused_rnn.backend_info()
    ours = [w for w in caught if issubclass(w.category, _build.ExtensionUnavailableWarning)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    msg = str(ours[0].message)
    assert "No module named 'fused_rnn._C'" in msg and "no CUDA toolkit (nvcc)" in msg
    assert "torch's own implementation (cuDNN" in msg and "pip install --no-build-isolation" in msg
    assert "CUDA_HOME" in msg
    assert info["cuda_available"] and not info["extension_loaded"]
    assert "no CUDA toolkit (nvcc)" in info["reason"] and info["fix"] == _build.FIX
    assert info["default_path"].startswith("native")


def test_no_warning_where_no_cuda_call_can_happen(monkeypatch):
    """A CPU-only torch, or a CUDA torch without a device: the reference path is the only
    one, nothing to warn about; backend_info() offers no fix."""
    import warnings

    _fake_cuda_torch(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", _build.ExtensionUnavailableWarning)
        assert _build.load_extension() is None
        info = fused_rnn.backend_info()
    assert info["fix"] is None and info["reason"] == "no CUDA device visible"


def test_jit_from_an_installed_copy_without_sources_says_where_it_looked(monkeypatch, tmp_path):
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "CUDA_HOME", "/usr/local/cuda")
    monkeypatch.setattr(_build, "ROOT", str(tmp_path))
    monkeypatch.setattr(_build, "CSRC", str(tmp_path / "csrc"))
    mod, why = _build._try_jit()
    assert mod is None and why == f"no extension sources under {tmp_path / 'csrc'} for a JIT build"


def test_the_extension_links_the_libstdcxx_torch_runs_with():
    """A toolchain that links libstdc++ statically by default gave the extension a private
    copy that crashed beside torch's shared one; the link line names torch's by path."""
    import torch  # noqa: F401  (loads libstdc++, as it does when setup.py builds)

    flags = _build.link_flags()
    if sys.platform != "linux":
        assert flags == []
        return
    assert len(flags) == 1, flags
    path = flags[0]
    assert os.path.basename(path).startswith("libstdc++.so") and os.path.isfile(path), path
    assert path == _build.loaded_libstdcxx()
