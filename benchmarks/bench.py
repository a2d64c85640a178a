"""fused_rnn vs torch.nn (cuDNN): time, memory, and which path actually ran.

    python benchmarks/bench.py --quick        # acceptance shapes, under ~2 min on an H100
    python benchmarks/bench.py                # the full sweep (hours)
    python benchmarks/bench.py --cell LSTM --layers 4 --hidden 512 --batch 32 --seq 512 \
        --dtype bf16 --mode train --dropout 0   # one shape (each flag takes a comma list)
    python benchmarks/bench.py --quick --floors # also the barrier / cuDNN-step floors
    python benchmarks/bench.py --calibrate    # GPU: measure the crossover table `auto` reads

On a GPU, per case, in one process, on the same weights (one state_dict copied
into every module) and the same inputs: torch.nn (cuDNN); the fused_rnn module
as users get it (its default policy, "auto": the path it chose and its time,
`auto_vs_cudnn`); the fused kernel forced (`fused_rnn.backend("fused")`;
"uncovered", with the kernel's reason, where it cannot run); and, for small
shapes, the reference loop (`fused_rnn.reference`). Results go to
benchmarks/results/<device>/ (or --out): results.json, results.csv,
results.md and plots.

The forward and backward kernels have two synchronisation policies, chosen
per call by FUSED_RNN_SYNC (grid: one grid.sync() per wave step; flags:
point-to-point step counters; unset = auto = flags). The forced-fused timing (`fused_ms`,
and the speedup) is under the policy the environment asks for (normally the
default); the policy it ran goes to `default_sync`, its time also to
`fused_<policy>_ms`. The other policy is timed too, in the same process on
the same inputs (FUSED_RNN_SYNC set around its calls only, and restored after):
`fused_flags_ms`, `fused_grid_ms` and their time ratios to cuDNN,
`fused_flags_vs_cudnn`, `fused_grid_vs_cudnn`. That costs one more timed
implementation per case, so --quick (whose time budget scripts/gpu_check.sh
fixes) compares them in inference cases only (--sync-compare infer), the full
sweep in every case (all; in training both kernels follow the variable);
--sync-compare none: the default's only.

Without a GPU it checks fused_rnn against torch.nn on CPU: the module under
its default policy (torch's own path there: bit-identical, and its time ratio
to nn) and the reference path forced (within tolerance), then measures the CPU
speed target (LSTM L=2 H=256 B=16 T=100, one thread, interleaved runs). It
writes nothing unless --out is given, and says that GPU speed needs a GPU.

--calibrate (GPU only) walks each (dtype, cell, layers, hidden) up the batch
sizes, inference and training, timing the forced-fused module against cuDNN
(10 runs each by default), and stops a series at the first batch where fused
takes more than --margin (0.95) of cuDNN's time. The largest batch below that
is what `auto` runs fused; the table goes to
fused_rnn/crossover/<device>.json (--out: another folder), in the format
fused_rnn/policy.py documents. With --time-budget the table holds only the
shapes whose series completed, and says it is incomplete. It measures the
default synchronisation policy (FUSED_RNN_SYNC as the environment has it:
unset = auto), as users get it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import faulthandler
import functools
import itertools
import json
import math
import os
import re
import sys
import time
import warnings

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import report  # noqa: E402

DEVICE = "cuda"  # tests/test_bench.py points this at "cpu" to run the sweep logic with CUDA faked
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
OP_MODE = {"LSTM": "LSTM", "GRU": "GRU", "RNN": "RNN_TANH"}  # fused_rnn.reference's mode names
DTYPES = {  # name -> (torch dtype, TF32 allowed for cuDNN and matmuls; None: not float32)
    "tf32": (torch.float32, True),
    "fp32": (torch.float32, False),
    "bf16": (torch.bfloat16, None),
    "fp16": (torch.float16, None),
}
# Dense tensor-core (and fp32 FMA) peaks in TFLOP/s: NVIDIA datasheet figures, not measured.
PEAK_SOURCE = "NVIDIA datasheet, dense (no sparsity), SXM parts: H100 SXM and H200"
PEAK_TFLOPS = {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0}
FLOP_CONVENTION = ("forward FLOPs = 2*B*T*sum_l (in_l + H)*G*H (G = 4 LSTM, 3 GRU, 1 RNN; "
                   "gate matmuls only, unidirectional); training (forward + backward) = 3x forward")

# FUSED_RNN_SYNC's explicit policies (csrc/torch/problem.h), as plan labels name them:
# "..., 514 wave steps, flags sync (ring 4), ..."
SYNC_POLICIES = ("flags", "grid")
SYNC_COMPARE = ("all", "infer", "none")  # --sync-compare: where the second policy is timed too

FULL = dict(cell=["LSTM", "GRU"], layers=[1, 2, 4], hidden=[128, 256, 512, 1024],
            batch=[1, 8, 32, 128, 512], seq=[128, 512], dtype=list(DTYPES),
            mode=["infer", "train"], dropout=[0.0, 0.2])


def peak_tflops(device: str, dtype: str) -> float | None:
    """Datasheet peak for the dtype on H100 SXM / H200; None on any other device."""
    name = device.upper()
    known = ("H200" in name and "NVL" not in name) or ("H100" in name and ("SXM" in name or "HBM3" in name))
    return PEAK_TFLOPS[dtype] if known else None


def forward_flops(cell: str, layers: int, hidden: int, batch: int, seq: int, input_size: int) -> int:
    """2*B*T*sum_l (in_l + H)*G*H: the gate matmuls of a unidirectional stack."""
    width = sum((input_size if l == 0 else hidden) + hidden for l in range(layers))
    return 2 * batch * seq * width * GATES[cell] * hidden


def case_flops(c: "Case") -> int:
    f = forward_flops(c.cell, c.layers, c.hidden, c.batch, c.seq, c.hidden)
    return 3 * f if c.mode == "train" else f


# ----------------------------------------------------------------- the cases


@dataclasses.dataclass(frozen=True)
class Case:
    cell: str
    layers: int
    hidden: int
    batch: int
    seq: int
    dtype: str
    mode: str  # "infer" (eval, no_grad) or "train" (forward + backward)
    dropout: float = 0.0

    def label(self) -> str:
        m = self.mode + (f" p={self.dropout:g}" if self.dropout else "")
        return f"{self.cell} L={self.layers} H={self.hidden} B={self.batch} T={self.seq} {self.dtype} {m}"


@dataclasses.dataclass
class Result:
    cell: str
    layers: int
    hidden: int
    batch: int
    seq: int
    input_size: int
    dtype: str
    mode: str
    dropout: float
    status: str = ""  # the fused kernel's: ok | uncovered | mismatch | skipped | error
    reason: str = ""
    fused_backend: str = ""  # the label of the forced-fused call: the kernel's plan
    auto_backend: str = ""  # the label of the call under the default policy: the path users get
    auto_ms: float | None = None
    auto_ms_min: float | None = None
    auto_ms_max: float | None = None
    auto_vs_cudnn: float | None = None  # auto_ms / cudnn_ms; target <= report.AUTO_TARGET
    fused_ms: float | None = None  # the forced kernel under the environment's (default) policy
    fused_ms_min: float | None = None
    fused_ms_max: float | None = None
    default_sync: str = ""  # the policy the fused_ms calls ran ("flags" | "grid"), from its label
    # the forced kernel under each FUSED_RNN_SYNC policy: the default's is fused_ms again; the
    # other's is timed only where --sync-compare says (else None)
    fused_flags_ms: float | None = None
    fused_flags_ms_min: float | None = None
    fused_flags_ms_max: float | None = None
    fused_grid_ms: float | None = None
    fused_grid_ms_min: float | None = None
    fused_grid_ms_max: float | None = None
    fused_flags_vs_cudnn: float | None = None  # fused_flags_ms / cudnn_ms, where the kernel ran ok
    fused_grid_vs_cudnn: float | None = None  # fused_grid_ms / cudnn_ms, where the kernel ran ok
    cudnn_ms: float | None = None
    cudnn_ms_min: float | None = None
    cudnn_ms_max: float | None = None
    reference_ms: float | None = None
    reference_ms_min: float | None = None
    reference_ms_max: float | None = None
    flashrnn_ms: float | None = None
    flashrnn_ms_min: float | None = None
    flashrnn_ms_max: float | None = None
    speedup_vs_cudnn: float | None = None
    us_per_wave_step: float | None = None
    cudnn_us_per_layer_step: float | None = None
    tokens_per_s_fused: float | None = None
    tokens_per_s_cudnn: float | None = None
    gflop: float | None = None
    tflops_fused: float | None = None
    tflops_cudnn: float | None = None
    peak_tflops: float | None = None
    peak_share_fused: float | None = None
    peak_share_cudnn: float | None = None
    mem_fused_mib: float | None = None
    mem_cudnn_mib: float | None = None
    max_abs_diff_vs_cudnn: float | None = None
    host_syncs_fused: int | None = None
    host_syncs_cudnn: int | None = None
    runs: int = 0
    buffers: int = 0


def normalize(c: Case) -> Case | None:
    """Inference has no dropout; a 1-layer stack has none either (torch applies it between layers)."""
    if c.mode == "infer" or c.layers == 1:
        if c.dropout and c.mode == "train":
            return None
        return dataclasses.replace(c, dropout=0.0)
    return c


def quick_cases() -> list[Case]:
    acc = [Case("LSTM", L, H, B, 512, dt, mode)
           for mode in ("infer", "train") for dt in ("tf32", "bf16")
           for L in (2, 4) for H in (256, 512) for B in (1, 32, 512)]
    extra = [Case("GRU", 2, 512, B, 512, "bf16", mode) for mode in ("infer", "train") for B in (1, 32, 512)]
    extra += [Case("LSTM", 4, 512, 32, 512, dt, "train", 0.2) for dt in ("tf32", "bf16")]
    extra += [Case("LSTM", 2, 256, B, 128, dt, "infer") for dt in ("tf32", "bf16") for B in (1, 32)]
    return acc + extra


def full_cases() -> list[Case]:
    axes = [FULL[k] for k in ("cell", "dtype", "mode", "dropout", "layers", "hidden", "seq", "batch")]
    return [Case(cell, L, H, B, T, dt, mode, p)
            for cell, dt, mode, p, L, H, T, B in itertools.product(*axes)]


def select_cases(args) -> list[Case]:
    """The base sweep (quick or full), each axis given on the command line replaced by its values."""
    cases = quick_cases() if args.quick else full_cases()
    for axis in ("cell", "layers", "hidden", "batch", "seq", "dtype", "mode", "dropout"):
        values = getattr(args, axis)
        if values is not None:
            cases = [dataclasses.replace(c, **{axis: v}) for c in cases for v in values]
    seen, out = set(), []
    for c in cases:
        c = normalize(c)
        if c is not None and c not in seen:
            seen.add(c)
            out.append(c)
    return out


# ------------------------------------------------------------ fused_rnn import


def import_fused_rnn():
    """The installed package, else the one in this checkout."""
    try:
        import fused_rnn
    except ImportError:
        sys.path.insert(0, common.REPO)
        import fused_rnn
    return fused_rnn


def make_modules(fused_rnn, cell, layers, hidden, input_size, dropout, device, dtype):
    """torch.nn module and fused_rnn module holding the very same weights."""
    kw = dict(num_layers=layers, dropout=dropout, device=device, dtype=dtype)
    ref = getattr(nn, cell)(input_size, hidden, **kw)
    fused = getattr(fused_rnn, cell)(input_size, hidden, **kw)
    fused.load_state_dict(ref.state_dict())
    a, b = list(ref.named_parameters()), list(fused.named_parameters())
    if [n for n, _ in a] != [n for n, _ in b] or not all(torch.equal(p, q) for (_, p), (_, q) in zip(a, b)):
        raise RuntimeError("fused module does not hold the same weights as the torch.nn module")
    return ref, fused


def max_abs_diff(a, b) -> float:
    if isinstance(a, tuple):
        return max(max_abs_diff(x, y) for x, y in zip(a, b))
    return (a.double() - b.double()).abs().max().item()


def backend_label(m, train: bool) -> str:
    """What a fused_rnn module ran: its last_backend, plus the backward's path in training."""
    fwd = m.last_backend or "unknown"
    if not train:
        return fwd
    bwd = m.last_backward_backend or "unknown (no gradient was needed)"
    return f"forward {fwd}; backward {bwd}"


def sync_of(label: str, part: str = "forward") -> str | None:
    """The synchronisation policy that a backend label names for the forward kernel ("flags"
    or "grid": "fused: ..., flags sync (ring 4), ..."; in training, the forward's part) or,
    with part="backward", for the backward kernel (a training label's backward part:
    "fused backward: ..., flags sync"); None: another path, or an extension older than
    FUSED_RNN_SYNC (or, for the backward, than its policies)."""
    if label.startswith("forward "):
        fwd, _, bwd = label[len("forward "):].partition("; backward ")
        label = fwd if part == "forward" else bwd
    elif part == "backward":
        return None
    m = re.search(r"\b(" + "|".join(SYNC_POLICIES) + r") sync\b", label)
    return m.group(1) if m else None


def one_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


REFUSAL = "but cannot run this call: "  # fused_rnn.dispatch's error when "fused" is forced
UNCOVERED = "the fused kernel cannot run it: "  # how a note or a calibration stop says so


def uncovered_reason(e: BaseException) -> str | None:
    """Why the fused kernel cannot run a call, when e is fused_rnn's refusal of a forced
    "fused"; None for any other error."""
    text = str(e)
    if not isinstance(e, RuntimeError) or REFUSAL not in text:
        return None
    return text.split(REFUSAL, 1)[1].strip().splitlines()[0]


# ------------------------------------------------------------------ CPU mode


@dataclasses.dataclass
class VsTorch:
    """A CPU comparison's shape and fused_rnn's default path against torch.nn (the fields
    Parity and Acceptance share, first in both)."""
    cell: str
    layers: int
    hidden: int
    batch: int
    seq: int
    dtype: str
    mode: str
    path: str  # the path fused_rnn's module took under its default policy ("native" on CPU)
    backend: str  # its last_backend label (and the backward's, in training)
    identical: bool  # its output, state and gradients equal torch.nn's bit for bit
    fused_rnn_ms: float
    torch_ms: float
    fused_rnn_vs_torch: float


@dataclasses.dataclass
class Parity(VsTorch):
    """One CPU check: fused_rnn's module under its default policy, and the reference path
    forced, against torch.nn on the same weights and input."""
    reference_max_abs_diff_output: float
    reference_max_abs_diff_state: float
    reference_max_abs_diff_grads: float | None
    reference_ms: float
    runs: int
    ok: bool


@dataclasses.dataclass
class Acceptance(VsTorch):
    """The CPU speed target, one mode: fused_rnn (default policy) vs torch.nn, interleaved."""
    target: float
    meets_target: bool
    runs: int
    reference_ms: float  # the reference path forced, against torch.nn timed in its own rounds
    reference_torch_ms: float
    reference_vs_torch: float
    reference_runs: int


CPU_DTYPES = {"fp32": (torch.float32, 1e-4), "fp64": (torch.float64, 1e-10)}  # dtype, tolerance
# The CPU speed target: fused_rnn.LSTM / nn.LSTM time <= SPEED_TARGET on this shape, one thread.
ACCEPT_SHAPE = dict(cell="LSTM", layers=2, hidden=256, batch=16, seq=100)
SPEED_TARGET = report.AUTO_TARGET
REFERENCE_BUDGET_S = 3.0  # per mode: the reference stack is slow on CPU and its ratio is context


@contextlib.contextmanager
def cpu_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def interleaved_ms(fns, runs: int, budget_s: float | None = None) -> list[list[float]]:
    """Milliseconds of each of `fns` over `runs` rounds, a round calling each once in turn
    (fns[0], fns[1], ..., fns[0], ...: a shared machine's drift falls on all of them alike),
    after one untimed round. With budget_s, the rounds stop once that many seconds have
    passed (after at least one)."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    start = time.perf_counter()
    for _ in range(runs):
        for fn, t in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            t.append(1e3 * (time.perf_counter() - t0))
        if budget_s is not None and time.perf_counter() - start > budget_s:
            break
    return times


def median(times: list[float]) -> float:
    return common.stats(times)[0]


def cpu_case(fused_rnn, cell, layers, hidden, batch, seq, dtype, train: bool):
    """(nn module, fused_rnn module, input, output gradient) on CPU, same weights, dropout 0."""
    torch.manual_seed(0)
    ref, fused = make_modules(fused_rnn, cell, layers, hidden, hidden, 0.0, "cpu", dtype)
    ref.train(train)
    fused.train(train)
    x = torch.randn(seq, batch, hidden, dtype=dtype, requires_grad=train)
    return ref, fused, x, torch.randn(seq, batch, hidden, dtype=dtype)


def cpu_call(m, x, gout, train: bool, context=contextlib.nullcontext):
    """(output, state, gradients of input and parameters or None) of one call of m; the
    state as a tuple (h, or h and c)."""
    with context(), torch.set_grad_enabled(train):
        out, state = m(x)
        grads = torch.autograd.grad(out, [x, *m.parameters()], gout) if train else None
    state = tuple(s.detach() for s in (state if isinstance(state, tuple) else (state,)))
    return out.detach(), state, grads


def identical(a, b) -> bool:
    """Whether two cpu_call results are equal bit for bit (output, state, gradients)."""
    flat = [(a[0], b[0]), *zip(a[1], b[1]), *zip(a[2] or (), b[2] or ())]
    return all(torch.equal(x, y) for x, y in flat)


def worst_diff(a, b) -> float:
    return max(max_abs_diff(a[0], b[0]), max_abs_diff(a[1], b[1]),
               max_abs_diff(a[2], b[2]) if a[2] is not None else 0.0)


def cpu_parity(fused_rnn, cell, layers, hidden, batch, seq, dtype_name, mode, runs) -> Parity:
    """fused_rnn's module as users get it runs torch's own path on CPU: bit-identical to
    torch.nn (on any other path: within the tolerance). The reference path forced: within
    the tolerance. Times: medians of `runs` interleaved rounds (nn, fused_rnn, reference)."""
    dtype, tol = CPU_DTYPES[dtype_name]
    train = mode == "train"
    ref, fused, x, gout = cpu_case(fused_rnn, cell, layers, hidden, batch, seq, dtype, train)
    call = functools.partial(cpu_caller, x=x, gout=gout, train=train)
    forced = functools.partial(fused_rnn.backend, "reference")
    want, got = call(ref)(), call(fused)()
    label = backend_label(fused, train)
    path = report.path_of(label)
    same = identical(want, got)
    default_ok = same if path == "native" else worst_diff(want, got) <= tol
    r = call(fused, forced)()
    t_nn, t_fused, t_ref = interleaved_ms([call(ref), call(fused), call(fused, forced)], runs)
    nn_ms, fused_ms = median(t_nn), median(t_fused)
    return Parity(cell, layers, hidden, batch, seq, dtype_name, mode, path, label, same, fused_ms,
                  nn_ms, fused_ms / nn_ms, max_abs_diff(want[0], r[0]), max_abs_diff(want[1], r[1]),
                  max_abs_diff(want[2], r[2]) if train else None, median(t_ref), runs,
                  bool(default_ok and worst_diff(want, r) <= tol))


def cpu_caller(m, context=contextlib.nullcontext, *, x, gout, train: bool):
    """A no-argument call of cpu_call (what interleaved_ms times)."""
    return lambda: cpu_call(m, x, gout, train, context)


def cpu_acceptance(fused_rnn, runs: int, shape: dict,
                   reference_budget_s: float = REFERENCE_BUDGET_S) -> list[Acceptance]:
    """The CPU speed target on `shape` (ACCEPT_SHAPE), fp32, one thread, inference (eval,
    no_grad) and training (forward + backward, dropout 0)."""
    with cpu_threads(1):
        return [acceptance_row(fused_rnn, shape, mode, runs, reference_budget_s)
                for mode in ("infer", "train")]


def acceptance_row(fused_rnn, shape: dict, mode: str, runs: int, reference_budget_s: float) -> Acceptance:
    """fused_rnn's module (default policy) vs torch.nn: `runs` interleaved rounds after
    warm-up, medians; then the reference path forced vs torch.nn in fewer rounds (runs // 4,
    at most reference_budget_s seconds: it is slow on CPU, and only context)."""
    train = mode == "train"
    ref, fused, x, gout = cpu_case(fused_rnn, **shape, dtype=torch.float32, train=train)
    call = functools.partial(cpu_caller, x=x, gout=gout, train=train)
    forced = functools.partial(fused_rnn.backend, "reference")
    same = identical(call(ref)(), call(fused)())
    label = backend_label(fused, train)
    t_nn, t_fused = interleaved_ms([call(ref), call(fused)], runs)
    r_nn, r_ref = interleaved_ms([call(ref), call(fused, forced)], max(1, runs // 4), reference_budget_s)
    nn_ms, fused_ms, ref_ms, ref_nn_ms = map(median, (t_nn, t_fused, r_ref, r_nn))
    return Acceptance(**shape, dtype="fp32", mode=mode, path=report.path_of(label), backend=label,
                      identical=same, fused_rnn_ms=fused_ms, torch_ms=nn_ms,
                      fused_rnn_vs_torch=fused_ms / nn_ms, target=SPEED_TARGET,
                      meets_target=fused_ms / nn_ms <= SPEED_TARGET, runs=len(t_fused),
                      reference_ms=ref_ms, reference_torch_ms=ref_nn_ms,
                      reference_vs_torch=ref_ms / ref_nn_ms, reference_runs=len(r_ref))


def parity_table(rows: list[Parity]) -> str:
    header = ["cell", "L", "H", "B", "T", "dtype", "mode", "fused_rnn path", "bit-identical to nn",
              "fused_rnn ms", "torch.nn ms", "fused_rnn / nn", "reference max |Δ| out",
              "reference max |Δ| state", "reference max |Δ| grads", "reference ms", "parity"]
    lines = [[r.cell, r.layers, r.hidden, r.batch, r.seq, r.dtype, r.mode, r.path,
              "yes" if r.identical else "no", report.num(r.fused_rnn_ms), report.num(r.torch_ms),
              f"{r.fused_rnn_vs_torch:.2f}", f"{r.reference_max_abs_diff_output:.1e}",
              f"{r.reference_max_abs_diff_state:.1e}",
              "—" if r.reference_max_abs_diff_grads is None else f"{r.reference_max_abs_diff_grads:.1e}",
              report.num(r.reference_ms), "ok" if r.ok else "FAIL"]
             for r in rows]
    return report.markdown_table(header, lines)


def acceptance_table(rows: list[Acceptance]) -> str:
    header = ["mode", "fused_rnn path", "bit-identical to nn", "fused_rnn ms", "torch.nn ms",
              "fused_rnn / nn", f"target ≤ {SPEED_TARGET:g}", "runs", "reference ms",
              "reference / nn", "reference runs"]
    lines = [[r.mode, r.path, "yes" if r.identical else "no", report.num(r.fused_rnn_ms),
              report.num(r.torch_ms), f"{r.fused_rnn_vs_torch:.3f}",
              "PASS" if r.meets_target else "FAIL", r.runs, report.num(r.reference_ms),
              f"{r.reference_vs_torch:.2f}", r.reference_runs]
             for r in rows]
    return report.markdown_table(header, lines)


def acceptance_text(rows: list[Acceptance]) -> str:
    """The table with what it measured and the verdict, as printed and written to parity.md."""
    s = rows[0]
    shape = f"{s.cell} L={s.layers} H={s.hidden} B={s.batch} T={s.seq} {s.dtype}"
    ratios = ", ".join(f"{r.mode} {r.fused_rnn_vs_torch:.3f}" for r in rows)
    verdict = "PASS" if all(r.meets_target for r in rows) else "FAIL"
    return (f"CPU speed target: fused_rnn.{s.cell} / nn.{s.cell} time ≤ {SPEED_TARGET:g}, {shape}, "
            f"one thread, same weights and input; infer = eval forward under no_grad, train = "
            f"forward + backward (dropout 0); fused_rnn under its default policy; median of "
            f"{s.runs} interleaved runs each (nn, fused_rnn, nn, ...) after warm-up. The reference "
            f"path (forced) is timed in fewer rounds, for context.\n\n{acceptance_table(rows)}\n\n"
            f"speed target fused_rnn / nn ≤ {SPEED_TARGET:g}: {verdict} ({ratios}). Reported, not "
            f"the exit status: timings on a shared machine are noisy.")


def cpu_main(args, fused_rnn) -> int:
    with cpu_threads(1):  # tiny shapes: one thread is fastest and steadiest on a shared machine
        return cpu_checks(args, fused_rnn)


def cpu_checks(args, fused_rnn) -> int:
    info = fused_rnn.backend_info()
    print("No CUDA GPU visible: GPU speed numbers need a GPU (an H100/H200: scripts/gpu_check.sh, "
          "or `python benchmarks/bench.py --quick` there).")
    print(f"fused_rnn extension: {info.get('reason')}")
    print("Checking fused_rnn against torch.nn on CPU, forward and gradients: the module under its "
          "default policy (must be bit-identical on torch's native path) and the reference path "
          "forced (fused_rnn.backend('reference'); within the tolerance); times on CPU:\n")
    cells = args.cell or ["LSTM", "GRU", "RNN"]
    layers = args.layers or [2]
    hidden, batch, seq = args.hidden or [32], args.batch or [4], args.seq or [16]
    modes = args.mode or ["infer", "train"]
    rows = [cpu_parity(fused_rnn, cell, L, H, B, T, dt, mode, args.cpu_runs)
            for cell, L, H, B, T, dt, mode in itertools.product(cells, layers, hidden, batch, seq,
                                                                CPU_DTYPES, modes)]
    table = parity_table(rows)
    print(table)
    bad = [r for r in rows if not r.ok]
    print(f"\nparity: {len(rows) - len(bad)}/{len(rows)} cases ok (fused_rnn's default path "
          f"bit-identical to nn when native; reference within fp32 1e-4, fp64 1e-10; times are "
          f"medians of {args.cpu_runs} interleaved runs, {torch.get_num_threads()} thread; they "
          f"say nothing about GPU speed).\n", flush=True)
    accept = cpu_acceptance(fused_rnn, args.acceptance_runs, ACCEPT_SHAPE)
    text = acceptance_text(accept)
    print(text)
    not_same = [r.mode for r in accept if r.path == "native" and not r.identical]
    if not_same:
        print(f"FAIL: fused_rnn's native path differs from nn.{accept[0].cell} ({', '.join(not_same)})")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        meta = dict(common.environment(), fused_rnn=info, kind="cpu parity")
        common.write_json(os.path.join(args.out, "parity.json"), meta, rows,
                          acceptance=[dataclasses.asdict(r) for r in accept])
        common.write_csv(os.path.join(args.out, "parity.csv"), rows)
        common.write_csv(os.path.join(args.out, "acceptance.csv"), accept)
        with open(os.path.join(args.out, "parity.md"), "w") as f:
            f.write(f"CPU parity run, {meta['date']}, `{meta['command']}`\n\n{table}\n\n{text}\n")
        print(f"wrote {args.out}/parity.json, parity.csv, acceptance.csv, parity.md")
    return 1 if bad or not_same else 0


# ------------------------------------------------------------------ GPU mode


def is_kernel(backend: str) -> bool:
    """Whether a backend label says the fused kernel ran (forward, and backward in training)."""
    if backend.startswith("forward "):
        return backend.startswith("forward fused") and "; backward fused" in backend
    return backend.startswith("fused")


class Skip(Exception):
    """A case (or one implementation of it) that is not run, with the reason."""


def count_host_syncs(step, x) -> int:
    """How many synchronising CUDA calls torch sees during one step(x)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def buffer_count(x_bytes: int) -> int:
    """Input buffers to rotate: enough that two L2s' worth of inputs cycle, 2 to 8."""
    l2 = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 0) or 2**26
    return max(2, min(8, math.ceil(2 * l2 / max(x_bytes, 1))))


def estimate_bytes(c: Case, buffers: int) -> int:
    """Rough upper bound of device memory one case needs (inputs, activations of one implementation)."""
    e = torch.empty((), dtype=DTYPES[c.dtype][0]).element_size()
    io = c.seq * c.batch * c.hidden * e
    params = c.layers * 2 * GATES[c.cell] * c.hidden * c.hidden * e * 2  # two modules
    acts = c.layers * c.seq * c.batch * c.hidden * (GATES[c.cell] + 3) * e
    if c.mode == "train":
        return params * 2 + io * (2 * buffers + 4) + 2 * acts
    return params + io * (buffers + 4) + 2 * c.layers * c.batch * c.hidden * e


def set_precision(dtype_name: str) -> torch.dtype:
    """The torch dtype of a dtype name; for float32, TF32 on or off for cuDNN, cuBLAS and the
    fused kernel alike (which follows torch's cuDNN setting)."""
    dtype, tf32 = DTYPES[dtype_name]
    if tf32 is not None:
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return dtype


def module_step(m, train: bool, gout, context=contextlib.nullcontext):
    """One timed call of m: forward under no_grad, or forward + backward of gout; inside
    context() (e.g. fused_rnn.backend("fused")), which costs a list push and pop."""
    if train:
        def step(x):
            with context():
                torch.autograd.backward(m(x)[0], gout)
    else:
        def step(x):
            with context(), torch.no_grad():
                m(x)
    return step


def grad_dropper(params, xs):
    """prepare() for common.cuda_time: drop the previous run's gradients, on the host."""
    def prepare():
        for t in (*params, *xs):
            t.grad = None
    return prepare


class Runner:
    """Runs the cases of one sweep on the current GPU."""

    def __init__(self, args, fused_rnn):
        self.args, self.fused_rnn = args, fused_rnn
        self.device = torch.cuda.get_device_name()
        self.deadline = None
        self.flashrnn = None
        if not args.no_flashrnn:
            try:
                from flashrnn.flashrnn import flashrnn as fn  # flashrnn 1.x layout
                self.flashrnn = getattr(fn, "flashrnn", fn)
            except ImportError:
                pass

    # -- one implementation ---------------------------------------------------

    def measure(self, name, step, xs, prepare, res: Result) -> None:
        """Warm up, count host syncs, measure memory, then time; fills res.<name>_ms*."""
        a = self.args
        prepare()
        step(xs[0])  # first call: JIT / cuDNN plan / autotuning
        est = common.cuda_time(step, xs, runs=1, warmup=0, prepare=prepare)[0]
        budget = a.case_budget
        if est * (a.runs + a.warmup) / 1e3 > budget:
            raise Skip(f"{name} too slow: {est:.0f} ms per run, {a.runs} runs exceed the "
                       f"per-case budget of {budget:g} s (--case-budget)")
        if name in ("fused", "cudnn"):  # untimed runs of their own
            prepare()
            setattr(res, f"host_syncs_{name}", count_host_syncs(step, xs[0]))
            prepare()
            setattr(res, f"mem_{name}_mib", common.peak_memory_mib(step, xs[0]))
        times = common.cuda_time(step, xs, runs=a.runs, warmup=a.warmup, prepare=prepare)
        med, lo, hi = common.stats(times)
        setattr(res, f"{name}_ms", med)
        setattr(res, f"{name}_ms_min", lo)
        setattr(res, f"{name}_ms_max", hi)

    def measure_auto(self, fused, train, gout, xs, prepare, res: Result) -> None:
        """The module as users get it (its default policy): which path it chose, and its time.
        Where it chose the fused kernel, that is the very call just timed forced: its timing
        is reused (the quick sweep's time budget); any other path is timed."""
        step = module_step(fused, train, gout)
        prepare()
        step(xs[0])
        res.auto_backend = backend_label(fused, train)
        if is_kernel(res.auto_backend) and res.fused_ms is not None:
            res.auto_ms, res.auto_ms_min, res.auto_ms_max = res.fused_ms, res.fused_ms_min, res.fused_ms_max
            return
        self.measure("auto", step, xs, prepare, res)

    def compares_sync(self, c: Case) -> bool:
        """Whether --sync-compare times the second synchronisation policy in this case."""
        mode = self.args.sync_compare
        return mode == "all" or (mode == "infer" and c.mode == "infer")

    def measure_sync_policies(self, c: Case, fused, ref, gout, xs, prepare, res: Result,
                              notes: list) -> None:
        """The forced kernel under each FUSED_RNN_SYNC policy. The default's is the fused_ms
        just measured: the policy its label names (default_sync), its times copied to that
        policy's columns. The other policy is timed here, in the cases --sync-compare
        selects; a failure of it is a note, never the case's status."""
        res.default_sync = sync_of(res.fused_backend) or ""
        if res.default_sync:
            for k in ("", "_min", "_max"):
                setattr(res, f"fused_{res.default_sync}_ms{k}", getattr(res, f"fused_ms{k}"))
        if not self.compares_sync(c):
            return
        if not res.default_sync:
            notes.append("synchronisation policies not compared: the kernel's plan names none "
                         "(an extension older than FUSED_RNN_SYNC?)")
            return
        for policy in SYNC_POLICIES:
            if policy != res.default_sync:
                self.guarded(f"fused_{policy}", functools.partial(
                    self.measure_sync, policy, c, fused, ref, gout, xs, prepare, res), res, notes)

    def measure_sync(self, policy: str, c: Case, fused, ref, gout, xs, prepare, res: Result) -> None:
        """The forced kernel with FUSED_RNN_SYNC=policy around its calls (the previous value
        restored after, whatever happens): its output against cuDNN's (dropout 0: above 0.1 it
        is not timed), then timed as the default's was (fused_<policy>_ms*). Its label must
        name that policy: else the times are dropped and it raises."""
        name = f"fused_{policy}"
        forced = functools.partial(self.fused_rnn.backend, "fused")
        try:
            with common.sync_policy(policy):
                if c.dropout == 0:
                    with forced(), torch.no_grad():
                        diff = max_abs_diff(fused(xs[0]), ref(xs[0]))
                    if not diff <= 0.1:
                        raise RuntimeError(f"output differs from cuDNN by {diff:.3g}")
                self.measure(name, module_step(fused, c.mode == "train", gout, forced), xs, prepare, res)
                label = backend_label(fused, c.mode == "train")
        except RuntimeError as e:
            why = uncovered_reason(e)
            if why is None:
                raise
            raise Skip(f"{name}: {UNCOVERED}{why}") from None
        ran = sync_of(label)
        ran_bwd = sync_of(label, "backward")
        if ran == policy and ran_bwd not in (None, policy):  # a fused backward, another policy
            ran, label = ran_bwd, f"backward: {label}"
        if ran != policy:
            for k in ("", "_min", "_max"):
                setattr(res, f"{name}_ms{k}", None)
            raise RuntimeError(f"FUSED_RNN_SYNC={policy}, but the kernel ran "
                               f"{ran + ' sync' if ran else 'a plan naming no policy'} ({label})")

    def guarded(self, name, fn, res: Result, notes: list) -> bool:
        """Run fn(); an OOM, a Skip, a crash or the fused kernel's refusal of one
        implementation becomes a note, not a crash."""
        try:
            fn()
            return True
        except Skip as e:
            notes.append(str(e))
        except torch.cuda.OutOfMemoryError:
            notes.append(f"{name}: out of memory")
        except Exception as e:  # a crash of one implementation is a result too
            why = uncovered_reason(e)
            notes.append(f"{UNCOVERED}{why}" if why else f"{name}: {one_line(e)}")
        torch.cuda.empty_cache()
        return False

    # -- one case -----------------------------------------------------------------

    def run_case(self, c: Case) -> Result:
        res = Result(c.cell, c.layers, c.hidden, c.batch, c.seq, c.hidden, c.dtype, c.mode, c.dropout,
                     runs=self.args.runs, gflop=case_flops(c) / 1e9,
                     peak_tflops=peak_tflops(self.device, c.dtype))
        if self.deadline is not None and time.monotonic() > self.deadline:
            res.status, res.reason = "skipped", "sweep time budget exhausted (--time-budget)"
            return res
        try:
            self._run_case(c, res)
        except Skip as e:
            res.status, res.reason = "skipped", str(e)
        except torch.cuda.OutOfMemoryError:
            res.status, res.reason = "skipped", "out of memory"
        except Exception as e:  # e.g. the modules cannot be built for this shape
            res.status, res.reason = "error", one_line(e)
        finally:
            torch.cuda.empty_cache()
        return res

    def _run_case(self, c: Case, res: Result) -> None:
        fr = self.fused_rnn
        dtype = set_precision(c.dtype)
        train = c.mode == "train"
        T, B, H, L = c.seq, c.batch, c.hidden, c.layers
        x_bytes = T * B * H * torch.empty((), dtype=dtype).element_size()
        n_buf = buffer_count(x_bytes)
        res.buffers = n_buf
        torch.cuda.empty_cache()
        need, free = estimate_bytes(c, n_buf), torch.cuda.mem_get_info()[0]
        if need > 0.9 * free:
            raise Skip(f"would run out of memory (needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free)")

        torch.manual_seed(0)
        ref, fused = make_modules(fr, c.cell, L, H, H, c.dropout, DEVICE, dtype)
        ref.train(train)
        fused.train(train)
        xs = [torch.randn(T, B, H, device=DEVICE, dtype=dtype, requires_grad=train) for _ in range(n_buf)]
        gout = torch.randn(T, B, H, device=DEVICE, dtype=dtype) if train else None
        prepare = grad_dropper(list(ref.parameters()) + list(fused.parameters()), xs)
        forced = functools.partial(fr.backend, "fused")  # the kernel itself, or its refusal

        def parity():  # same function? (dropout changes the values by design)
            if c.dropout == 0:
                with forced(), torch.no_grad():
                    res.max_abs_diff_vs_cudnn = max_abs_diff(fused(xs[0]), ref(xs[0]))

        notes = []
        fused_ok = self.guarded("fused", parity, res, notes) and self.guarded("fused", lambda: self.measure(
            "fused", module_step(fused, train, gout, forced), xs, prepare, res), res, notes)
        if fused_ok:
            res.fused_backend = backend_label(fused, train)
            self.measure_sync_policies(c, fused, ref, gout, xs, prepare, res, notes)
        self.guarded("auto", lambda: self.measure_auto(fused, train, gout, xs, prepare, res), res, notes)
        self.guarded("cudnn", lambda: self.measure("cudnn", module_step(ref, train, gout), xs, prepare, res),
                     res, notes)
        if self.use_reference(c):
            self.guarded("reference", lambda: self.measure(
                "reference", self.reference_step(ref, c, gout), xs, prepare, res), res, notes)
        if self.flashrnn is not None and c.cell == "LSTM" and L == 1:
            self.guarded("flashrnn", lambda: self.measure(
                "flashrnn", self.flashrnn_step(ref, c), xs, prepare, res), res, notes)
        self.finish(c, res, fused_ok, notes)

    def finish(self, c: Case, res: Result, fused_ok: bool, notes: list) -> None:
        """Status and the derived numbers; the kernel's ratios only where it ran and matched."""
        diff = res.max_abs_diff_vs_cudnn
        if not fused_ok:
            if any(n.startswith(UNCOVERED) for n in notes):
                res.status = "uncovered"
            elif any("too slow" in n or "out of memory" in n for n in notes):
                res.status = "skipped"
            else:
                res.status = "error"
        elif diff is not None and not diff <= 0.1:
            res.status = "mismatch"
            notes.insert(0, f"fused output differs from cuDNN by {diff:.3g}")
            if not math.isfinite(diff):
                res.max_abs_diff_vs_cudnn = None  # JSON has no NaN; the reason keeps it
        else:
            res.status = "ok"
        res.reason = "; ".join(notes)
        tokens = c.batch * c.seq
        flop = case_flops(c)
        if res.cudnn_ms:
            res.cudnn_us_per_layer_step = 1e3 * res.cudnn_ms / (c.seq * c.layers)
            res.tokens_per_s_cudnn = tokens / (res.cudnn_ms / 1e3)
            res.tflops_cudnn = flop / (res.cudnn_ms / 1e3) / 1e12
            if res.peak_tflops:
                res.peak_share_cudnn = res.tflops_cudnn / res.peak_tflops
            if res.auto_ms:  # what users get, whichever path it took
                res.auto_vs_cudnn = res.auto_ms / res.cudnn_ms
        if res.status == "ok" and res.fused_ms:
            res.us_per_wave_step = 1e3 * res.fused_ms / (c.seq + c.layers - 1)
            res.tokens_per_s_fused = tokens / (res.fused_ms / 1e3)
            res.tflops_fused = flop / (res.fused_ms / 1e3) / 1e12
            if res.peak_tflops:
                res.peak_share_fused = res.tflops_fused / res.peak_tflops
            if res.cudnn_ms:
                res.speedup_vs_cudnn = res.cudnn_ms / res.fused_ms
                for policy in SYNC_POLICIES:
                    ms = getattr(res, f"fused_{policy}_ms")
                    if ms:
                        setattr(res, f"fused_{policy}_vs_cudnn", ms / res.cudnn_ms)

    # -- the other implementations -------------------------------------------------

    def use_reference(self, c: Case) -> bool:
        if self.args.reference == "auto":  # the loop launches ~10 kernels per layer and step
            return c.seq * c.layers <= 512 and c.hidden <= 512 and c.batch <= 32
        return self.args.reference == "on"

    def reference_step(self, ref, c: Case, gout):
        """fused_rnn.reference.rnn_forward (the pure-PyTorch stack) on the nn module's weights."""
        fr = self.fused_rnn
        weights = list(ref._flat_weights)
        kw = dict(device=DEVICE, dtype=weights[0].dtype)
        h0 = torch.zeros(c.layers, c.batch, c.hidden, **kw)
        c0 = torch.zeros(c.layers, c.batch, c.hidden, **kw) if c.cell == "LSTM" else None
        p = c.dropout if c.mode == "train" else 0.0

        def forward(x):
            seed = fr.dropout.draw_seed(x.device) if p > 0 else None
            return fr.reference.rnn_forward(x, weights, h0, c0, None, seed, OP_MODE[c.cell], c.layers,
                                            False, True, 0, p, False)[0]

        if c.mode == "train":
            return lambda x: torch.autograd.backward(forward(x), gout)

        def step(x):
            with torch.no_grad():
                forward(x)
        return step

    def flashrnn_step(self, ref, c: Case):
        """FlashRNN (fused CUDA backend), single-layer LSTM. Timing only: the nn weights are
        reshaped into FlashRNN's argument shapes without mapping its gate order and layout."""
        w_ih, w_hh, b_ih, b_hh = [w.detach() for w in ref._flat_weights]
        train, H, B, T = c.mode == "train", c.hidden, c.batch, c.seq
        R = w_hh.reshape(4, 1, H, H).clone().requires_grad_(train)
        b = (b_ih + b_hh).reshape(4, 1, H).clone().requires_grad_(train)
        W = w_ih.clone().requires_grad_(train)
        dt = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[W.dtype]

        def forward(x):  # x (T, B, I); the input projection is part of the timed work, as in cuDNN
            wx = torch.nn.functional.linear(x.transpose(0, 1), W).reshape(B, T, 4, 1, H)
            return self.flashrnn(wx, R, b, function="lstm", backend="cuda_fused", dtype=dt)[0]

        grads = {}  # a fixed output gradient per output shape, made on the first (untimed) call

        if train:
            def train_step(x):
                out = forward(x)
                if out.shape not in grads:
                    grads[out.shape] = torch.randn_like(out)
                torch.autograd.grad(out, [x, W, R, b], grads[out.shape])  # returned, not accumulated
            return train_step

        def step(x):
            with torch.no_grad():
                forward(x)
        return step


def auto_text(r: Result) -> str:
    """'auto (fused) 1.2 ms = 0.48x cuDNN': what users get, against the target."""
    if r.auto_ms is None:
        return "auto —"
    s = f"auto ({report.path_of(r.auto_backend)}) {r.auto_ms:.3g} ms"
    if r.auto_vs_cudnn is not None:
        s += f" = {r.auto_vs_cudnn:.2f}x cuDNN"
        if r.auto_vs_cudnn > report.AUTO_TARGET:
            s += f" (over the {report.AUTO_TARGET:g} target)"
    return s


def sync_text(r: Result) -> str:
    """'flags sync; grid 1.3 ms = 0.52x cuDNN': the forced kernel's policy, and the other
    policy's time where it was timed ('' where the label names no policy)."""
    if not r.default_sync:
        return ""
    parts = [f"{r.default_sync} sync"]
    for policy in SYNC_POLICIES:
        ms = getattr(r, f"fused_{policy}_ms")
        if policy != r.default_sync and ms is not None:
            ratio = getattr(r, f"fused_{policy}_vs_cudnn")
            parts.append(f"{policy} {ms:.3g} ms" + (f" = {ratio:.2f}x cuDNN" if ratio else ""))
    return "; ".join(parts)


def progress_line(i: int, n: int, c: Case, r: Result) -> str:
    def ms(v):
        return "—" if v is None else f"{v:.3g} ms"
    s = f"[{i}/{n}] {c.label()}: "
    if r.status == "skipped" and r.cudnn_ms is None:
        return s + f"skipped ({r.reason})"
    s += f"cuDNN {ms(r.cudnn_ms)}; {auto_text(r)}; fused kernel {ms(r.fused_ms)}"
    extra = [f"speedup {r.speedup_vs_cudnn:.2f}x"] if r.speedup_vs_cudnn else []
    if sync_text(r):
        extra.append(sync_text(r))
    if extra:
        s += f" ({'; '.join(extra)})"
    if r.reference_ms is not None:
        s += f"; reference {ms(r.reference_ms)}"
    if r.status != "ok":
        s += f"  [{r.status}: {r.reason}]"
    return s


def run_sweep(runner: Runner, cases: list[Case], checkpoint=None, case_timeout: float = 0) -> list[Result]:
    """Every case in order, checkpoint(results) after each. A case that runs past
    case_timeout seconds (a hung kernel) ends the process with a traceback (faulthandler);
    the last checkpoint says how far the sweep got. Ctrl-C stops the sweep and keeps the results."""
    tqdm = common.optional("tqdm")
    bar = tqdm.tqdm(total=len(cases), unit="case", dynamic_ncols=True) if tqdm else None
    out = []
    try:
        for i, c in enumerate(cases, 1):
            if bar:
                bar.set_description(c.label())
            if case_timeout:
                faulthandler.dump_traceback_later(case_timeout, exit=True, file=sys.__stderr__)
            r = runner.run_case(c)
            faulthandler.cancel_dump_traceback_later()
            out.append(r)
            line = progress_line(i, len(cases), c, r)
            if bar:
                bar.write(line)
                bar.update()
            else:
                print(line, flush=True)
            if checkpoint:
                checkpoint(out)
    except KeyboardInterrupt:
        faulthandler.cancel_dump_traceback_later()
        print(f"\ninterrupted: keeping the {len(out)} finished cases", flush=True)
    if bar:
        bar.close()
    return out


# -------------------------------------------------------------------- outputs


def _save_figure(plt, fig, out_dir: str, name: str) -> str:
    fig.tight_layout()
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot(results: list[Result], out_dir: str, device: str) -> list[str]:
    """speedup.png (speedup vs batch, per H and dtype) and step_time.png (time per step vs T)."""
    mpl = common.optional("matplotlib")
    if mpl is None:
        print("matplotlib not installed: plots skipped")
        return []
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r.status == "ok"]
    if not ok:
        print("no case where the fused kernel ran: plots skipped")
        return []
    written = []
    dtypes = [d for d in DTYPES if any(r.dtype == d for r in ok)]
    groups = sorted({(r.cell, report.mode_label(dataclasses.asdict(r))) for r in ok})
    hs = sorted({r.hidden for r in ok})
    colors = {h: plt.cm.viridis(i / max(1, len(hs) - 1)) for i, h in enumerate(hs)}
    styles = {1: ":", 2: "--", 4: "-"}
    fig, axes = plt.subplots(len(groups), len(dtypes), squeeze=False, sharex=True,
                             figsize=(4.2 * len(dtypes), 3.2 * len(groups)))
    for gi, (cell, mode) in enumerate(groups):
        for di, dt in enumerate(dtypes):
            ax = axes[gi][di]
            ax.set_title(f"{cell} {mode} {dt}", fontsize=9)
            here = [r for r in ok if (r.cell, report.mode_label(dataclasses.asdict(r)), r.dtype) == (cell, mode, dt)]
            if not here:
                ax.axis("off")
                continue
            for (L, H, T) in sorted({(r.layers, r.hidden, r.seq) for r in here}):
                pts = sorted((r.batch, r.speedup_vs_cudnn) for r in here if (r.layers, r.hidden, r.seq) == (L, H, T))
                ax.plot(*zip(*pts), marker="o" if T == max(FULL["seq"]) else "s", color=colors[H],
                        linestyle=styles.get(L, "-."), label=f"L={L} H={H} T={T}")
            ax.axhline(1.0, color="grey", linewidth=0.8)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("batch size")
            ax.set_ylabel("speedup vs cuDNN")
            ax.legend(fontsize=6)
    fig.suptitle(f"fused_rnn speedup over cuDNN (cuDNN time / fused time)\n{device}", fontsize=10)
    written.append(_save_figure(plt, fig, out_dir, "speedup.png"))

    # time per timestep vs T at the smallest batch, inference: the latency regime
    fig, axes = plt.subplots(1, len(dtypes), squeeze=False, figsize=(4.5 * len(dtypes), 3.4))
    for di, dt in enumerate(dtypes):
        ax = axes[0][di]
        rows = [r for r in ok if r.dtype == dt and r.mode == "infer"]
        if not rows:
            continue
        b0 = min(r.batch for r in rows)
        for key in sorted({(r.cell, r.layers, r.hidden) for r in rows}):
            sel = sorted((r.seq, r) for r in rows if (r.cell, r.layers, r.hidden) == key and r.batch == b0)
            if not sel:
                continue
            T = [s for s, _ in sel]
            line, = ax.plot(T, [1e3 * r.fused_ms / r.seq for _, r in sel], marker="o",
                            label=f"fused {key[0]} L={key[1]} H={key[2]}")
            ax.plot(T, [1e3 * r.cudnn_ms / r.seq for _, r in sel], marker="x", linestyle="--",
                    color=line.get_color(), label=f"cuDNN {key[0]} L={key[1]} H={key[2]}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("T (timesteps)")
        ax.set_ylabel("µs per timestep (time / T)")
        ax.set_title(f"{dt}, inference, B={b0}", fontsize=9)
        ax.legend(fontsize=6)
    fig.suptitle(f"time per step vs T\n{device}", fontsize=10)
    written.append(_save_figure(plt, fig, out_dir, "step_time.png"))
    return written


def write_outputs(out_dir: str, meta: dict, results: list[Result], floors: dict | None) -> None:
    os.makedirs(out_dir, exist_ok=True)
    common.write_json(os.path.join(out_dir, "results.json"), meta, results, floors=floors)
    common.write_csv(os.path.join(out_dir, "results.csv"), results)
    rows = [dataclasses.asdict(r) for r in results]
    md = [f"# fused_rnn benchmark: {meta['device']}", "", report.header_text(meta), "",
          f"Command: `{meta['command']}`", ""]
    if meta.get("incomplete"):
        md += [f"**Incomplete run:** {meta['incomplete']}.", ""]
    md += [report.CONVENTIONS.format(runs=meta["runs"]), ""]
    if report.sync_note(meta):
        md += [report.sync_note(meta), ""]
    md += [report.results_table(rows), ""]
    if floors:
        md += ["## Synchronisation floors", "", report.floors_table(floors), ""]
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write("\n".join(md))
    files = ["results.json", "results.csv", "results.md"]
    files += [os.path.basename(p) for p in plot(results, out_dir, meta["device"])]
    print(f"wrote {', '.join(files)} to {out_dir}")


def auto_summary(results: list[Result]) -> str:
    """How many cases meet the GPU target (fused_rnn as users get it <= AUTO_TARGET x cuDNN)."""
    timed = [r for r in results if r.auto_vs_cudnn is not None]
    over = [f"{r.cell} L={r.layers} H={r.hidden} B={r.batch} T={r.seq} {r.dtype} "
            f"{report.mode_label(dataclasses.asdict(r))}: {r.auto_vs_cudnn:.2f} "
            f"({report.path_of(r.auto_backend)})" for r in timed if r.auto_vs_cudnn > report.AUTO_TARGET]
    s = (f"fused_rnn as users get it (auto) within {report.AUTO_TARGET:g}x cuDNN's time: "
         f"{len(timed) - len(over)}/{len(timed)} timed cases")
    return s + ("; over: " + "; ".join(over) if over else "")


def gpu_main(args, fused_rnn) -> int:
    print("fused_rnn: loading the CUDA extension (a first use may JIT-build it)...", flush=True)
    info = fused_rnn.backend_info()
    print(f"device: {torch.cuda.get_device_name()}; fused_rnn: {info.get('default_path')}"
          + ("" if info.get("extension_loaded") else f" ({info.get('reason')})"), flush=True)
    if not info.get("extension_loaded"):
        print("WARNING: the fused extension is not loaded: the fused kernel is 'uncovered' in "
              "every case (no speedup is reported) and fused_rnn's default policy runs cuDNN.",
              flush=True)
    cases = select_cases(args)
    runner = Runner(args, fused_rnn)
    if args.time_budget:
        runner.deadline = time.monotonic() + args.time_budget
    meta = dict(common.environment(), fused_rnn=info, fused_rnn_path=os.path.dirname(fused_rnn.__file__),
                runs=args.runs, warmup=args.warmup, flop_convention=FLOP_CONVENTION,
                peak_tflops=PEAK_TFLOPS if peak_tflops(runner.device, "bf16") else None,
                peak_source=PEAK_SOURCE, flashrnn=runner.flashrnn is not None,
                auto_target=report.AUTO_TARGET, sync_requested=common.requested_sync(),
                sync_compare=args.sync_compare)
    out_dir = args.out or os.path.join(common.REPO, "benchmarks", "results", meta["device_slug"])
    os.makedirs(out_dir, exist_ok=True)

    def checkpoint(done):  # what survives a hung case or a killed process
        partial = dict(meta, incomplete=f"{len(done)} of {len(cases)} cases done; the run stopped before the rest")
        common.write_json(os.path.join(out_dir, "results.json"), partial, done)

    print(f"{len(cases)} cases, {args.runs} timed runs each (median/min/max, CUDA events)", flush=True)
    print(report.sync_note(meta), flush=True)
    t0 = time.monotonic()
    checkpoint([])
    results = run_sweep(runner, cases, checkpoint, args.case_timeout)
    meta["sweep_seconds"] = round(time.monotonic() - t0, 1)
    floors = None
    if args.floors:
        import floors as floors_mod
        floors = floors_mod.run_all()
        print(report.floors_table(floors))
    print()
    print(report.results_table([dataclasses.asdict(r) for r in results]))
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "uncovered", "mismatch", "skipped", "error")}
    print("\nfused kernel: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v)
          + f" in {meta['sweep_seconds']} s")
    print(auto_summary(results))
    if len(results) < len(cases):
        meta["incomplete"] = f"interrupted after {len(results)} of {len(cases)} cases"
    write_outputs(out_dir, meta, results, floors)
    return 0


# ---------------------------------------------------------------- calibration


CALIBRATE = dict(dtype=["bf16", "fp16", "tf32"], cell=["LSTM", "GRU"], layers=[2, 4], hidden=[256, 512],
                 batch=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512], seq=[256])
CALIBRATE_RUNS = 10  # per implementation and batch: a crossover needs a ranking, not a 1% figure


@dataclasses.dataclass(frozen=True)
class Shape:
    """One entry of the crossover table."""
    dtype: str
    cell: str
    layers: int
    hidden: int

    def label(self) -> str:
        return f"{self.dtype} {self.cell} L={self.layers} H={self.hidden}"


@dataclasses.dataclass
class Series:
    """One shape, inference or training, walked up the batch sizes."""
    points: list  # [B, fused_ms, cudnn_ms] per measured batch
    max_batch: int  # the largest B such that every measured B' <= B won (0: none did)
    stop: str  # why the walk ended
    complete: bool  # False: time ran out before the walk ended


def walk_series(batches, point, margin: float, out_of_time) -> Series:
    """point(B) -> (fused_ms, cudnn_ms) for B in increasing order, until fused takes more than
    margin x cuDNN's time or cannot run (its refusal, out of memory, ...): neither is a win."""
    points, best = [], 0
    for B in sorted(batches):
        if out_of_time():
            return Series(points, best, f"out of time before B={B}", False)
        try:
            fused_ms, cudnn_ms = point(B)
        except Exception as e:  # the walk ends; the reason is recorded in the table
            why = uncovered_reason(e)
            return Series(points, best, f"B={B}: " + (UNCOVERED + why if why else one_line(e)), True)
        points.append([B, fused_ms, cudnn_ms])
        if not fused_ms <= margin * cudnn_ms:
            return Series(points, best, f"B={B}: fused {fused_ms:.3g} ms > {margin:g} x cuDNN "
                          f"{cudnn_ms:.3g} ms", True)
        best = B
    return Series(points, best, f"won at every batch measured (up to {best})", True)


def table_entry(s: Shape, infer: Series, train: Series) -> dict:
    """One format-1 entry (fused_rnn/policy.py) from a shape's two series."""
    return {"dtype": s.dtype, "mode": OP_MODE[s.cell], "num_layers": s.layers, "hidden_size": s.hidden,
            "bidirectional": False, "forward_max_batch": infer.max_batch,
            "training_max_batch": train.max_batch,
            "measured": {"forward": infer.points, "forward_stop": infer.stop,
                         "training": train.points, "training_stop": train.stop}}


def calibrate(shapes: list[Shape], batches, point, margin: float, out_of_time) -> tuple[list, str | None]:
    """(entries of every shape whose two series completed, None or why the others are missing).
    point(shape, train, B) -> (fused_ms, cudnn_ms). A shape cut short is left out whole: the
    table never claims a win it did not measure."""
    entries = []
    try:
        for i, s in enumerate(shapes):
            series = []
            for train in (False, True):
                r = walk_series(batches, functools.partial(point, s, train), margin, out_of_time)
                found = f"max batch {r.max_batch}" if r.complete else "incomplete, left out"
                print(f"[{i + 1}/{len(shapes)}] {s.label()} {'train' if train else 'infer'}: "
                      f"{found} ({r.stop})", flush=True)
                if not r.complete:
                    return entries, (f"the time budget ran out during shape {i + 1} of {len(shapes)} "
                                     f"({s.label()}); only the {len(entries)} complete shapes are here")
                series.append(r)
            entries.append(table_entry(s, *series))
    except KeyboardInterrupt:
        return entries, (f"interrupted during shape {len(entries) + 1} of {len(shapes)}; only the "
                         f"{len(entries)} complete shapes are here")
    return entries, None


class Calibrator:
    """point(): the forced-fused module and cuDNN (the nn module), on the same weights and
    inputs, CUDA events, median of args.runs runs each."""

    def __init__(self, args, fused_rnn, seq: int):
        self.args, self.fused_rnn, self.seq = args, fused_rnn, seq
        self.shape = self.modules = None

    def point(self, s: Shape, train: bool, batch: int) -> tuple[float, float]:
        dtype = set_precision(s.dtype)
        if s != self.shape:  # one pair of modules per shape, for both modes and every batch
            self.shape = self.modules = None
            torch.cuda.empty_cache()
            torch.manual_seed(0)
            self.modules = make_modules(self.fused_rnn, s.cell, s.layers, s.hidden, s.hidden, 0.0,
                                        DEVICE, dtype)
            self.shape = s
        ref, fused = self.modules
        ref.train(train)
        fused.train(train)
        T, H = self.seq, s.hidden
        n_buf = buffer_count(T * batch * H * torch.empty((), dtype=dtype).element_size())
        xs = [torch.randn(T, batch, H, device=DEVICE, dtype=dtype, requires_grad=train) for _ in range(n_buf)]
        gout = torch.randn(T, batch, H, device=DEVICE, dtype=dtype) if train else None
        prepare = grad_dropper(list(ref.parameters()) + list(fused.parameters()), xs)
        forced = functools.partial(self.fused_rnn.backend, "fused")
        try:
            return (self.time(module_step(fused, train, gout, forced), xs, prepare),
                    self.time(module_step(ref, train, gout), xs, prepare))
        finally:
            del xs, gout
            torch.cuda.empty_cache()

    def time(self, step, xs, prepare) -> float:
        prepare()
        step(xs[0])  # first call: plans, autotuning; the fused kernel's refusal, if any
        return common.stats(common.cuda_time(step, xs, self.args.runs, self.args.warmup, prepare))[0]


def crossover_table(policy, device: str, entries: list, seq: int, args, incomplete: str | None) -> dict:
    """The format-1 table of fused_rnn/policy.py, every field filled."""
    env = common.environment()
    p = torch.cuda.get_device_properties(torch.cuda.current_device())
    table = {"format": policy.FORMAT, "device": device, "capability": [p.major, p.minor],
             "sm_count": p.multi_processor_count, "date": env["date"], "commit": env["git_commit"],
             "torch": env["torch"], "cuda": env["cuda"], "cudnn": env["cudnn"], "command": env["command"],
             "seq_len": seq, "margin": args.margin, "runs": args.runs, "entries": entries}
    if incomplete:
        table["incomplete"] = incomplete
    policy.check_table(table, "the calibrated table")
    return table


def calibration_summary(entries: list) -> str:
    header = ["dtype", "cell", "L", "H", "inference max B", "training max B", "inference stop",
              "training stop"]
    cell = {v: k for k, v in OP_MODE.items()}
    lines = [[e["dtype"], cell[e["mode"]], e["num_layers"], e["hidden_size"], e["forward_max_batch"],
              e["training_max_batch"], e["measured"]["forward_stop"], e["measured"]["training_stop"]]
             for e in entries]
    return report.markdown_table(header, lines)


def calibrate_main(args, fused_rnn) -> int:
    policy = fused_rnn.policy
    info = fused_rnn.backend_info()
    device = torch.cuda.get_device_name()
    if not info.get("extension_loaded"):
        print(f"--calibrate: the fused extension is not loaded ({info.get('reason')}): nothing to "
              "calibrate (a table of zeros would only record that).", file=sys.stderr)
        return 1
    grid = {k: getattr(args, k) or v for k, v in CALIBRATE.items()}
    seq = grid["seq"][0]
    shapes = [Shape(dt, cell, L, H) for dt in grid["dtype"] for cell in grid["cell"]
              for L in grid["layers"] for H in grid["hidden"]]
    deadline = time.monotonic() + args.time_budget if args.time_budget else None
    asked = common.requested_sync()
    print(f"calibrating on {device}: {len(shapes)} shapes x (inference, training), B in "
          f"{sorted(grid['batch'])}, T={seq}; a batch counts as a win when the forced fused kernel "
          f"takes <= {args.margin:g} x cuDNN's time (median of {args.runs} runs each), under "
          f"FUSED_RNN_SYNC={asked}" + (" (the default policy)" if asked == "auto" else
                                       ": NOT the default policy, which `auto` runs"), flush=True)
    entries, incomplete = calibrate(shapes, grid["batch"], Calibrator(args, fused_rnn, seq).point,
                                    args.margin, lambda: deadline is not None and time.monotonic() > deadline)
    table = crossover_table(policy, device, entries, seq, args, incomplete)
    out_dir = args.out or policy.TABLE_DIR
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, policy.device_slug(device) + ".json")
    with open(path, "w") as f:
        json.dump(table, f, indent=1, allow_nan=False)
        f.write("\n")
    print("\n" + calibration_summary(entries))
    if incomplete:
        print(f"\nINCOMPLETE: {incomplete}.")
    print(f"\nwrote {path} ({len(entries)} entries); `auto` reads it when fused_rnn is next imported")
    return 0


# ------------------------------------------------------------------------ CLI


def parse_args(argv=None):
    def csv_of(kind):
        return lambda s: [kind(v) for v in s.split(",") if v]

    def upper(s):
        return s.upper()

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--quick", action="store_true", help="acceptance shapes only (< 2 min on an H100)")
    ap.add_argument("--cell", type=csv_of(upper), help="LSTM,GRU,RNN")
    ap.add_argument("--layers", type=csv_of(int))
    ap.add_argument("--hidden", type=csv_of(int), help="hidden size (input size = hidden size)")
    ap.add_argument("--batch", type=csv_of(int))
    ap.add_argument("--seq", type=csv_of(int))
    ap.add_argument("--dtype", type=csv_of(str), help="tf32,fp32,bf16,fp16 (fp32 = TF32 off)")
    ap.add_argument("--mode", type=csv_of(str), help="infer,train")
    ap.add_argument("--dropout", type=csv_of(float), help="training dropout(s), e.g. 0,0.2")
    ap.add_argument("--runs", type=int, default=None,
                    help=f"timed runs per implementation (default 20; {CALIBRATE_RUNS} with --calibrate)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="warm-up runs right before the timed ones (after the first-call, estimate, "
                    "host-sync and memory runs, which warm up too)")
    ap.add_argument("--case-budget", type=float, default=None,
                    help="seconds one implementation may take for its timed runs (default 10 quick, 120 full)")
    ap.add_argument("--time-budget", type=float, default=None,
                    help="seconds for the whole sweep, later cases recorded as skipped (default 70 with "
                    "--quick; 0: none); with --calibrate, the shapes not finished are left out of the table")
    ap.add_argument("--case-timeout", type=float, default=300.0,
                    help="seconds after which a case counts as hung: the process exits with a traceback, "
                    "keeping the results checkpointed so far (0: never)")
    ap.add_argument("--reference", choices=("auto", "on", "off"), default="auto",
                    help="time fused_rnn.reference on the GPU too (auto: T*L <= 512, H <= 512, B <= 32)")
    ap.add_argument("--no-flashrnn", action="store_true", help="skip FlashRNN even if importable")
    ap.add_argument("--sync-compare", choices=SYNC_COMPARE, default=None,
                    help="where the forced kernel is also timed under the other FUSED_RNN_SYNC policy "
                    "(grid / flags) than the default's: all cases, inference cases only, or none "
                    "(default: infer with --quick, whose time budget is fixed; else all)")
    ap.add_argument("--floors", action="store_true", help="also run benchmarks/floors.py (GPU)")
    ap.add_argument("--cpu-runs", type=int, default=5, help="timed runs per case in the CPU check")
    ap.add_argument("--acceptance-runs", type=int, default=20,
                    help="interleaved runs per implementation in the CPU speed target measurement "
                    "(20: about 15 s on 2 slow cores)")
    ap.add_argument("--calibrate", action="store_true",
                    help="GPU: measure the crossover batches and write fused_rnn/crossover/<device>.json "
                    "(--out: another folder); grid flags: --dtype --cell --layers --hidden --batch --seq")
    ap.add_argument("--margin", type=float, default=0.95,
                    help="--calibrate: fused wins a batch when it takes <= margin x cuDNN's time")
    ap.add_argument("--out", help="output folder (default benchmarks/results/<device>/ on a GPU, "
                    "fused_rnn/crossover/ with --calibrate; nothing is written on CPU without it)")
    args = ap.parse_args(argv)
    for name, allowed in (("cell", GATES), ("dtype", DTYPES), ("mode", ("infer", "train"))):
        bad = [v for v in getattr(args, name) or [] if v not in allowed]
        if bad:
            ap.error(f"--{name}: unknown {bad}; choose from {', '.join(allowed)}")
    if args.calibrate:
        clash = [f"--{k.replace('_', '-')}" for k in ("quick", "mode", "dropout", "sync_compare")
                 if getattr(args, k)]
        if clash:
            ap.error(f"--calibrate measures its own grid, inference and training at dropout 0: "
                     f"{', '.join(clash)} do not apply")
        if args.seq and len(args.seq) != 1:
            ap.error("--calibrate: one --seq (the table holds one seq_len)")
        if not 0 < args.margin <= 1:
            ap.error("--margin: between 0 and 1 (fused must not be slower than cuDNN to win)")
    if args.runs is None:
        args.runs = CALIBRATE_RUNS if args.calibrate else 20
    elif args.runs < 20 and not args.calibrate:
        print(f"note: --runs {args.runs} is below the 20 runs the published numbers use", file=sys.stderr)
    if args.case_budget is None:
        args.case_budget = 10.0 if args.quick else 120.0
    if args.sync_compare is None:
        # --calibrate measures the default policy only (what `auto` runs)
        args.sync_compare = "none" if args.calibrate else "infer" if args.quick else "all"
    if args.time_budget is None and args.quick:
        args.time_budget = 70.0  # scripts/gpu_check.sh gives the whole command 120 s
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.calibrate and not torch.cuda.is_available():
        print("--calibrate needs a CUDA GPU: it times the fused kernel against cuDNN on the device "
              "the table is for (no GPU is visible here; nothing was written).", file=sys.stderr)
        return 2
    if (args.calibrate or torch.cuda.is_available()) and common.requested_sync() not in common.SYNC_VALUES:
        print(f"{common.SYNC_ENV}={os.environ[common.SYNC_ENV]!r}: the fused kernel takes "
              f"{', '.join(common.SYNC_VALUES)} (or unset: auto); every fused call would fail.",
              file=sys.stderr)
        return 2
    fused_rnn = import_fused_rnn()
    if args.calibrate:
        return calibrate_main(args, fused_rnn)
    if not torch.cuda.is_available():
        return cpu_main(args, fused_rnn)
    return gpu_main(args, fused_rnn)


if __name__ == "__main__":
    sys.exit(main())
