"""Drop-in replacements for torch.nn.LSTM, GRU and RNN.

Each class subclasses its torch.nn counterpart, so the constructor, its
checks, parameter names and shapes, initialisation, state_dict, repr and
``isinstance(m, nn.LSTM)`` are torch's own. Only ``forward`` is replaced: it
follows torch's forward step by step (same exceptions, same messages, same
outputs) and calls :func:`fused_rnn.functional.run` instead of ``torch._VF``.

Each call runs one of three paths (:mod:`fused_rnn.dispatch`): the fused CUDA
kernel, torch's own implementation (``native``: this very ``nn.LSTM.forward``,
so cuDNN on a GPU and ATen on a CPU) or the pure-PyTorch reference stack.
``backend`` (None: inherit; "auto", "fused", "native", "reference") asks for
one for this module. ``last_backend`` records which path the last forward took
and why, and ``last_backward_backend`` which path its backward takes (None when
the forward needed no gradient).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from .dispatch import behind_graph_break, decide
from .functional import effective_dtype, run


def _packed_index(batch_sizes: torch.Tensor, device: torch.device):
    """Rows of the padded (T*B) view that a PackedSequence's data fills, and the lengths.

    Packed data is time-major over the length-sorted batch: step t holds rows
    b < batch_sizes[t]. Returns (flat indices t*B + b in packed order, lengths (B,)).
    """
    T, B = batch_sizes.numel(), int(batch_sizes[0])
    valid = torch.arange(B).unsqueeze(0) < batch_sizes.unsqueeze(1)  # (T, B)
    index = valid.flatten().nonzero().squeeze(1)
    return index.to(device), valid.sum(0).to(device), T, B


def _torch_forward(module, input, hx):
    """torch's own forward of a fused module: nn.LSTM.forward & co."""
    return super(_FusedForward, module).forward(input, hx)


class _FusedForward:
    """The forward shared by the three modules (mixed in before the torch class)."""

    backend: str | None = None  # what this module asks for; None: fused_rnn.backend / env / auto
    last_backend: str | None = None
    last_backward_backend: str | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.last_backend = None
        self.last_backward_backend = None

    def _class_tag(self) -> str:
        return "RNN" if self.mode in ("RNN_TANH", "RNN_RELU") else self.mode

    def _check_hx_dims(self, hx, want: int) -> None:
        batched = "batched 3-D" if want == 3 else "unbatched 2-D"
        if self.mode == "LSTM":
            if hx[0].dim() != want or hx[1].dim() != want:
                raise RuntimeError(
                    f"For {batched} input, hx and cx should also be {want}-D but got "
                    f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
                )
        elif hx.dim() != want:
            raise RuntimeError(
                f"For {batched} input, hx should also be {want}-D but got {hx.dim()}-D tensor"
            )

    def _zero_state(self, input: torch.Tensor, batch: int):
        D = 2 if self.bidirectional else 1
        h_out = self.proj_size if self.proj_size > 0 else self.hidden_size
        kw = dict(dtype=input.dtype, device=input.device)
        h = torch.zeros(self.num_layers * D, batch, h_out, **kw)
        if self.mode == "LSTM":
            return h, torch.zeros(self.num_layers * D, batch, self.hidden_size, **kw)
        return h

    def _decide(self, input, hx):
        """The path of this call (fused_rnn.dispatch.decide), from the input as given.

        None for an input torch's own forward rejects (not a tensor, wrong number of
        dimensions): torch's forward then raises its own exception and message.
        """
        packed = isinstance(input, PackedSequence)
        data = input.data if packed else input
        if not isinstance(data, torch.Tensor) or (not packed and data.dim() not in (2, 3)):
            return None
        if packed:
            T, B = input.batch_sizes.numel(), int(input.batch_sizes[0])
        elif data.dim() == 2:
            T, B = data.shape[0], 1
        else:
            T, B = (data.shape[1], data.shape[0]) if self.batch_first else data.shape[:2]
        states = () if hx is None else (hx if isinstance(hx, (tuple, list)) else (hx,))
        need_grad = torch.is_grad_enabled() and any(
            isinstance(t, torch.Tensor) and t.requires_grad
            for t in (data, *states, *self._flat_weights)
        )
        p = float(self.dropout) if (self.training and self.num_layers > 1) else 0.0
        return decide(
            self.mode, data.device, effective_dtype(self.mode, data), T, B, self.input_size,
            self.hidden_size, num_layers=self.num_layers, bidirectional=self.bidirectional,
            has_biases=self.bias, proj_size=self.proj_size, dropout=p, need_grad=need_grad,
            has_lengths=packed, module_backend=self.backend,
        )

    def _native_forward(self, input, hx):
        if torch.compiler.is_compiling():  # a graph break around it, as around nn's RNNs
            return behind_graph_break(_torch_forward)(self, input, hx)
        return _torch_forward(self, input, hx)

    def forward(self, input, hx=None):
        if hasattr(self, "_update_flat_weights"):
            self._update_flat_weights()
        decision = self._decide(input, hx)
        if decision is None or decision.path == "native":
            if decision is None:
                self.last_backend = "native: torch's own forward checks this input"
                self.last_backward_backend = None
            else:
                self.last_backend, self.last_backward_backend = decision.forward, decision.backward
            return self._native_forward(input, hx)
        is_lstm = self.mode == "LSTM"
        orig_input = input
        is_batched = True
        batch_dim = 0 if self.batch_first else 1
        sorted_indices = unsorted_indices = batch_sizes = None
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = orig_input
            if hx is None:
                hx = self._zero_state(input, int(batch_sizes[0]))
            else:
                hx = self.permute_hidden(hx, sorted_indices)
        else:
            if input.dim() not in (2, 3):
                suffix = " tensor" if self._class_tag() == "RNN" else ""
                raise ValueError(
                    f"{self._class_tag()}: Expected input to be 2D or 3D, got "
                    f"{input.dim()}D{suffix} instead"
                )
            is_batched = input.dim() == 3
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            if hx is None:
                hx = self._zero_state(input, input.size(batch_dim))
            else:
                self._check_hx_dims(hx, 3 if is_batched else 2)
                if not is_batched:
                    hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1)) if is_lstm else hx.unsqueeze(1)
        self.check_forward_args(input, hx, batch_sizes)

        h0, c0 = hx if is_lstm else (hx, None)
        options = dict(
            num_layers=self.num_layers, bidirectional=self.bidirectional, has_biases=self.bias,
            proj_size=getattr(self, "proj_size", 0), dropout=self.dropout, train=self.training,
        )
        if batch_sizes is not None:
            index, lengths, T, B = _packed_index(batch_sizes, input.device)
            padded = input.new_zeros(T * B, input.shape[-1]).index_copy(0, index, input)
            out, hy, cy, _, _ = run(self.mode, padded.view(T, B, -1), self._flat_weights, h0,
                                    c0, lengths=lengths, path=decision.path, **options)
            output = out.reshape(T * B, -1).index_select(0, index)
        else:
            output, hy, cy, _, _ = run(self.mode, input, self._flat_weights, h0, c0,
                                       batch_first=self.batch_first, path=decision.path,
                                       **options)
        self.last_backend, self.last_backward_backend = decision.forward, decision.backward
        hidden = (hy, cy) if is_lstm else hy

        if batch_sizes is not None:
            packed = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
            return packed, self.permute_hidden(hidden, unsorted_indices)
        if not is_batched:
            output = output.squeeze(batch_dim)
            hidden = (hidden[0].squeeze(1), hidden[1].squeeze(1)) if is_lstm else hidden.squeeze(1)
        return output, self.permute_hidden(hidden, unsorted_indices)


class LSTM(_FusedForward, nn.LSTM):
    __doc__ = "Drop-in :class:`torch.nn.LSTM` running on fused_rnn's kernels.\n\n" + (
        nn.LSTM.__doc__ or "")


class GRU(_FusedForward, nn.GRU):
    __doc__ = "Drop-in :class:`torch.nn.GRU` running on fused_rnn's kernels.\n\n" + (
        nn.GRU.__doc__ or "")


class RNN(_FusedForward, nn.RNN):
    __doc__ = "Drop-in :class:`torch.nn.RNN` running on fused_rnn's kernels.\n\n" + (
        nn.RNN.__doc__ or "")


_FUSED_FOR = {nn.LSTM: LSTM, nn.GRU: GRU, nn.RNN: RNN}


def convert(model: nn.Module) -> nn.Module:
    """Swap every nn.LSTM / nn.GRU / nn.RNN inside `model` (or `model` itself) in place.

    The modules keep their parameters, buffers, device, dtype and hooks; only
    their class changes to the fused one. Returns `model`.
    """
    for module in model.modules():
        fused = _FUSED_FOR.get(type(module))
        if fused is not None:
            module.__class__ = fused
            module.last_backend = module.last_backward_backend = None
    return model
