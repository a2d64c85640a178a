"""fused_rnn.backend_info(): what this installation can run, and why not."""

from __future__ import annotations

import torch

from ._build import extension_status, load_extension


def backend_info(load: bool = True) -> dict:
    """Describe the available backends.

    Keys: ``cuda_available``, ``device`` (name of the current CUDA device or
    None), ``extension_loaded``, ``extension_how`` ("prebuilt" / "jit" /
    None), ``compiled_archs``, ``reason`` (why the extension is not loaded),
    and ``default_path`` (what a CUDA forward of a covered shape would run).
    With ``load=True`` (default) a CUDA machine loads (or JIT-builds) the
    extension first; a CPU machine never tries to build anything.
    """
    cuda = torch.cuda.is_available()
    ext = load_extension() if (load and cuda) else None
    status = extension_status()
    archs = []
    if ext is not None and hasattr(ext, "compiled_archs"):
        archs = list(ext.compiled_archs())
    if not cuda:
        reason = ("torch is a CPU-only build" if torch.version.cuda is None
                  else "no CUDA device visible")
    else:
        reason = status["reason"] if ext is None else None
    return {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": cuda,
        "device": torch.cuda.get_device_name() if cuda else None,
        "extension_loaded": ext is not None,
        "extension_how": status["how"],
        "compiled_archs": archs,
        "reason": reason,
        "default_path": "fused CUDA kernel" if ext is not None else "reference (pure PyTorch)",
    }
