"""The command without a GPU: fused_rnn against torch.nn on CPU (the module under its
default policy must be bit-identical on torch's native path; the reference path forced
within tolerance), then the CPU speed target. GPU speed needs a GPU."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import os

import torch

import common
import report

from .sweep import backend_label, make_modules, max_abs_diff
from .timing import interleaved_ms, median

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
