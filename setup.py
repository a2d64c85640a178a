"""Build fused_rnn.

    pip install --no-build-isolation -e .

builds the CUDA extension ``fused_rnn._C`` when the installed torch has CUDA
and nvcc is found (archs from TORCH_CUDA_ARCH_LIST, default "8.0;9.0a";
MAX_JOBS is honoured by torch's build), and otherwise installs the
pure-Python package, which runs everything on the reference path.
FUSED_RNN_SKIP_CUDA_BUILD=1 skips the extension; a later first use on a CUDA
machine then JIT-builds it.

Metadata and dependencies are in pyproject.toml. Every wheel and install carries
the CUDA sources as ``fused_rnn/csrc`` (``build_py`` below; the sdist gets
``csrc/`` from MANIFEST.in), so that an installed copy can JIT-build the
extension from its own sources.
"""

import functools
import importlib.util
import os

from setuptools import setup
from setuptools.command.build_py import build_py as _build_py

HERE = os.path.dirname(os.path.abspath(__file__))


@functools.lru_cache(maxsize=None)
def _load_build_config():
    # fused_rnn/_build.py holds the source list and flags; load it by path so
    # that building does not import the package itself (once: the extension and
    # build_py both read it).
    spec = importlib.util.spec_from_file_location(
        "_fused_rnn_build", os.path.join(HERE, "fused_rnn", "_build.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _extensions():
    if os.environ.get("FUSED_RNN_SKIP_CUDA_BUILD", "0") == "1":
        print("fused_rnn: FUSED_RNN_SKIP_CUDA_BUILD=1, installing without the CUDA extension")
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        print("fused_rnn: torch not importable at build time, installing without the CUDA extension "
              "(use pip install --no-build-isolation)")
        return [], {}
    if torch.version.cuda is None or CUDA_HOME is None:
        why = "torch is a CPU-only build" if torch.version.cuda is None else "nvcc not found"
        print(f"fused_rnn: {why}; installing the pure-Python package (reference path only)")
        return [], {}
    cfg = _load_build_config()
    ext = CUDAExtension(
        name="fused_rnn._C",
        sources=cfg.sources(HERE),
        include_dirs=cfg.include_dirs(HERE),
        extra_compile_args={"cxx": cfg.cxx_flags(), "nvcc": cfg.nvcc_flags()},
        extra_link_args=cfg.link_flags(),  # torch is imported: its libstdc++ is loaded
    )
    print(f"fused_rnn: building the CUDA extension for {cfg.arch_list()}")
    return [ext], {"build_ext": BuildExtension}


class build_py(_build_py):
    """The package, plus csrc/ copied into it as fused_rnn/csrc (the same file list that
    fused_rnn._build hashes). An editable install reads csrc/ from the source tree."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        files = _load_build_config().csrc_files(HERE)
        if not files:
            raise RuntimeError(f"fused_rnn: no csrc/ under {HERE}: the package would lose its CUDA sources")
        for rel in files:
            dst = os.path.join(self.build_lib, "fused_rnn", *rel.split("/"))
            self.mkpath(os.path.dirname(dst))
            self.copy_file(os.path.join(HERE, *rel.split("/")), dst)


ext_modules, cmdclass = _extensions()
cmdclass["build_py"] = build_py

setup(
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
