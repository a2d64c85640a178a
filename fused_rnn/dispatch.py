"""Which path runs a call, and why: ``fused``, ``native`` or ``reference``.

* ``fused``: the CUDA kernels of ``fused_rnn._C`` (through the custom op).
* ``native``: torch's own implementation, exactly what ``nn.LSTM.forward`` runs
  (cuDNN on a GPU, ATen on a CPU), with torch's autograd and torch's dropout
  masks.
* ``reference``: the pure-PyTorch stack of :mod:`fused_rnn.reference` with the
  Philox dropout masks that the kernel draws too: the test oracle, and the
  custom op's CPU implementation (which keeps ``torch.compile`` graphs whole).

:func:`decide` makes the choice from the device, dtype, shape and options, the
planner's answer, the crossover table (:mod:`fused_rnn.policy`) and what the
user asked for. What the user asks for, innermost first:

1. ``with fused_rnn.backend("reference"):`` (per thread, like ``torch.no_grad``;
   nests),
2. the module's ``backend`` attribute, or ``backend=`` of a
   :mod:`fused_rnn.functional` call (``None``: inherit),
3. the environment variable ``FUSED_RNN_BACKEND`` (read when fused_rnn is
   imported; an invalid value warns then, and every call that reaches it raises),
4. ``"auto"``.

``auto`` runs the fused kernel on a CUDA call when the planners cover it
(forward, and backward when a gradient is needed) and autotuning
(:mod:`fused_rnn.tuning`) measured it faster on this device for the call's key, or, where
nothing was measured, the batch is at most the crossover batch for that shape (a
calibrated table, its prior, or the model); every other CUDA call runs ``native``. On a CPU
it runs ``native`` in eager mode and ``reference`` (the custom op) inside
``torch.compile``. Asking for ``fused`` where the kernel cannot run raises a
RuntimeError naming the reason: never a silent fallback.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from typing import NamedTuple

import torch

from . import policy, tuning

BACKENDS = ("auto", "fused", "native", "reference")
ENV = "FUSED_RNN_BACKEND"
_CLASS = {"LSTM": "LSTM", "GRU": "GRU", "RNN_TANH": "RNN", "RNN_RELU": "RNN"}


def _bad_name(name, where: str) -> str | None:
    """Why `name` is not a backend name (None: it is one)."""
    if isinstance(name, str) and name in BACKENDS:
        return None
    return f"{where}: backend must be one of {', '.join(map(repr, BACKENDS))}; got {name!r}"


def _check_name(name, where: str) -> None:
    why = _bad_name(name, where)
    if why is not None:
        raise ValueError(why)


def _read_env() -> tuple[str | None, str | None]:
    """(FUSED_RNN_BACKEND's value or None, why it is invalid or None); warns when invalid."""
    value = os.environ.get(ENV) or None
    why = None if value is None else _bad_name(value, ENV)
    if why is not None:
        warnings.warn(f"fused_rnn: {why}; every fused_rnn call that does not ask for a backend "
                      "itself (fused_rnn.backend(...), module.backend, backend=) raises until it "
                      "is fixed or unset", stacklevel=3)
    return value, why


_ENV_VALUE, _ENV_ERROR = _read_env()  # read once, at import


# The active fused_rnn.backend(...) blocks, innermost last: per thread, as torch.no_grad is,
# so that a block in one thread never changes (or pops) another thread's. A thread-local
# rather than a contextvars.ContextVar: torch.compile traces (and guards on) a thread-local's
# attribute, but not ContextVar.get.
_TLS = threading.local()


def active() -> tuple:
    """The names of this thread's active ``fused_rnn.backend`` blocks, innermost last."""
    return getattr(_TLS, "stack", ())


@contextlib.contextmanager
def backend(name: str):
    """Run every fused_rnn call inside the block on `name`: "auto", "fused", "native" or
    "reference". Per thread (like ``torch.no_grad``): a block affects the calls of the thread
    that entered it, not those of threads it starts (``nn.DataParallel``'s replicas included:
    set ``module.backend`` there). The innermost block wins, over a module's ``backend``
    attribute, a call's ``backend=`` and ``FUSED_RNN_BACKEND``::

        with fused_rnn.backend("reference"):
            out, _ = lstm(x)      # the pure-PyTorch stack, Philox dropout masks
    """
    _check_name(name, "fused_rnn.backend")
    outer = active()
    _TLS.stack = outer + (name,)
    try:
        yield
    finally:
        _TLS.stack = outer


def requested(module_backend: str | None = None, caller: str | None = None
              ) -> tuple[str, str]:
    """(the backend asked for, who asked): this thread's innermost ``fused_rnn.backend``
    block, then the module's own request (`module_backend`), or the call's ``backend=`` when
    `caller` names the function (e.g. "fused_rnn.functional.gru"), then
    ``FUSED_RNN_BACKEND``, then "auto"."""
    stack = active()
    if stack:
        return stack[-1], f"fused_rnn.backend({stack[-1]!r})"
    if module_backend is not None:
        if caller is None:
            _check_name(module_backend, "module.backend")
            return module_backend, f"the module's backend={module_backend!r}"
        _check_name(module_backend, caller)
        return module_backend, f"backend={module_backend!r} of {caller}"
    if _ENV_VALUE is not None:
        if _ENV_ERROR is not None:
            raise ValueError(_ENV_ERROR)
        return _ENV_VALUE, f"{ENV}={_ENV_VALUE}"
    return "auto", "auto"


# A call that goes native inside torch.compile runs behind a graph break, as nn's RNNs do:
# the function wrapped in torch.compiler.disable with the reason the call went native (which
# torch.compile(fullgraph=True) then names in its error). The wrappers are made outside the
# traced code (by _graph_break_for, which Dynamo calls for real while tracing: a constant
# function) and looked up in traced code; making one in traced code is itself a graph break.
_BREAK_FNS: dict = {}  # name -> function that may run behind a graph break
_BEHIND_BREAK: dict = {}  # (name, reason) -> torch.compiler.disable(function, reason=...)


def register_graph_break(name: str, fn) -> None:
    """Let :func:`behind_graph_break` run `fn` (under `name`) behind a graph break."""
    _BREAK_FNS[name] = fn


def _constant_while_tracing(fn):
    """torch._dynamo.assume_constant_result, without importing Dynamo (~1 s) with fused_rnn."""
    fn._dynamo_marked_constant = True
    return fn


@_constant_while_tracing
def _graph_break_for(name: str, reason: str) -> str:
    key = (name, reason)
    if key not in _BEHIND_BREAK:
        fn = _BREAK_FNS[name]
        try:
            wrapped = torch.compiler.disable(fn, reason=reason)
        except TypeError:  # torch < 2.8: no reason
            wrapped = torch.compiler.disable(fn)
        _BEHIND_BREAK[key] = wrapped
    return name


def behind_graph_break(name: str, why: str):
    """The function registered as `name`, behind a torch.compile graph break
    (``torch.compiler.disable``) that names `why` the call runs outside the graph; for a call
    that goes native inside a compiled region, as nn's RNNs break the graph."""
    reason = (f"fused_rnn: this call runs torch's own RNN implementation ({why}), which "
              "torch.compile runs outside the graph, as it does nn.LSTM; "
              "fused_rnn.backend('reference') or module.backend = 'reference' compiles whole")
    _graph_break_for(name, reason)
    return _BEHIND_BREAK[(name, reason)]


class Decision(NamedTuple):
    path: str  # "fused" | "native" | "reference"
    forward: str  # what runs the forward, and why ("fused: <plan>", "native: <reason>", ...)
    backward: str | None  # what will run the backward; None when no gradient is needed


# -------------------------------------------------------------------- constant parts


# Under torch.compile these two are evaluated once while tracing (Dynamo treats their
# result as a constant: they call the C++ planner and read files). Their answers do not
# depend on T and B (the planners' coverage does not, beyond sizes >= 2^31), so the
# traced call passes T = B = 1 and the batch limit is compared in traced code.


@_constant_while_tracing
def coverage(mode: str, device_index: int, dtype: torch.dtype, T: int, B: int, I: int, H: int,
             num_layers: int, bidirectional: bool, has_biases: bool, proj_size: int,
             dropout: float, need_grad: bool, has_lengths: bool) -> tuple[bool, str, str]:
    """(covered, forward label or reason, backward label) from the forward and backward
    planners; the backward is asked only when a gradient is needed."""
    from . import ops

    args = (mode, num_layers, bidirectional, has_biases, proj_size, I, H, B, T, dtype,
            device_index, need_grad, has_lengths, dropout)
    ok, why = ops.plan_shape(*args, which="forward")
    if not ok:
        return False, why, ""
    if not need_grad:
        return True, why, ""
    ok_b, why_b = ops.plan_shape(*args, which="backward")
    if not ok_b:
        return False, f"the fused backward cannot run it: {why_b}", ""
    return True, why, why_b


# What the backward planner's summary says of a plan that streams part of its weights
# (backward_plan.h, describe_backward).
STREAMED = "streamed from L2"


def _dtype_key(dtype: torch.dtype) -> str:
    """The table's and the autotune cache's dtype: bf16, fp16, tf32 (float32 with TF32 on, as
    the extension reads cuDNN's setting) or fp32."""
    from ._build import load_extension

    ext = load_extension()
    tf32 = (ext.fp32_uses_tf32() if ext is not None and hasattr(ext, "fp32_uses_tf32")
            else torch.backends.cudnn.allow_tf32)
    return policy.dtype_key(dtype, bool(tf32))


@_constant_while_tracing
def batch_limit(mode: str, device_index: int, dtype: torch.dtype, num_layers: int, H: int,
                bidirectional: bool, training: bool, graphed: bool = False,
                measured_only: bool = False, seq_len: int | None = None) -> tuple[int, str]:
    """(largest batch ``auto`` runs fused, where the number comes from); ``graphed``: the
    call is being captured in a CUDA graph (the table's graphed crossover, where it has one);
    ``measured_only``: only a calibrated entry of this very shape (policy.max_batch_for);
    ``seq_len``: the call's T (None while torch.compile traces). A device without a table
    of its own takes one of the same capability and SM count as a prior."""
    facts = tuning.device_facts(device_index)
    return policy.max_batch_for(facts.name, _dtype_key(dtype), mode, num_layers, H,
                                bidirectional, training, graphed=graphed,
                                measured_only=measured_only, seq_len=seq_len,
                                capability=facts.capability, sm_count=facts.sm_count)


@_constant_while_tracing
def autotuned(mode: str, device_index: int, dtype: torch.dtype, T: int, B: int, I: int, H: int,
              num_layers: int, bidirectional: bool, has_biases: bool, dropout: float,
              training: bool, graphed: bool, may_measure: bool) -> tuple[str, str] | None:
    """("fused" | "native", why) measured on this device (:mod:`fused_rnn.tuning`: from its
    cache, or measured now when `may_measure`), or None: the table or the model decides."""
    key = tuning.make_key(mode, _dtype_key(dtype), training, num_layers, H, I, bidirectional,
                          T, B, graphed)
    spec = tuning.Spec(mode, torch.device("cuda", device_index), dtype, T, B, I, H, num_layers,
                       bidirectional, has_biases, dropout, training)
    return tuning.choose(spec, key, may_measure)


@_constant_while_tracing
def cached_decisions(mode: str, device_index: int, dtype: torch.dtype, I: int, H: int,
                     num_layers: int, bidirectional: bool, training: bool) -> tuple:
    """The autotune cache's decisions for this shape, per (T bucket, B bucket), for a
    torch.compile trace (tuning.cached_for_shape); never measures."""
    key = tuning.make_key(mode, _dtype_key(dtype), training, num_layers, H, I, bidirectional,
                          1, 1, False)
    return tuning.cached_for_shape(device_index, key)


def _in_bucket(n, top: int, last: bool) -> bool:
    """top / 2 < n <= top (n > top / 2 for the last T bucket, which holds every longer
    sequence), where a trace can tell; a size it cannot tell (a PackedSequence's batch)
    is in no bucket."""
    try:
        from torch.fx.experimental.symbolic_shapes import guard_or_false
    except ImportError:  # torch < 2.7
        def guard_or_false(x):
            return bool(x)
    return guard_or_false(n > top // 2) and (last or guard_or_false(n <= top))


def _traced_autotuned(mode, index, dtype, T, B, I, H, num_layers, bidirectional, training):
    """Inside torch.compile: the cached decision of the call's buckets, if any (the sizes may
    be symbolic: compared with each bucket's bounds, a guard each)."""
    for seq_bucket, batch_bucket, choice, why in cached_decisions(
            mode, index, dtype, I, H, num_layers, bidirectional, training):
        if _in_bucket(T, seq_bucket, seq_bucket == tuning.T_MAX) \
                and _in_bucket(B, batch_bucket, False):
            return choice, why
    return None


# ------------------------------------------------------------------------ decide


def capturing() -> bool:
    """Whether the current CUDA stream is capturing a graph (False on a torch built without
    CUDA, whose binding of the check raises)."""
    try:
        return bool(torch.cuda.is_current_stream_capturing())
    except (RuntimeError, AttributeError):
        return False


def _above(B, limit: int, compiling: bool) -> bool:
    """B > limit; while tracing, a batch the trace cannot know (a PackedSequence's
    batch_sizes[0]) counts as above: native, never slower than cuDNN."""
    if compiling:
        try:
            from torch.fx.experimental.symbolic_shapes import guard_or_true
        except ImportError:  # torch < 2.7
            return B > limit
        return guard_or_true(B > limit)
    return B > limit


def _refuse(source: str, why: str):
    return RuntimeError(f"fused_rnn: the fused kernel was requested ({source}) but cannot run "
                        f"this call: {why}")


def decide(mode: str, device: torch.device, dtype: torch.dtype, T: int, B: int, I: int, H: int, *,
           num_layers: int, bidirectional: bool = False, has_biases: bool = True,
           proj_size: int = 0, dropout: float = 0.0, need_grad: bool = False,
           has_lengths: bool = False, module_backend: str | None = None,
           caller: str | None = None) -> Decision:
    """The path of one call. ``I`` and ``H`` are the weights' sizes (static under
    torch.compile, unlike the input's); ``dropout`` is the probability in effect (0 in
    eval mode or with one layer); ``need_grad``: a gradient will flow (the forward saves
    for backward). ``module_backend``: what the module asks for, or with ``caller`` (the
    function's name) what a functional call's ``backend=`` asks for."""
    want, source = requested(module_backend, caller)
    on_cuda = device.type == "cuda"
    native_bwd = ("native: torch's autograd (cuDNN's backward, as nn." + _CLASS[mode] + ")"
                  if on_cuda else "native: torch's autograd (ATen), as nn." + _CLASS[mode])
    if want == "native":
        return Decision("native", f"native: requested by {source}",
                        native_bwd if need_grad else None)
    ref_bwd = ("reference: backpropagation through time over the reference stack"
               if need_grad else None)
    if want == "reference":
        return Decision("reference", f"reference: requested by {source}", ref_bwd)
    if not on_cuda:
        why = f"input on {device.type}, the fused kernel is CUDA-only"
        if want == "fused":
            raise _refuse(source, why)
        if torch.compiler.is_compiling():
            return Decision("reference", f"reference: {why}; inside torch.compile the custom op "
                            "(the reference stack) keeps the graph whole", ref_bwd)
        return Decision("native", f"native: {why}; torch's own implementation, as nn."
                        + _CLASS[mode], native_bwd if need_grad else None)
    index = device.index if device.index is not None else torch.cuda.current_device()
    compiling = torch.compiler.is_compiling()
    if compiling:  # sizes and floats may be symbolic; the planners' answer is the same
        p = 0.5 if dropout > 0 else 0.0
        ok, fwd, bwd = coverage(mode, index, dtype, 1, 1, I, H, num_layers, bidirectional,
                                has_biases, proj_size, p, need_grad, has_lengths)
    else:
        ok, fwd, bwd = coverage(mode, index, dtype, T, B, I, H, num_layers, bidirectional,
                                has_biases, proj_size, float(dropout), need_grad, has_lengths)
    if not ok:
        if want == "fused":
            raise _refuse(source, fwd)
        return Decision("native", f"native: {fwd}", native_bwd if need_grad else None)
    # the backward streams part of its weights from L2 each step (the tile does not fit
    # shared memory: fp32 L=4 H=512)
    streams = need_grad and STREAMED in bwd
    if compiling:  # the configuration is planned when the op runs
        fwd = "fused: chosen while torch.compile traced the call"
        bwd = fwd
    if want == "auto":
        # inside a CUDA-graph capture cuDNN pays no launch overhead: the graphed crossover
        # (while torch.compile traces, the capture has not begun: the eager one)
        graphed = not compiling and capturing()
        # measured on this device (autotuning): never during a capture or a trace; a trace
        # reads the cache, comparing its (possibly symbolic) T and B with each bucket
        if compiling:
            tuned = _traced_autotuned(mode, index, dtype, T, B, I, H, num_layers, bidirectional,
                                      need_grad)
        else:
            # (nor under torch.jit.trace, which would record the scratch runs, inside
            # torch.func transforms, or under a dispatch or function mode: FakeTensorMode,
            # FlopCounterMode, ... would see them)
            may_measure = not (graphed or torch.jit.is_tracing()
                               or torch._C._are_functorch_transforms_active()
                               or tuning.foreign_modes())
            tuned = autotuned(mode, index, dtype, T, B, I, H, num_layers, bidirectional,
                              has_biases, float(dropout), need_grad, graphed, may_measure)
        if tuned is not None:
            path, why = tuned
            if path == "native":
                return Decision("native", f"native: {why}", native_bwd if need_grad else None)
            return Decision("fused", f"{fwd} [{why}]", f"{bwd} [{why}]" if need_grad else None)
        # (a backward that streams weights: only a table's entry of this very shape counts)
        limit, where = batch_limit(mode, index, dtype, num_layers, H, bidirectional, need_grad,
                                   graphed, streams, None if compiling else T)
        if _above(B, limit, compiling):
            what = "training" if need_grad else "inference"
            batch = "the batch" if compiling else f"batch {B}"  # B may be symbolic when traced
            return Decision("native", f"native: {batch} is above {limit}, the largest where "
                            f"the fused kernel is expected to beat cuDNN for {what} ({where})",
                            native_bwd if need_grad else None)
    return Decision("fused", fwd, bwd if need_grad else None)


__all__ = ["BACKENDS", "ENV", "Decision", "backend", "behind_graph_break", "decide", "requested"]
