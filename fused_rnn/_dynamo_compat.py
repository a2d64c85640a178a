"""Let torch.compile trace fused_rnn's modules.

Dynamo refuses every instance of nn.LSTM / GRU / RNN unless
``torch._dynamo.config.allow_rnn`` is set, because their forward calls
``torch._VF``. fused_rnn's modules subclass those classes but their forward
is plain traceable PyTorch around a custom op, so the refusal is lifted for
them alone: Dynamo's module wrapper runs with ``allow_rnn=True`` only when the
module is a fused_rnn one. torch.nn's own RNNs keep Dynamo's default.

Dynamo is heavy to import, so the patch is applied when Dynamo itself is
imported (an import hook), not when fused_rnn is.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

_TARGET = "torch._dynamo.variables.builder"


def _patch(builder_module) -> None:
    builder = getattr(builder_module, "VariableBuilder", None)
    orig = getattr(builder, "wrap_module", None)
    if orig is None or getattr(orig, "_fused_rnn_patched", False):
        return  # another torch version: without the patch, a graph break, never an error

    from torch._dynamo import config

    from .modules import _FusedForward

    def wrap_module(self, value):
        if isinstance(value, _FusedForward):
            with config.patch(allow_rnn=True):
                return orig(self, value)
        return orig(self, value)

    wrap_module._fused_rnn_patched = True
    builder.wrap_module = wrap_module


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != _TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


def install() -> None:
    if _TARGET in sys.modules:
        _patch(sys.modules[_TARGET])
    elif not any(isinstance(f, _PatchAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchAfterImport())
