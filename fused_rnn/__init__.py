"""fused_rnn: multi-layer LSTM / GRU / RNN stacks in one persistent CUDA kernel.

Drop-in replacements for torch.nn.LSTM / GRU / RNN::

    import fused_rnn
    lstm = fused_rnn.LSTM(256, 512, num_layers=4, dropout=0.1).cuda()
    out, (h, c) = lstm(x)
    print(lstm.last_backend)           # which path ran, and why

    model = fused_rnn.convert(model)   # swap every nn.LSTM/GRU/RNN in place

    with fused_rnn.backend("reference"):   # or "fused", "native", "auto"
        out, _ = lstm(x)

    fused_rnn.autotune("on")           # measure fused vs cuDNN per shape on this GPU
"""

from . import _dynamo_compat, dispatch, functional, ops, policy, reference, tuning
from ._build import ExtensionUnavailableWarning
from .dispatch import backend
from ._info import backend_info
from .modules import GRU, LSTM, RNN, ConversionWarning, convert, unconvert
from .policy import CrossoverTableWarning
from .tuning import AutotuneCacheWarning, FusedMismatchWarning, autotune

_dynamo_compat.install()

__version__ = "0.1.0"
__all__ = ["LSTM", "GRU", "RNN", "convert", "unconvert", "backend", "backend_info", "autotune",
           "ExtensionUnavailableWarning", "ConversionWarning", "CrossoverTableWarning",
           "AutotuneCacheWarning", "FusedMismatchWarning",
           "dispatch", "functional", "policy", "reference", "ops", "tuning"]
