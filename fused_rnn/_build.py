"""Loading the CUDA extension ``fused_rnn._C``.

Order of attempts, the first time a CUDA path needs it:

1. the prebuilt module ``fused_rnn._C`` (``pip install --no-build-isolation .``
   builds it when torch has CUDA and nvcc is found);
2. a JIT build of the same sources with ``torch.utils.cpp_extension.load``
   (cached under TORCH_EXTENSIONS_DIR), announced on stderr;
3. nothing: the reason is kept and reported by ``fused_rnn.backend_info()``,
   and every CUDA call runs torch's own implementation (cuDNN, the ``native``
   path). Import never fails because of the extension. Where torch has CUDA and
   a device is visible, this is warned about once
   (:class:`ExtensionUnavailableWarning`), with the reason and the fix: a CUDA
   call never loses the fused kernel silently.

The sources: in a source tree (and an editable install) ``csrc/`` lies beside
the package; an installed wheel or sdist carries the same files inside the
package, as ``fused_rnn/csrc`` (setup.py's ``build_py`` copies them there), so
an installed copy can JIT-build the extension from its own sources.

This file is also read by setup.py (by path, without importing the package),
so the source list, the file list and the compiler flags live in one place.
"""

from __future__ import annotations

import glob
import hashlib
import importlib
import os
import sys
import threading
import warnings

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def source_root(package_dir: str = PACKAGE_DIR) -> str:
    """The folder that holds ``csrc/``: the package itself in an installed copy
    (``fused_rnn/csrc``), else the source tree the package lies in."""
    if os.path.isdir(os.path.join(package_dir, "csrc")):
        return package_dir
    return os.path.dirname(package_dir)


ROOT = source_root()
CSRC = os.path.join(ROOT, "csrc")
DEFAULT_ARCHS = "8.0;9.0a"
FIX = ("install with `pip install --no-build-isolation .` (or `-e .`) into an environment whose "
       "torch has CUDA, with nvcc on the PATH or CUDA_HOME set; check with "
       "`python -c \"import fused_rnn; print(fused_rnn.backend_info())\"`")


class ExtensionUnavailableWarning(UserWarning):
    """torch has CUDA, but fused_rnn's CUDA extension could not be loaded or built:
    CUDA calls run torch's own implementation (cuDNN), without the fused kernel."""


def sources(root: str = ROOT) -> list[str]:
    """Every translation unit of the extension, relative to `root`."""
    found = []
    for pattern in ("csrc/torch/*.cpp", "csrc/torch/*.cu", "csrc/kernels/*.cu"):
        found += sorted(glob.glob(os.path.join(root, pattern)))
    return [os.path.relpath(p, root) for p in found]


def arch_list() -> list[str]:
    """Target archs from TORCH_CUDA_ARCH_LIST (e.g. "8.0;9.0a"), default sm_80 + sm_90a."""
    raw = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip() or DEFAULT_ARCHS
    return [a for a in raw.replace(",", ";").replace(" ", ";").split(";") if a]


def gencode_flags(archs: list[str]) -> list[str]:
    flags = []
    for a in archs:
        a = a.replace("+PTX", "")
        num = a.replace(".", "")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
    return flags


def csrc_files(root: str = ROOT) -> list[str]:
    """Every file under ``root/csrc`` (relative to ``root``, "/"-separated, sorted), caches
    left out: what an installed copy carries (setup.py's ``build_py``) and what
    :func:`source_hash` hashes."""
    base = os.path.join(root, "csrc")
    found = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        found += [os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/")
                  for f in filenames if not f.endswith((".pyc", ".pyo"))]
    return sorted(found)


def source_hash(root: str = ROOT) -> str:
    """SHA-256 (first 16 hex digits) of every file under csrc/ (paths and contents, in
    sorted order). Compiled into the extension (``_C.source_hash``), so that a prebuilt
    extension can be checked against the sources it claims to be built from."""
    h = hashlib.sha256()
    for rel in csrc_files(root):
        h.update(rel[len("csrc/"):].encode() + b"\0")
        with open(os.path.join(root, rel), "rb") as f:
            h.update(f.read())
        h.update(b"\0")
    return h.hexdigest()[:16]


def phase_timing() -> bool:
    """FUSED_RNN_PHASE_TIMING=1: build the kernels with per-phase clock64() recording
    (benchmarks/floors.py --phases; scripts/gpu_check.sh builds this way)."""
    return os.environ.get("FUSED_RNN_PHASE_TIMING", "0") == "1"


def define_flags(root: str = ROOT) -> list[str]:
    """Preprocessor definitions shared by the C++ and CUDA compilations."""
    flags = [f"-DFRNN_SOURCE_HASH={source_hash(root)}"]
    if phase_timing():
        flags.append("-DFRNN_PHASE_TIMING=1")
    return flags


# No -std flag: torch.utils.cpp_extension adds the standard its headers need
# (C++20 since torch 2.10); the code compiles as C++17 and C++20.
def cxx_flags() -> list[str]:
    return ["-O3"] + define_flags()


def loaded_libstdcxx() -> str | None:
    """The path of the libstdc++ shared library this process has loaded (torch loads it),
    read from /proc/self/maps; None where there is none (not Linux, or nothing loaded)."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                fields = line.split()  # address perms offset dev inode [path]
                if len(fields) >= 6 and os.path.basename(fields[5]).startswith("libstdc++.so"):
                    return fields[5]
    except OSError:
        pass
    return None


def link_flags() -> list[str]:
    """The extension links the libstdc++ that torch itself runs with, by path.

    Some toolchains' g++ links libstdc++ statically by default (seen on a machine whose
    compiler was /opt/gcc/bin/g++: the extension carried its own copy). Loaded beside the
    shared libstdc++ that torch uses, with torch's -Bsymbolic-functions, that private copy
    mixed its functions with the shared library's data: formatting an integer into an error
    message (TORCH_CHECK with a shape) crashed with a segmentation fault. Named as a file
    before the driver's own -lstdc++, the shared library resolves every libstdc++ symbol, so
    nothing is taken from a static archive; with a usual toolchain it is the library the
    driver would have linked anyway."""
    path = loaded_libstdcxx()
    return [path] if path else []


def nvcc_flags(archs: list[str] | None = None) -> list[str]:
    archs = arch_list() if archs is None else archs
    return [
        "-O3",
        *define_flags(),
        "--use_fast_math",
        "--expt-relaxed-constexpr",
        "-lineinfo",
        "-U__CUDA_NO_HALF_OPERATORS__",
        "-U__CUDA_NO_HALF_CONVERSIONS__",
        "-U__CUDA_NO_BFLOAT16_OPERATORS__",
        "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    ] + gencode_flags(archs) + ptxas_report_flags()


def ptxas_report_flags() -> list[str]:
    """FUSED_RNN_PTXAS_VERBOSE=1: print registers / spills / smem per kernel (scripts/gpu_check.sh)."""
    return ["--ptxas-options=-v"] if os.environ.get("FUSED_RNN_PTXAS_VERBOSE", "0") == "1" else []


def include_dirs(root: str = ROOT) -> list[str]:
    return [os.path.join(root, "csrc")]


_lock = threading.Lock()
_state: dict = {"tried": False, "module": None, "how": None, "reason": None}


def _try_prebuilt():
    try:
        return importlib.import_module("fused_rnn._C"), None
    except ImportError as e:  # not built, or built against another torch
        return None, f"prebuilt fused_rnn._C not importable ({e})"


def _try_jit():
    import torch
    from torch.utils import cpp_extension

    if os.environ.get("FUSED_RNN_NO_JIT", "0") == "1":
        return None, "JIT build disabled by FUSED_RNN_NO_JIT=1"
    if cpp_extension.CUDA_HOME is None:
        return None, "no CUDA toolkit (nvcc) found for a JIT build"
    srcs = [os.path.join(ROOT, s) for s in sources(ROOT)]
    if not srcs:
        return None, f"no extension sources under {CSRC} for a JIT build"
    major, minor = torch.cuda.get_device_capability()
    suffix = "a" if major == 9 else ""
    archs = [f"{major}.{minor}{suffix}"]
    print(
        f"fused_rnn: building the CUDA extension for sm_{major}{minor}{suffix} "
        "(first use only; cached by torch.utils.cpp_extension)...",
        file=sys.stderr,
    )
    try:
        mod = cpp_extension.load(
            name="fused_rnn_C",
            sources=srcs,
            extra_include_paths=include_dirs(ROOT),
            extra_cflags=cxx_flags(),
            extra_cuda_cflags=nvcc_flags(archs),
            extra_ldflags=link_flags(),
            verbose=os.environ.get("FUSED_RNN_VERBOSE_BUILD", "0") == "1",
        )
        return mod, None
    except Exception as e:  # compiler error, missing ninja, ...
        return None, f"JIT build failed: {type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"


def load_extension():
    """The extension module, or None (see `extension_status()` for why)."""
    with _lock:
        if _state["tried"]:
            return _state["module"]
        _state["tried"] = True
        import torch

        mod, why = _try_prebuilt()
        if mod is not None:
            _state.update(module=mod, how="prebuilt")
            return mod
        reasons = [why]
        if torch.version.cuda is None:
            reasons.append("torch is a CPU-only build")
        elif not torch.cuda.is_available():
            reasons.append("no CUDA device visible")
        else:
            mod, why = _try_jit()
            if mod is not None:
                _state.update(module=mod, how="jit")
                return mod
            reasons.append(why)
        _state["reason"] = "; ".join(r for r in reasons if r)
        if torch.version.cuda is not None and torch.cuda.is_available():
            warnings.warn(unavailable_message(_state["reason"]), ExtensionUnavailableWarning,
                          stacklevel=2)
        return None


def unavailable_message(reason: str) -> str:
    """The once-per-process warning when torch has CUDA but the extension is missing."""
    return (f"fused_rnn: the CUDA extension is not available ({reason}), so CUDA calls run "
            f"torch's own implementation (cuDNN, as torch.nn), never the fused kernel. "
            f"To fix: {FIX}.")


def extension_status() -> dict:
    """Whether the extension is loaded, how, and why not (without loading it)."""
    return {
        "tried": _state["tried"],
        "loaded": _state["module"] is not None,
        "how": _state["how"],
        "reason": _state["reason"],
    }
