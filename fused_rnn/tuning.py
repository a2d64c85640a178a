"""Autotuning: ``auto`` measures the fused kernel against torch's own path on this device.

A calibrated crossover table (:mod:`fused_rnn.policy`) exists for few devices, holds one
sequence length, and goes stale when the kernels change. So, as
``torch.backends.cudnn.benchmark`` does for convolutions, the first CUDA call of a *key*
times both paths on scratch tensors of that shape and remembers the faster:

    key = (cell, dtype, training, num_layers, hidden_size, input_size, direction,
           T bucket, B bucket, inside a CUDA-graph capture or not)

Buckets are powers of two; a bucket is measured at its upper end (B = 17 is timed at
B = 32, T = 300 at T = 512, T above 1024 at 1024), so that one measurement is conservative
for every call it decides. ``fused`` wins only when it takes at most ``MARGIN`` x the native
time. Scratch tensors come from a private generator with torch's RNG state saved and
restored around the run, under ``no_grad`` or on tensors of their own: the user's random
stream and autograd graph are untouched. Training keys time forward + backward.

The first measurement on a device the GPU tests have not run on (``VERIFIED_DEVICES``)
also checks the fused result against the native one, against a float64 native run, under
the accuracy rule of the GPU tests (error <= 2 x native's error + a floor, forward and
every gradient; at dropout 0, T at most ``CHECK_T``, the bucket's B): a mismatch disables the fused path for that key, warns once
(:class:`FusedMismatchWarning`) and shows in ``fused_rnn.backend_info()["autotune"]``.

When it measures (``FUSED_RNN_AUTOTUNE`` or :func:`autotune`):

* ``auto`` (default): on a device without a calibrated table of its own;
* ``on``: on every device (a measurement overrides the table);
* ``off``: never; the table, a prior, or the performance model decide.

Never while a CUDA graph is being captured, nor while ``torch.compile`` traces: there the
cache is read (when the trace knows the sizes), else the table or the model decide.
Measurements of the graphed keys (both paths captured in CUDA graphs and replayed) are
made beside the eager ones only when asked for (``graphs=True`` /
``FUSED_RNN_AUTOTUNE_GRAPHS=1``): they double the first call's cost.

The cache lives in memory and in one JSON file per (device, capability, SM count, torch
version, ``csrc/`` hash) under ``FUSED_RNN_CACHE_DIR`` (default
``$XDG_CACHE_HOME/fused_rnn`` or ``~/.cache/fused_rnn``; ``off``: memory only). Writes
merge with what other processes wrote, under a file lock, through a temporary file and an
atomic rename; a file that cannot be read is ignored with an
:class:`AutotuneCacheWarning` (and replaced by the next write).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import json
import math
import os
import statistics
import tempfile
import threading
import warnings
from typing import NamedTuple

import torch

from . import policy

ENV = "FUSED_RNN_AUTOTUNE"
GRAPHS_ENV = "FUSED_RNN_AUTOTUNE_GRAPHS"
CACHE_ENV = "FUSED_RNN_CACHE_DIR"
MODES = ("auto", "on", "off")
_ALIASES = {"": "auto", "auto": "auto", "1": "on", "on": "on", "true": "on", "0": "off",
            "off": "off", "false": "off"}
FORMAT = 1
MARGIN = 0.95  # fused must take <= this x the native time (bench --calibrate's margin)
T_MAX = 1024  # longer sequences are timed at this length (the time per step is the same)
# Devices where the GPU test suite (tests/gpu) passed: no first-use check there.
VERIFIED_DEVICES = frozenset({"NVIDIA H200"})
# The accuracy rule (the GPU tests' too: tests/gpu/gpu_helpers.py takes these floors): per
# tensor, the fused error against float64 <= 2 x the native error + floor[dtype].
FWD_FLOOR = {"fp32": 1e-5, "tf32": 1.5e-3, "fp16": 1e-3, "bf16": 8e-3}
BWD_FLOOR = {"fp32": 3e-5, "tf32": 2e-3, "fp16": 3e-3, "bf16": 2e-2}
RUNS = (3, 10)  # timed runs per path: at least, at most (about 0.2 s of them after warm-up)
RUN_BUDGET_S = 0.2


class AutotuneCacheWarning(UserWarning):
    """The autotune cache file could not be read or written; it is ignored (memory only)."""


class FusedMismatchWarning(UserWarning):
    """The fused kernel's result failed the first-use check on this device; the key goes
    native."""


# ------------------------------------------------------------------------ settings

_LOCK = threading.RLock()  # the cache, the settings, measurements (one at a time)
_SETTINGS: dict = {}  # set by autotune(): "mode", "graphs", "cache_dir"


def _env_mode() -> str:
    raw = os.environ.get(ENV, "")
    mode = _ALIASES.get(raw.strip().lower())
    if mode is None:
        _warn_once(("env", raw), f"fused_rnn: {ENV}={raw!r} is not one of auto, on, off (or 1, "
                   "0); autotuning stays at auto", UserWarning)
        return "auto"
    return mode


def settings() -> dict:
    """{"mode": "auto" | "on" | "off", "graphs": bool, "cache_dir": str | None (memory only)}:
    :func:`autotune`'s settings, else the environment variables'."""
    with _LOCK:
        mode = _SETTINGS.get("mode") or _env_mode()
        graphs = _SETTINGS.get("graphs")
        if graphs is None:
            graphs = os.environ.get(GRAPHS_ENV, "").strip().lower() in ("1", "on", "true")
        cache_dir = _SETTINGS.get("cache_dir", os.environ.get(CACHE_ENV) or None)
    if cache_dir is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        cache_dir = os.path.join(base, "fused_rnn")
    elif str(cache_dir).strip().lower() in ("off", "0", "none"):
        cache_dir = None
    return {"mode": mode, "graphs": bool(graphs), "cache_dir": cache_dir}


_UNSET = object()


def autotune(mode=_UNSET, *, graphs=_UNSET, cache_dir=_UNSET) -> dict:
    """Turn autotuning on, off or back to its default, process-wide (as
    ``torch.backends.cudnn.benchmark = True`` does); returns what was set before the call
    (None for each setting that came from its environment variable), which
    ``fused_rnn.autotune(**previous)`` restores. :func:`settings` says what is in effect.

    ``mode``: "auto" (measure on a device without a calibrated table of its own), "on"
    (True: every device), "off" (False: never), or None (back to ``FUSED_RNN_AUTOTUNE``).
    ``graphs``: also measure both paths captured in CUDA graphs (for calls made during a
    capture); None: back to ``FUSED_RNN_AUTOTUNE_GRAPHS``. ``cache_dir``: the cache folder,
    "off" for memory only, None: back to ``FUSED_RNN_CACHE_DIR``."""
    with _LOCK:
        previous = {k: _SETTINGS.get(k) for k in ("mode", "graphs", "cache_dir")}
        if mode is not _UNSET:
            if mode is True or mode is False:
                mode = "on" if mode else "off"
            if mode is not None and mode not in MODES:
                raise ValueError(f"fused_rnn.autotune: mode must be one of 'auto', 'on', 'off', "
                                 f"True, False or None; got {mode!r}")
            _SETTINGS["mode"] = mode
        if graphs is not _UNSET:
            if graphs is not None and not isinstance(graphs, bool):
                raise TypeError(f"fused_rnn.autotune: graphs must be a bool or None; got "
                                f"{type(graphs).__name__}")
            _SETTINGS["graphs"] = graphs
        if cache_dir is not _UNSET:
            if cache_dir is None:
                _SETTINGS.pop("cache_dir", None)
            else:
                _SETTINGS["cache_dir"] = os.fspath(cache_dir)
            _CACHES.clear()
    return previous


# ------------------------------------------------------------------------- devices


class Device(NamedTuple):
    name: str
    capability: tuple | None  # (major, minor)
    sm_count: int | None


def device_facts(index: int | None) -> Device:
    """The name, compute capability and SM count of CUDA device `index` (None: the current
    one; the last two None where torch cannot say). Tests replace this function to fake a
    device."""
    name = torch.cuda.get_device_name(index)
    try:
        p = torch.cuda.get_device_properties(index)
        return Device(name, (p.major, p.minor), p.multi_processor_count)
    except Exception:  # noqa: BLE001 - a torch without CUDA (tests fake the name)
        return Device(name, None, None)


def verified(device: Device) -> bool:
    return device.name in VERIFIED_DEVICES


def active(device: Device) -> tuple[bool, str]:
    """(whether calls on `device` are measured, why)."""
    mode = settings()["mode"]
    if mode == "off":
        return False, "autotuning is off (fused_rnn.autotune / FUSED_RNN_AUTOTUNE)"
    own = policy.tables().get(device.name)
    if mode == "on":
        return True, "autotuning is on for every device"
    if own is not None:
        return False, (f"{os.path.basename(own[1])} is calibrated for {device.name} "
                       "(fused_rnn.autotune('on') measures anyway)")
    return True, f"no calibrated table for {device.name}"


# ---------------------------------------------------------------------------- keys


def bucket(n: int, top: int | None = None) -> int:
    """The power of two >= n (at least 1; at most `top`, where given)."""
    b = 1 << max(0, int(n) - 1).bit_length()
    return b if top is None else min(b, top)


@dataclasses.dataclass(frozen=True)
class Key:
    mode: str  # LSTM, GRU, RNN_TANH, RNN_RELU
    dtype: str  # policy.DTYPE_KEYS
    training: bool
    num_layers: int
    hidden_size: int
    input_size: int
    bidirectional: bool
    seq_bucket: int
    batch_bucket: int
    graphed: bool

    def text(self) -> str:
        return (f"{self.mode} {self.dtype} {'train' if self.training else 'infer'} "
                f"L={self.num_layers} H={self.hidden_size} I={self.input_size} "
                f"{'bi' if self.bidirectional else 'uni'} T<={self.seq_bucket}"
                f"{'+' if self.seq_bucket == T_MAX else ''} B<={self.batch_bucket} "
                f"{'graphed' if self.graphed else 'eager'}")


def make_key(mode, dtype_key, training, num_layers, H, I, bidirectional, T, B, graphed) -> Key:
    return Key(mode, dtype_key, bool(training), int(num_layers), int(H), int(I),
               bool(bidirectional), bucket(T, T_MAX), bucket(B), bool(graphed))


# --------------------------------------------------------------------------- cache


def _warn_once(tag, message, category, _seen=set()):  # noqa: B006 - the set is the memory
    if tag not in _seen:
        _seen.add(tag)
        warnings.warn(message, category, stacklevel=4)


def _slug(s: str) -> str:
    return policy.device_slug(str(s))


def _source_hash() -> str:
    """The csrc/ hash of the loaded extension, else of the sources (never loads or builds
    the extension: backend_info(load=False) asks too)."""
    from . import _build

    ext = _build._state.get("module")
    h = getattr(ext, "source_hash", None) if ext is not None else None
    return str(h or _build.source_hash())


class Cache:
    """The measurements of one device: in memory, and in `path` (None: memory only)."""

    def __init__(self, device: Device, path: str | None):
        self.device, self.path = device, path
        self.entries: dict = {}
        self.failed: dict = {}  # key text -> why its measurement failed (this process only)
        self.disk_error: str | None = None
        self.reload()

    def header(self) -> dict:
        cap = list(self.device.capability) if self.device.capability else None
        return {"format": FORMAT, "device": self.device.name, "capability": cap,
                "sm_count": self.device.sm_count, "torch": torch.__version__,
                "csrc": _source_hash()}

    def _read(self) -> dict:
        """The file's entries ({} when absent; a file that is not a valid cache: {} and a
        warning)."""
        if self.path is None or not os.path.exists(self.path):
            return {}
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            if not isinstance(data, dict) or data.get("format") != FORMAT \
                    or not isinstance(data.get("entries"), dict) \
                    or not all(isinstance(v, dict) and v.get("choice") in ("fused", "native")
                               and isinstance(v.get("why"), str)
                               for v in data["entries"].values()):
                raise ValueError(f"not a fused_rnn autotune cache of format {FORMAT}")
            return data["entries"]
        except Exception as e:  # noqa: BLE001 - whatever is wrong with it, never a call
            _warn_once(("corrupt", self.path), f"fused_rnn: ignoring the autotune cache "
                       f"{self.path} ({type(e).__name__}: {e}); calls measure again and the "
                       "next measurement rewrites it", AutotuneCacheWarning)
            return {}

    def reload(self) -> None:
        """Take in what other processes wrote (this process's entries win)."""
        found = self._read()
        found.update(self.entries)
        self.entries = found

    def get(self, key: Key):
        return self.entries.get(key.text())

    def put(self, key: Key, record: dict) -> None:
        record = dict(record, key=dataclasses.asdict(key))
        self.entries[key.text()] = record
        if self.path is None:
            return
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with _file_lock(self.path + ".lock"):
                on_disk = self._read()
                on_disk[key.text()] = record
                data = dict(self.header(), entries=on_disk)
                fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path), prefix=".autotune-",
                                           suffix=".tmp")
                try:
                    with os.fdopen(fd, "w", encoding="utf-8") as f:
                        json.dump(data, f, indent=1, sort_keys=True, allow_nan=False)
                        f.write("\n")
                        f.flush()
                        os.fsync(f.fileno())
                    os.replace(tmp, self.path)  # atomic: readers see the old or the new file
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise
            for k, v in on_disk.items():  # what others wrote; this process's entries win
                self.entries.setdefault(k, v)
        except (OSError, ValueError, TypeError) as e:  # never a failed call for the cache
            self.disk_error = f"{type(e).__name__}: {e}"
            _warn_once(("write", self.path), f"fused_rnn: cannot write the autotune cache "
                       f"{self.path} ({self.disk_error}); measurements stay in memory",
                       AutotuneCacheWarning)


@contextlib.contextmanager
def _file_lock(path: str):
    """An exclusive lock between processes (fcntl.flock; none where fcntl is missing: the
    atomic rename still keeps the file whole, a concurrent write may then drop an entry)."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def cache_path(device: Device, cache_dir: str | None) -> str | None:
    if cache_dir is None:
        return None
    cap = "".join(map(str, device.capability)) if device.capability else "unknown"
    name = (f"{_slug(device.name)}-sm{cap}-{device.sm_count or 'unknown'}sms-torch"
            f"{_slug(torch.__version__)}-csrc{_source_hash()[:12]}.json")
    return os.path.join(cache_dir, "autotune", name)


_CACHES: dict = {}  # (device, cache folder) -> Cache


def cache_for(device: Device) -> Cache:
    with _LOCK:
        folder = settings()["cache_dir"]
        c = _CACHES.get((device, folder))
        if c is None:
            c = _CACHES[(device, folder)] = Cache(device, cache_path(device, folder))
        return c


def clear(disk: bool = False) -> None:
    """Forget every measurement (``disk=True``: also delete this configuration's cache files
    of the devices measured in this process)."""
    with _LOCK:
        if disk:
            for c in _CACHES.values():
                if c.path is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(c.path)
        _CACHES.clear()
        RECENT.clear()


RECENT: collections.deque = collections.deque(maxlen=16)  # the last measurements, newest last


# ---------------------------------------------------------------------- measuring


@dataclasses.dataclass
class Spec:
    """One call's shape and options: what a measurement builds its scratch tensors from."""
    mode: str
    device: torch.device
    dtype: torch.dtype
    T: int
    B: int
    I: int
    H: int
    num_layers: int
    bidirectional: bool
    has_biases: bool
    dropout: float
    training: bool


def _scratch(spec: Spec, T: int, B: int, g: torch.Generator, dtype=None):
    """(x, weights, h0, c0, grad_out) of the call's shape, from generator `g`: the weights
    are those of an nn module of the call's configuration (on a GPU in one buffer, in
    cuDNN's layout, as nn's modules keep theirs: otherwise cuDNN would copy them at every
    call and the native time would be nn's plus a copy), drawn as nn draws them (uniform in
    +-1/sqrt(H)) from `g`. The module's own initialisation draws from torch's generator,
    whose state measure() restores."""
    from torch import nn

    dtype = dtype or spec.dtype
    cls = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN_TANH": nn.RNN, "RNN_RELU": nn.RNN}[spec.mode]
    extra = {"nonlinearity": "relu"} if spec.mode == "RNN_RELU" else {}
    module = cls(spec.I, spec.H, spec.num_layers, bias=spec.has_biases,
                 bidirectional=spec.bidirectional, device=spec.device, dtype=dtype, **extra)
    k = 1.0 / math.sqrt(spec.H)
    kw = dict(device=spec.device, dtype=torch.float32)
    weights = [w.detach() for w in module._flat_weights]
    with torch.no_grad():
        for w in weights:  # copy_: the flat buffer stays
            w.copy_((torch.rand(w.shape, generator=g, **kw) * 2 - 1).mul_(k))
    D = 2 if spec.bidirectional else 1
    x = torch.randn(T, B, spec.I, generator=g, **kw).to(dtype)
    h0 = torch.zeros(spec.num_layers * D, B, spec.H, device=spec.device, dtype=dtype)
    c0 = h0.clone() if spec.mode == "LSTM" else None
    gout = torch.randn(T, B, D * spec.H, generator=g, **kw).to(dtype) if spec.training else None
    return x, weights, h0, c0, gout


def _make_step(spec: Spec, path: str, tensors, dropout: float):
    """A function running one call of `path` ("fused" or "native") on the scratch tensors;
    returns (output, hy, cy, grads or None)."""
    from . import functional

    x, weights, h0, c0, gout = tensors
    # (dropout > 0: the module is in training mode, with or without a gradient)
    opts = dict(num_layers=spec.num_layers, bidirectional=spec.bidirectional,
                has_biases=spec.has_biases, dropout=dropout, train=spec.training or dropout > 0)
    inputs = [x, *weights]
    if spec.training:
        inputs = [t.detach().requires_grad_(True) for t in inputs]

    def step():
        with torch.set_grad_enabled(spec.training):
            xi, ws = inputs[0], inputs[1:]
            if path == "fused":
                out, hy, cy, _, _ = functional.run(spec.mode, xi, ws, h0, c0, path="fused",
                                                   **opts)
            else:
                out, hy, cy = functional._native(spec.mode, xi, ws, h0, c0, None,
                                                 batch_first=False, **opts)
            grads = None
            if spec.training:
                grads = torch.autograd.grad(out, inputs, gout, allow_unused=True)
        return out.detach(), hy.detach(), None if cy is None else cy.detach(), grads
    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, label: str, device: torch.device) -> float:
    """Milliseconds of one fn() (CUDA events on the current stream; wall time on a CPU).
    ``label`` ("fused" / "native", "graphed_..."): tests replace this function with a fake
    clock keyed on it."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    import time

    t0 = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - t0)


def graph_step(fn, device: torch.device):
    """fn captured in a CUDA graph (warm-up on a side stream, as users capture): returns
    the graph's replay. Tests replace this function (a CPU has no graphs)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def _time_pair(steps: dict, device, prefix: str = "") -> dict:
    """{label: median ms} of the steps, timed in alternation after one warm-up each."""
    import time

    t0 = time.perf_counter()
    for fn in steps.values():
        fn()
    _sync(device)
    once = max(time.perf_counter() - t0, 1e-6)
    runs = max(RUNS[0], min(RUNS[1], int(RUN_BUDGET_S / once)))
    times = {label: [] for label in steps}
    for _ in range(runs):
        for label, fn in steps.items():
            times[label].append(time_ms(fn, prefix + label, device))
    return {label: statistics.median(t) for label, t in times.items()}


def _err(got, ref) -> float:
    """max |got - ref| / max(1, max |ref|), in float64 (the GPU tests' measure); inf where
    `got` is missing and `ref` is not."""
    if ref is None:
        return 0.0
    if got is None:
        return math.inf
    ref = ref.double()
    return float((got.double() - ref).abs().max()) / max(1.0, float(ref.abs().max()))


CHECK_T = 64  # the first-use check's longest sequence (the same plan; a shorter float64 run)


def check(spec: Spec, dtype_key: str, T: int, B: int) -> dict:
    """The first-use check: fused and native at dropout 0 on the same scratch tensors, each
    against a float64 native run; every output (and gradient, in training) must have a fused
    error <= 2 x native's + the floor. {"ok": bool, "detail": str}."""
    g = torch.Generator(device=spec.device)
    g.manual_seed(0x5EED)
    tensors = _scratch(spec, T, B, g)
    ref_tensors = [None if t is None else
                   ([w.double() for w in t] if isinstance(t, list) else t.double())
                   for t in tensors]
    try:
        fused = _make_step(spec, "fused", tensors, 0.0)()
    except Exception as e:  # noqa: BLE001 - the fused kernel failed to run here
        if _out_of_memory(e):
            raise
        return {"ok": False, "detail": f"the fused kernel failed: {type(e).__name__}: "
                f"{_one_line(e)}"}
    native = _make_step(spec, "native", tensors, 0.0)()  # (a failure here: not fused's)
    ref = _make_step(spec, "native", ref_tensors, 0.0)()
    names = ["output", "h_n", "c_n"]
    pairs = list(zip(names, fused[:3], native[:3], ref[:3], [FWD_FLOOR[dtype_key]] * 3))
    if spec.training:
        gnames = ["grad input"] + [f"grad weights[{i}]" for i in range(len(fused[3]) - 1)]
        pairs += zip(gnames, fused[3], native[3], ref[3], [BWD_FLOOR[dtype_key]] * len(gnames))
    worst = None
    for name, f, n, r, floor in pairs:
        if r is None:
            continue
        ef, en = _err(f, r), _err(n, r)
        bound = 2 * en + floor
        if not ef <= bound:  # NaN fails too
            return {"ok": False, "detail": f"{name}: fused error {ef:.3g} > 2 x native's "
                    f"{en:.3g} + {floor:g} (float64 reference, dropout 0, T={T}, B={B})"}
        if worst is None or ef / bound > worst[1]:
            worst = (name, ef / bound)
    return {"ok": True, "detail": f"every output{' and gradient' if spec.training else ''} "
            f"within 2 x native's error + floor (closest: {worst[0]} at {worst[1]:.2f} of its "
            f"bound; T={T}, B={B})" if worst else "nothing to compare"}


def measure(spec: Spec, key: Key, device: Device, graphs: bool) -> dict:
    """Time both paths on scratch tensors of the key's bucket (and check the fused result on
    an unverified device); the cache record of `key` (and, with `graphs`, of its graphed
    twin, under "graphed")."""
    T, B = key.seq_bucket, key.batch_bucket
    dev = spec.device
    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "timed_at": {"T": T, "B": B}, "margin": MARGIN}
    rng_devices = [dev.index or 0] if dev.type == "cuda" else []
    autocast_off = (torch.autocast(dev.type, enabled=False) if dev.type in ("cuda", "cpu")
                    else contextlib.nullcontext())
    # identity saved-tensor hooks, innermost: the user's (torch.utils.checkpoint,
    # save_on_cpu) see nothing of the scratch runs
    identity = torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)
    with torch.random.fork_rng(devices=rng_devices), autocast_off, identity:
        if not verified(device):
            record["check"] = check(spec, key.dtype, min(T, CHECK_T), B)
            if not record["check"]["ok"]:
                record.update(choice="native", fused_ms=None, native_ms=None,
                              why="the first-use check failed on this device: "
                              + record["check"]["detail"])
                return record
        else:
            record["check"] = {"ok": True, "detail": f"not run: {device.name} is GPU-verified"}
        g = torch.Generator(device=dev)
        g.manual_seed(0x7157)
        tensors = _scratch(spec, T, B, g)
        steps = {p: _make_step(spec, p, tensors, spec.dropout) for p in ("fused", "native")}
        ms = _time_pair(steps, dev)
        record.update(_verdict(ms["fused"], ms["native"]))
        if graphs:
            try:
                replays = {p: graph_step(fn, dev) for p, fn in steps.items()}
                gms = _time_pair(replays, dev, "graphed_")
                record["graphed"] = dict(_verdict(gms["fused"], gms["native"]),
                                         check=record["check"])
            except Exception as e:  # noqa: BLE001 - capture failed: no graphed entry
                if _out_of_memory(e):
                    raise
                record["graphed_error"] = f"{type(e).__name__}: {_one_line(e)}"
    return record


def _verdict(fused_ms: float, native_ms: float) -> dict:
    choice = "fused" if fused_ms <= MARGIN * native_ms else "native"
    return {"choice": choice, "fused_ms": round(fused_ms, 5), "native_ms": round(native_ms, 5),
            "why": f"fused {fused_ms:.3g} ms {'<=' if choice == 'fused' else '>'} {MARGIN:g} x "
                   f"native {native_ms:.3g} ms"}


def _out_of_memory(e: Exception) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e)


def _one_line(e: Exception) -> str:
    s = str(e).strip().splitlines()
    return s[0][:300] if s else ""


def foreign_modes() -> bool:
    """Whether a torch dispatch mode (FakeTensorMode, FlopCounterMode, ...) or a torch
    function mode other than ``with torch.device(...)`` is active: a measurement would run
    under it (fake tensors, counted FLOPs), so none is made."""
    try:
        from torch.utils._python_dispatch import _get_current_dispatch_mode

        if _get_current_dispatch_mode() is not None:
            return True
        if torch._C._is_torch_function_mode_enabled():
            from torch.overrides import _get_current_function_mode_stack
            from torch.utils._device import DeviceContext

            return any(not isinstance(m, DeviceContext)
                       for m in _get_current_function_mode_stack())
    except Exception:  # noqa: BLE001 - cannot tell: do not measure
        return True
    return False


# ------------------------------------------------------------------------ choose


def _label(record: dict, key: Key, device: Device, fresh: bool) -> str:
    how = "measured now" if fresh else "cached"
    check = record.get("check")
    if isinstance(check, dict) and check.get("ok") is False:
        return (f"autotune disabled the fused path on {device.name} for {key.text()} "
                f"({record['why']})")
    at = record.get("timed_at")
    at = f", timed at T={at.get('T')} B={at.get('B')}" if isinstance(at, dict) else ""
    return f"autotuned on {device.name} ({how}, {key.text()}{at}): {record['why']}"


def choose(spec: Spec, key: Key, may_measure: bool) -> tuple[str, str] | None:
    """("fused" | "native", why) from the cache, or from a measurement made now where
    autotuning is active and `may_measure`; None: no answer (the table or the model
    decides)."""
    device = device_facts(spec.device.index or 0)  # dispatch names the index
    on, _ = active(device)
    if not on:
        return None
    with _LOCK:
        cache = cache_for(device)
        record = cache.get(key)
        if record is None and may_measure and key.text() not in cache.failed:
            cache.reload()  # another process may have measured it
            record = cache.get(key)
            if record is None:
                return _measure_and_store(spec, key, device, cache)
        if record is None:
            return None
        return record["choice"], _label(record, key, device, fresh=False)


def cached_for_shape(device_index: int, key: Key) -> tuple:
    """The cached decisions for `key`'s shape in every (T bucket, B bucket), without
    measuring: ((seq_bucket, batch_bucket, choice, why), ...), for a torch.compile trace,
    which may not know T and B (it compares them with the buckets). () where autotuning is
    not active."""
    device = device_facts(device_index)
    if not active(device)[0]:
        return ()
    fields = dataclasses.asdict(key)
    del fields["seq_bucket"], fields["batch_bucket"]
    found = []
    with _LOCK:
        for text, record in cache_for(device).entries.items():
            k = record.get("key")
            if not isinstance(k, dict) or any(k.get(f) != v for f, v in fields.items()):
                continue
            try:
                found.append((int(k["seq_bucket"]), int(k["batch_bucket"]), record["choice"],
                              _label(record, Key(**k), device, fresh=False)))
            except (KeyError, TypeError, ValueError):
                continue
    return tuple(sorted(found))


def _measure_and_store(spec, key, device, cache):
    graphs = settings()["graphs"] and not key.graphed
    try:
        record = measure(spec, key, device, graphs)
    except Exception as e:  # noqa: BLE001 - never a failed call for a measurement
        # (out of memory at the bucket's top, or a path failing on the scratch tensors):
        # undecided, the table or the model decides; measured again in the next process
        # (remembered in memory: not again in this one)
        error = f"{type(e).__name__}: {_one_line(e)}"
        RECENT.append({"key": key.text(), "error": error})
        cache.failed[key.text()] = error  # not again in this process
        _warn_once(("failed", device.name, key.text()), f"fused_rnn: autotuning could not "
                   f"measure {key.text()} on {device.name} ({error}); the crossover table or "
                   "the performance model decides these calls", UserWarning)
        return None
    graphed = record.pop("graphed", None)
    cache.put(key, record)
    if graphed is not None:
        graphed.update(date=record["date"], timed_at=record["timed_at"], margin=MARGIN)
        cache.put(dataclasses.replace(key, graphed=True), graphed)
    RECENT.append({"key": key.text(), **record})
    if record.get("check", {}).get("ok") is False:
        _warn_once(("mismatch", device.name, key.text()),
                   f"fused_rnn: {_label(record, key, device, True)}; torch's own implementation "
                   "runs these calls (fused_rnn.backend_info()['autotune'] lists them)",
                   FusedMismatchWarning)
    return record["choice"], _label(record, key, device, fresh=True)


def info(device: Device | None = None) -> dict:
    """What ``fused_rnn.backend_info()["autotune"]`` shows (of `device`: device_facts(...);
    None: no CUDA device, the settings only)."""
    s = settings()
    with _LOCK:
        recent = list(RECENT)
    out = {"mode": s["mode"], "graphs": s["graphs"], "cache_dir": s["cache_dir"],
           "active": None, "why": None, "cache_file": None, "disk_error": None,
           "entries": {}, "disabled": [], "failed": {}, "recent": recent}
    if device is None:
        return out
    out["active"], out["why"] = active(device)
    out["verified_device"] = verified(device)
    with _LOCK:
        c = cache_for(device)
        out["cache_file"], out["disk_error"] = c.path, c.disk_error
        out["entries"], out["failed"] = dict(c.entries), dict(c.failed)
    out["disabled"] = sorted(k for k, r in c.entries.items()
                             if isinstance(r.get("check"), dict) and r["check"].get("ok") is False)
    return out
