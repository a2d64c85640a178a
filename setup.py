"""Build fused_rnn.

    pip install --no-build-isolation -e .

builds the CUDA extension ``fused_rnn._C`` when the installed torch has CUDA
and nvcc is found (archs from TORCH_CUDA_ARCH_LIST, default "8.0;9.0a";
MAX_JOBS is honoured by torch's build), and otherwise installs the
pure-Python package, which runs everything on the reference path.
FUSED_RNN_SKIP_CUDA_BUILD=1 skips the extension; a later first use on a CUDA
machine then JIT-builds it.
"""

import importlib.util
import os
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_build_config():
    # fused_rnn/_build.py holds the source list and flags; load it by path so
    # that building does not import the package itself.
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
    )
    print(f"fused_rnn: building the CUDA extension for {cfg.arch_list()}")
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _extensions()

setup(
    name="fused_rnn",
    version="0.1.0",
    description="Fused persistent-kernel LSTM/GRU/RNN stacks for PyTorch, drop-in for torch.nn",
    packages=find_packages(include=["fused_rnn", "fused_rnn.*"]),
    python_requires=">=3.10",
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
