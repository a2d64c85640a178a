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

import warnings

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from .dispatch import _check_name, behind_graph_break, decide, register_graph_break
from .functional import effective_dtype, run


def _packed_index(batch_sizes: torch.Tensor, rows: int, B, device: torch.device):
    """Rows of the padded (T*B) view that a PackedSequence's data fills, and the lengths.

    Packed data is time-major over the length-sorted batch: step t holds rows
    b < batch_sizes[t], so packed row k is at step t = the number of steps whose rows all
    come before it, and b = k - (rows before step t). Returns (flat indices t*B + b in packed
    order (`rows` of them), lengths (B,)). No data-dependent shape (torch.compile traces it).
    """
    ends = batch_sizes.cumsum(0)  # rows up to and including step t
    k = torch.arange(rows)
    t = torch.searchsorted(ends, k, right=True)
    b = k - (ends - batch_sizes).index_select(0, t)
    index = t * B + b
    lengths = (torch.arange(B).unsqueeze(0) < batch_sizes.unsqueeze(1)).sum(0)  # (T, B) -> (B,)
    return index.to(device), lengths.to(device)


def _torch_forward(module, input, hx):
    """torch's own forward of a fused module: nn.LSTM.forward & co."""
    return super(_FusedForward, module).forward(input, hx)


register_graph_break("module", _torch_forward)


def _fx_proxy(input, hx):
    """The torch.fx Proxy among the arguments, if torch.fx is tracing this call; else None."""
    for a in (input, *(hx if isinstance(hx, (tuple, list)) else (hx,))):
        if isinstance(a, torch.fx.Proxy):
            return a
    return None


def _fx_leaf(module, proxy, input, hx):
    """A call_module node for `module`, as torch.fx records nn.LSTM (a leaf module)."""
    tracer = proxy.tracer
    if getattr(tracer, "root", None) is module:
        from torch.fx.proxy import TraceError

        raise TraceError(
            f"fused_rnn.{type(module).__name__} cannot be the root of torch.fx.symbolic_trace "
            f"(nor can nn.{type(module).__name__}: its forward branches on its input); trace a "
            "module that contains it, where it is a leaf, as torch's RNNs are")
    args = (input,) if hx is None else (input, hx)
    return tracer.create_proxy("call_module", tracer.path_of_module(module), args, {})


def _packed_batch(input: PackedSequence, hx):
    """The batch of a PackedSequence: batch_sizes[0], read once. Inside torch.compile that is
    a value the trace does not know (a guard on it fails the trace); a size that must equal it
    is known to the trace (the permutation's, else the state's): that one is used, and the two
    are checked equal when the graph runs."""
    B = int(input.batch_sizes[0])
    if not torch.compiler.is_compiling():
        return B
    state = hx[0] if isinstance(hx, (tuple, list)) and len(hx) == 2 else hx
    if input.sorted_indices is not None:
        known = input.sorted_indices.shape[0]
    elif isinstance(state, torch.Tensor) and state.dim() == 3:
        known = state.shape[1]
    else:
        return B
    torch._check(B == known, lambda: "the packed input's batch (batch_sizes[0]) must be its "
                                     "sorted_indices' length and the hidden state's batch")
    return known


class _FusedForward:
    """The forward shared by the three modules (mixed in before the torch class)."""

    last_backend = None  # str: what ran the last forward, and why
    last_backward_backend = None  # str: what runs its backward (None: no gradient needed)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.last_backend = None
        self.last_backward_backend = None

    _backend = None  # what the module asks for (the backend property's value)

    @property
    def backend(self):
        """What this module asks for: None (inherit: fused_rnn.backend / FUSED_RNN_BACKEND /
        auto), "auto", "fused", "native" or "reference"; checked when set."""
        # an ordinary attribute read, which torch.compile guards on: setting it recompiles
        return self._backend

    @backend.setter
    def backend(self, name) -> None:
        if name is not None:
            _check_name(name, "module.backend")
        self._backend = name

    def __setstate__(self, state):
        if "backend" in state:  # pickled before backend was a property
            state = dict(state)
            state["_backend"] = state.pop("backend")
        super().__setstate__(state)

    def __prepare_scriptable__(self):
        """torch.jit.script: TorchScript cannot run the fused path; it scripts torch's own
        module (the torch class, same parameters) in its place."""
        return _to_torch(self, in_place=False)

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

    def _decide(self, input, hx, packed_batch):
        """The path of this call (fused_rnn.dispatch.decide), from the input as given
        (`packed_batch`: the batch of a PackedSequence input).

        None for an input torch's own forward rejects (not a tensor, wrong number of
        dimensions): torch's forward then raises its own exception and message.
        """
        packed = isinstance(input, PackedSequence)
        data = input.data if packed else input
        if not isinstance(data, torch.Tensor) or (not packed and data.dim() not in (2, 3)):
            return None
        if packed:
            T, B = input.batch_sizes.numel(), packed_batch
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

    def _native_forward(self, input, hx, why):
        if torch.compiler.is_compiling():  # a graph break around it, as around nn's RNNs
            return behind_graph_break("module", why)(self, input, hx)
        return _torch_forward(self, input, hx)

    def _check_packed_state(self, input, hx, batch_sizes, B) -> None:
        """check_forward_args for a PackedSequence inside torch.compile: the batch is
        batch_sizes[0], a value the trace does not know, so its comparison with the state's
        is a check at run time (torch._check) rather than a guard; torch's messages."""
        self.check_input(input, batch_sizes)
        rows = self.num_layers * (2 if self.bidirectional else 1)
        h_width = self.proj_size if self.proj_size > 0 else self.hidden_size
        states = ([(hx[0], h_width, "hidden[0] "), (hx[1], self.hidden_size, "hidden[1] ")]
                  if self.mode == "LSTM" else [(hx, h_width, "hidden ")])
        for state, width, what in states:
            if state.dim() != 3 or state.size(0) != rows or state.size(2) != width:
                raise RuntimeError(f"Expected {what}size {(rows, 'batch', width)}, got "
                                   f"{list(state.size())}")
            msg = (f"Expected {what}size ({rows}, batch, {width}) with the batch of the packed "
                   "input (its batch_sizes[0])")
            torch._check(state.size(1) == B, lambda: msg)

    def forward(self, input, hx=None):
        proxy = _fx_proxy(input, hx)
        if proxy is not None:  # torch.fx.symbolic_trace: a leaf, as nn.LSTM is
            return _fx_leaf(self, proxy, input, hx)
        if hasattr(self, "_update_flat_weights"):
            self._update_flat_weights()
        packed_batch = None
        if isinstance(input, PackedSequence) and isinstance(input.batch_sizes, torch.Tensor):
            packed_batch = _packed_batch(input, hx)
        decision = self._decide(input, hx, packed_batch)
        if decision is None or decision.path == "native":
            if decision is None:
                self.last_backend = "native: torch's own forward checks this input"
                self.last_backward_backend = None
            else:
                self.last_backend, self.last_backward_backend = decision.forward, decision.backward
            why = "torch's own forward checks this input" if decision is None else \
                decision.forward
            return self._native_forward(input, hx, why)
        is_lstm = self.mode == "LSTM"
        orig_input = input
        is_batched = True
        batch_dim = 0 if self.batch_first else 1
        sorted_indices = unsorted_indices = batch_sizes = None
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = orig_input
            if hx is None:
                hx = self._zero_state(input, packed_batch)
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
        if batch_sizes is not None and torch.compiler.is_compiling():
            self._check_packed_state(input, hx, batch_sizes, packed_batch)
        else:
            self.check_forward_args(input, hx, batch_sizes)

        h0, c0 = hx if is_lstm else (hx, None)
        options = dict(
            num_layers=self.num_layers, bidirectional=self.bidirectional, has_biases=self.bias,
            proj_size=getattr(self, "proj_size", 0), dropout=self.dropout, train=self.training,
        )
        if batch_sizes is not None:
            T, B = batch_sizes.numel(), packed_batch
            index, lengths = _packed_index(batch_sizes, input.shape[0], B, input.device)
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
_TORCH_FOR = {LSTM: nn.LSTM, GRU: nn.GRU, RNN: nn.RNN}
# what _FusedForward adds to a class: a user's subclass defining one of these is not converted
_OURS = {name for name in _FusedForward.__dict__ if not name.startswith("__")} - {"forward"}


class ConversionWarning(UserWarning):
    """fused_rnn.convert left some RNN modules as they were (the message names them and why)."""


def _parametrized(cls) -> bool:
    """Whether `cls` is the class torch.nn.utils.parametrize made for a parametrized module
    (``Parametrized<Base>``, whose only base is the module's own class)."""
    return (cls.__module__ == "torch.nn.utils.parametrize" and len(cls.__bases__) == 1
            and cls.__name__ == "Parametrized" + cls.__bases__[0].__name__)


def _with_base(cls, base):
    """A copy of the parametrized class `cls` (its properties, __getstate__, ...) over `base`."""
    body = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
    return type(f"Parametrized{base.__name__}", (base,), body)


_CONVERTED: dict = {}  # a user's subclass of nn.LSTM/GRU/RNN -> its fused counterpart


def _rebuild_converted(original):
    """Unpickling: an empty instance of the fused counterpart of `original`."""
    cls = _converted_subclass(original)
    return cls.__new__(cls)


def _reduce_converted(self, protocol):
    # pickle/deepcopy name the user's class (importable) instead of the made-up one
    rv = list(object.__reduce_ex__(self, protocol))
    rv[0], rv[1] = _rebuild_converted, (type(self)._fused_rnn_original,)
    return tuple(rv)


def _converted_subclass(original):
    """The fused counterpart of a user's subclass of nn.LSTM/GRU/RNN: the subclass first (its
    overrides stay, its super().forward() reaches the fused forward), then fused_rnn's class."""
    cls = _CONVERTED.get(original)
    if cls is None:
        base = next(_FUSED_FOR[b] for b in original.__mro__ if b in _FUSED_FOR)
        body = {"__module__": original.__module__, "__qualname__": original.__qualname__,
                "__doc__": original.__doc__, "_fused_rnn_original": original,
                "__reduce_ex__": _reduce_converted}
        # setdefault: two threads converting at once still share one class
        cls = _CONVERTED.setdefault(original, type(original.__name__, (original, base), body))
    return cls


def _fused_class_for(module):
    """(the fused class for `module`, or None, why not): its class's, unless the instance
    holds an attribute of a name fused_rnn's modules use."""
    fused, why = _fused_class(type(module))
    clash = sorted(_OURS.intersection(vars(module))) if fused is not None else []
    if clash:
        return None, f"{type(module).__name__} has attributes {', '.join(clash)}, which " \
                     "fused_rnn's modules use"
    return fused, why


def _fused_class(cls):
    """(the fused class for a module of class `cls`, or None, why not)."""
    if issubclass(cls, _FusedForward):
        return None, None  # fused already
    if cls in _FUSED_FOR:
        return _FUSED_FOR[cls], None
    if _parametrized(cls):
        base, why = _fused_class(cls.__bases__[0])
        return (None, why) if base is None else (_with_base(cls, base), None)
    if not issubclass(cls, tuple(_FUSED_FOR)):
        return None, (f"{cls.__name__} subclasses nn.RNNBase but not nn.LSTM, nn.GRU or nn.RNN"
                      if issubclass(cls, nn.RNNBase) else None)
    own = [c for c in cls.__mro__ if not c.__module__.startswith("torch.") and c is not object]
    clash = sorted({n for c in own for n in vars(c) if n in _OURS})
    if clash:
        return None, f"{cls.__name__} defines {', '.join(clash)}, which fused_rnn's modules use"
    pickling = sorted({n for c in own for n in vars(c) if n in ("__reduce__", "__reduce_ex__")})
    if pickling:  # the converted class pickles as the user's class through __reduce_ex__
        return None, f"{cls.__name__} defines {', '.join(pickling)}"
    try:
        return _converted_subclass(cls), None
    except TypeError as e:  # e.g. a layout conflict (__slots__)
        return None, f"{cls.__name__} cannot take fused_rnn's class as a base: {e}"


def convert(model: nn.Module) -> nn.Module:
    """Swap every nn.LSTM / nn.GRU / nn.RNN inside `model` (or `model` itself) in place.

    The modules keep their parameters, buffers, device, dtype, hooks and parametrizations;
    only their class changes to the fused one. Parametrized modules (``weight_norm``,
    weight drop, ``torch.nn.utils.parametrize``) stay parametrized. A user's subclass of
    nn.LSTM / GRU / RNN becomes a fused subclass of it (its overrides kept, ``super().forward``
    is the fused forward; ``isinstance`` and pickling name the user's class). RNN modules that
    cannot be converted safely are left as they are, named with the reason in one
    :class:`ConversionWarning`. Returns `model`.
    """
    skipped = []
    for name, module in model.named_modules():
        fused, why = _fused_class_for(module)
        if fused is not None:
            module.__class__ = fused
            module.last_backend = module.last_backward_backend = None
        elif why is not None:
            skipped.append(f"{name or '(the model itself)'}: {why}")
    if skipped:
        warnings.warn("fused_rnn.convert left these RNN modules as they are (torch's own "
                      "implementation runs them): " + "; ".join(skipped), ConversionWarning,
                      stacklevel=2)
    return model


def _torch_class(cls):
    """The class a fused module had before convert (or the torch class of a fused one)."""
    if _parametrized(cls):
        base = _torch_class(cls.__bases__[0])
        return cls if base is cls.__bases__[0] else _with_base(cls, base)
    original = cls.__dict__.get("_fused_rnn_original")
    if original is not None:
        return original
    for fused, plain in _TORCH_FOR.items():
        if cls is fused:
            return plain
    return cls


def _to_torch(module, in_place: bool):
    """`module` with its torch class (in place, or a shallow copy sharing its parameters)."""
    cls = _torch_class(type(module))
    if cls is type(module):
        return module
    if not in_place:
        copy = cls.__new__(cls)
        copy.__dict__.update({k: (v.copy() if isinstance(v, (dict, list)) else v)
                              for k, v in module.__dict__.items()})
        module = copy
    module.__class__ = cls
    for name in ("_backend", "backend", "last_backend", "last_backward_backend"):
        module.__dict__.pop(name, None)
    return module


def unconvert(model: nn.Module) -> nn.Module:
    """The inverse of :func:`convert`: every fused_rnn module inside `model` (and `model`
    itself) gets back the class it had (nn.LSTM / GRU / RNN, a user's subclass, parametrized
    or not), in place, parameters kept. For tools that look for torch's classes by exact type,
    e.g. ``torch.ao.quantization.quantize_dynamic``. Returns `model`."""
    for module in model.modules():
        _to_torch(module, in_place=True)
    return model
