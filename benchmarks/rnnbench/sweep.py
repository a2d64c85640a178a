"""The GPU sweep: per case, every implementation on the same weights and inputs, in one
process; the parity of each against the float64 reference; the derived numbers."""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import functools
import math
import os
import re
import sys
import time

import torch
from torch import nn

import common
import report

from . import baselines as bl
from . import cases, timing
from .cases import SYNC_POLICIES, Case, Result


# ------------------------------------------------------------ fused_rnn import


def import_fused_rnn():
    """The installed package, else the one in this checkout."""
    try:
        import fused_rnn
    except ImportError:
        sys.path.insert(0, common.REPO)
        import fused_rnn
    return fused_rnn


def make_modules(fused_rnn, cell, layers, hidden, input_size, dropout, device, dtype,
                 bidirectional=False):
    """torch.nn module and fused_rnn module holding the very same weights (cell RNN_RELU: an
    RNN with nonlinearity="relu")."""
    kw = dict(num_layers=layers, dropout=dropout, device=device, dtype=dtype,
              bidirectional=bidirectional)
    if cell == "RNN_RELU":
        cell, kw["nonlinearity"] = "RNN", "relu"
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


def is_kernel(backend: str) -> bool:
    """Whether a backend label says the fused kernel ran (forward, and backward in training)."""
    if backend.startswith("forward "):
        return backend.startswith("forward fused") and "; backward fused" in backend
    return backend.startswith("fused")


class Skip(Exception):
    """A case (or one implementation of it) that is not run, with the reason."""


def case_inputs(fused_rnn, c: Case, dtype, n_buf: int) -> bl.Inputs:
    """The nn and fused_rnn modules (same weights, seed 0), the input buffers, the output
    gradient in training and, in a streaming case, a random initial state."""
    device = cases.DEVICE
    torch.manual_seed(0)
    train = c.mode == "train"
    ref, fused = make_modules(fused_rnn, c.cell, c.layers, c.hidden, c.hidden, c.dropout, device, dtype)
    ref.train(train)
    fused.train(train)
    T, B, H, L = c.seq, c.batch, c.hidden, c.layers
    xs = [torch.randn(T, B, H, device=device, dtype=dtype, requires_grad=train) for _ in range(n_buf)]
    gout = torch.randn(T, B, H, device=device, dtype=dtype) if train else None
    hx = None
    if c.stream:
        h0 = torch.randn(L, B, H, device=device, dtype=dtype)
        hx = (h0, torch.randn(L, B, H, device=device, dtype=dtype)) if c.cell == "LSTM" else h0
    return bl.Inputs(c, dtype, ref, fused, xs, gout, hx)


# ------------------------------------------------------------------ the runner


class Runner:
    """Runs the cases of one sweep on the current GPU."""

    def __init__(self, args, fused_rnn):
        self.args, self.fused_rnn = args, fused_rnn
        self.device = torch.cuda.get_device_name()
        self.deadline = None
        fn, why = (None, "--no-flashrnn") if args.no_flashrnn else bl.load_flashrnn()
        p = torch.cuda.get_device_properties(torch.cuda.current_device())
        self.env = bl.Env(fused_rnn, fn, why or "", (p.major, p.minor), p.multi_processor_count)
        self.case_timeout = 0.0  # run_sweep's hung-case limit, off while FlashRNN builds
        self.flashrnn = fn
        skip = set(args.skip_baselines or ())
        self.extra = [n for n in ("cudnn_graph", "cudnn_persist", "flashrnn", "fused_graph") if n not in skip]

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
            setattr(res, f"host_syncs_{name}", timing.count_host_syncs(step, xs[0]))
            prepare()
            setattr(res, f"mem_{name}_mib", common.peak_memory_mib(step, xs[0]))
        times = common.cuda_time(step, xs, runs=a.runs, warmup=a.warmup, prepare=prepare)
        med, lo, hi = common.stats(times)
        setattr(res, f"{name}_ms", med)
        setattr(res, f"{name}_ms_min", lo)
        setattr(res, f"{name}_ms_max", hi)

    def time_baseline(self, b: bl.Baseline, res: Result, name: str | None = None) -> None:
        self.measure(name or b.name, b.step, b.ci.xs, b.before_run, res)

    def measure_auto(self, ci: bl.Inputs, res: Result) -> None:
        """The module as users get it (its default policy): which path it chose, and its time.
        Where it chose the fused kernel, that is the very call just timed forced: its timing
        is reused (the quick sweep's time budget); any other path is timed."""
        auto = bl.Auto(self.env)
        auto.prepare(ci)
        auto.before_run()
        auto.step(ci.xs[0])
        res.auto_backend = backend_label(ci.fused, ci.train)
        if is_kernel(res.auto_backend) and res.fused_ms is not None:
            res.auto_ms, res.auto_ms_min, res.auto_ms_max = res.fused_ms, res.fused_ms_min, res.fused_ms_max
            return
        self.time_baseline(auto, res, "auto")

    def compares_sync(self, c: Case) -> bool:
        """Whether --sync-compare times the second synchronisation policy in this case."""
        mode = self.args.sync_compare
        return mode == "all" or (mode == "infer" and c.mode == "infer")

    def measure_sync_policies(self, fused: bl.Fused, res: Result, notes: list) -> None:
        """The forced kernel under each FUSED_RNN_SYNC policy. The default's is the fused_ms
        just measured: the policy its label names (default_sync), its times copied to that
        policy's columns. The other policy is timed here, in the cases --sync-compare
        selects; a failure of it is a note, never the case's status."""
        c = fused.ci.case
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
                    self.measure_sync, policy, fused, res), res, notes)

    def measure_sync(self, policy: str, fused: bl.Fused, res: Result) -> None:
        """The forced kernel with FUSED_RNN_SYNC=policy around its calls (the previous value
        restored after, whatever happens): its output against cuDNN's (dropout 0: above 0.1 it
        is not timed), then timed as the default's was (fused_<policy>_ms*). Its label must
        name that policy: else the times are dropped and it raises."""
        name = f"fused_{policy}"
        ci = fused.ci
        try:
            with common.sync_policy(policy):
                if ci.case.dropout == 0:
                    with fused.context(), torch.no_grad():
                        diff = max_abs_diff(fused.call(ci.xs[0]), bl.module_call(ci.ref, ci.hx)(ci.xs[0]))
                    if not diff <= 0.1:
                        raise RuntimeError(f"output differs from cuDNN by {diff:.3g}")
                self.time_baseline(fused, res, name)
                label = backend_label(ci.fused, ci.train)
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
                     stream=c.stream, runs=self.args.runs, gflop=cases.case_flops(c) / 1e9,
                     peak_tflops=cases.peak_tflops(self.device, c.dtype))
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
        dtype = cases.set_precision(c.dtype)
        x_bytes = c.seq * c.batch * c.hidden * torch.empty((), dtype=dtype).element_size()
        n_buf = timing.buffer_count(x_bytes)
        res.buffers = n_buf
        torch.cuda.empty_cache()
        need, free = cases.estimate_bytes(c, n_buf), torch.cuda.mem_get_info()[0]
        if need > 0.9 * free:
            raise Skip(f"would run out of memory (needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free)")
        ci = case_inputs(self.fused_rnn, c, dtype, n_buf)
        res.cudnn_persist_static = bl.CudnnPersist(self.env).rule(c)[1]
        notes, bnotes = [], []

        # the float64 reference and eager cuDNN's errors against it: the parity rule's anchor
        want, anchor, cudnn_out = None, None, None
        cudnn = bl.Cudnn(self.env)
        cudnn.prepare(ci)
        if c.dropout == 0:
            def anchor_errors():
                nonlocal want, anchor, cudnn_out
                want = bl.reference64(ci)
                cudnn_out = cudnn.outputs(ci.xs[0])
                anchor = bl.errors(cudnn_out, want)
                res.cudnn_err = max(anchor.values(), default=0.0)
            if not self.guarded("float64 reference", anchor_errors, res, bnotes):
                bnotes.append("parity not checked (the float64 reference failed)")

        fused = bl.Fused(self.env)
        fused.prepare(ci)

        def fused_parity():  # same function? (dropout changes the values by design)
            if c.dropout == 0:  # one call each: the same results serve both comparisons
                got = fused.outputs(ci.xs[0])
                base = cudnn_out if cudnn_out is not None else cudnn.outputs(ci.xs[0])
                res.max_abs_diff_vs_cudnn = max(max_abs_diff(got[k], base[k])
                                                for k in ("output", "h_n", "c_n") if k in got)
                if want is not None:
                    res.fused_err, res.fused_parity = bl.rule(bl.errors(got, want), anchor, c.dtype)
            else:
                res.fused_parity = bl.finite(fused, ci.xs[0])

        fused_ok = self.guarded("fused", fused_parity, res, notes) and \
            self.guarded("fused", lambda: self.time_baseline(fused, res), res, notes)
        if fused_ok:
            res.fused_backend = backend_label(ci.fused, ci.train)
            self.measure_sync_policies(fused, res, notes)
        self.guarded("auto", lambda: self.measure_auto(ci, res), res, notes)
        self.guarded("cudnn", lambda: self.time_baseline(cudnn, res), res, notes)
        for name in self.extra:
            if name == "fused_graph" and not fused_ok:
                continue
            # ours in a graph is the kernel itself: its failures belong to the case's reason
            self.run_baseline(name, ci, res, want, anchor, notes if name in cases.OURS else bnotes)
        if self.use_reference(c):
            ref = bl.Reference(self.env)
            self.guarded("reference", lambda: (ref.prepare(ci), self.time_baseline(ref, res)), res, notes)
        res.baseline_notes = "; ".join(bnotes)
        self.finish(c, res, fused_ok, notes)

    def run_baseline(self, name: str, ci: bl.Inputs, res: Result, want, anchor, notes: list) -> None:
        """Build, check and time one more implementation; a skip or a failure is a note."""
        b = bl.REGISTRY[name](self.env)
        why = b.skip_reason(ci.case)
        if why:
            notes.append(f"{name}: {why}")
            return

        def run():
            # a JIT build (minutes, per shape) is not a hung case; its time is reported apart
            with self.build_window() if b.jit_build else contextlib.nullcontext():
                b.prepare(ci)
            if b.jit_build:
                setattr(res, f"{name}_build_s", b.build_s)
            if want is not None:
                err, verdict = bl.parity(b, ci.xs[0], want, anchor, ci.case.dtype)
                setattr(res, f"{name}_err", err)
                setattr(res, f"{name}_parity", verdict)
            elif ci.case.dropout:
                setattr(res, f"{name}_parity", bl.finite(b, ci.xs[0]))
            self.time_baseline(b, res)

        try:
            self.guarded(name, run, res, notes)
        finally:
            b.close()
            torch.cuda.empty_cache()

    @contextlib.contextmanager
    def build_window(self):
        """The hung-case timer (run_sweep's faulthandler) off inside, re-armed after for
        what is left of the case."""
        if not self.case_timeout:
            yield
            return
        faulthandler.cancel_dump_traceback_later()
        try:
            yield
        finally:
            faulthandler.dump_traceback_later(self.case_timeout, exit=True, file=sys.__stderr__)

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
        elif res.fused_parity.startswith("FAIL"):
            res.status = "mismatch"
            notes.insert(0, f"fused kernel against the float64 reference: {res.fused_parity}")
        elif res.fused_graph_parity.startswith("FAIL"):
            res.status = "mismatch"
            notes.insert(0, f"fused kernel in a CUDA graph against the float64 reference: "
                         f"{res.fused_graph_parity}")
        elif diff is not None and not diff <= 0.1:
            res.status = "mismatch"
            notes.insert(0, f"fused output differs from cuDNN by {diff:.3g}")
        else:
            res.status = "ok"
        if diff is not None and not math.isfinite(diff):
            res.max_abs_diff_vs_cudnn = None  # JSON has no NaN; the reason keeps it
        res.reason = "; ".join(notes)
        tokens = c.batch * c.seq
        flop = cases.case_flops(c)
        if res.cudnn_ms:
            res.cudnn_us_per_layer_step = 1e3 * res.cudnn_ms / (c.seq * c.layers)
            res.tokens_per_s_cudnn = tokens / (res.cudnn_ms / 1e3)
            res.tflops_cudnn = flop / (res.cudnn_ms / 1e3) / 1e12
            if res.peak_tflops:
                res.peak_share_cudnn = res.tflops_cudnn / res.peak_tflops
            if res.auto_ms:  # what users get, whichever path it took
                res.auto_vs_cudnn = res.auto_ms / res.cudnn_ms
        best_baseline(res)
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

    def use_reference(self, c: Case) -> bool:
        if self.args.reference == "auto":  # the loop launches ~10 kernels per layer and step
            return c.seq * c.layers <= 512 and c.hidden <= 512 and c.batch <= 32
        return self.args.reference == "on"


def best_baseline(res: Result) -> None:
    """The headline: the fastest baseline that ran and did not fail parity, against the
    faster of our two (the kernel eager and in a CUDA graph; only where the kernel ran and
    matched: status ok)."""
    def usable(name):
        ms = getattr(res, f"{name}_ms")
        return ms is not None and not getattr(res, f"{name}_parity", "").startswith("FAIL")

    res.best_baseline, res.best_baseline_ms, res.fused_best, res.fused_best_ms = "", None, "", None
    res.speedup_vs_best = res.us_per_call_fused = res.us_per_call_best_baseline = None
    base = [(getattr(res, f"{n}_ms"), n) for n in cases.BASELINES if usable(n)]
    ours = [(getattr(res, f"{n}_ms"), n) for n in cases.OURS if usable(n)] if res.status == "ok" else []
    if base:
        res.best_baseline_ms, res.best_baseline = min(base)
    if ours:
        res.fused_best_ms, res.fused_best = min(ours)
    if base and ours:
        res.speedup_vs_best = res.best_baseline_ms / res.fused_best_ms
    if res.stream:
        res.us_per_call_fused = 1e3 * res.fused_best_ms if ours else None
        res.us_per_call_best_baseline = 1e3 * res.best_baseline_ms if base else None


# ------------------------------------------------------------------ progress


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


def best_text(r: Result) -> str:
    """'best baseline cudnn_graph 3.1 ms; ours fused_graph 1.2 ms: 2.58x'."""
    if r.best_baseline_ms is None:
        return ""
    s = f"best baseline {r.best_baseline} {r.best_baseline_ms:.3g} ms"
    if r.speedup_vs_best is not None:
        s += f"; ours {r.fused_best} {r.fused_best_ms:.3g} ms: {r.speedup_vs_best:.2f}x the best"
    return s


def progress_line(i: int, n: int, c: Case, r: Result) -> str:
    def ms(v):
        return "—" if v is None else f"{v:.3g} ms"
    s = f"[{i}/{n}] {c.label()}: "
    if r.status == "skipped" and r.cudnn_ms is None:
        return s + f"skipped ({r.reason})"
    s += f"cuDNN {ms(r.cudnn_ms)}; {auto_text(r)}; fused kernel {ms(r.fused_ms)}"
    extra = [f"{r.speedup_vs_cudnn:.2f}x eager cuDNN"] if r.speedup_vs_cudnn else []
    if sync_text(r):
        extra.append(sync_text(r))
    if extra:
        s += f" ({'; '.join(extra)})"
    if best_text(r):
        s += f"; {best_text(r)}"
    if r.reference_ms is not None:
        s += f"; reference {ms(r.reference_ms)}"
    if r.status != "ok":
        s += f"  [{r.status}: {r.reason}]"
    return s


def run_sweep(runner: Runner, cases_: list[Case], checkpoint=None, case_timeout: float = 0) -> list[Result]:
    """Every case in order, checkpoint(results) after each. A case that runs past
    case_timeout seconds (a hung kernel) ends the process with a traceback (faulthandler);
    the last checkpoint says how far the sweep got. Ctrl-C stops the sweep and keeps the results."""
    tqdm = common.optional("tqdm")
    bar = tqdm.tqdm(total=len(cases_), unit="case", dynamic_ncols=True) if tqdm else None
    out = []
    runner.case_timeout = case_timeout
    try:
        for i, c in enumerate(cases_, 1):
            if bar:
                bar.set_description(c.label())
            if case_timeout:
                faulthandler.dump_traceback_later(case_timeout, exit=True, file=sys.__stderr__)
            r = runner.run_case(c)
            faulthandler.cancel_dump_traceback_later()
            out.append(r)
            line = progress_line(i, len(cases_), c, r)
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


def gpu_main(args, fused_rnn) -> int:
    from . import outputs

    print("fused_rnn: loading the CUDA extension (a first use may JIT-build it)...", flush=True)
    info = fused_rnn.backend_info()
    print(f"device: {torch.cuda.get_device_name()}; fused_rnn: {info.get('default_path')}"
          + ("" if info.get("extension_loaded") else f" ({info.get('reason')})"), flush=True)
    if not info.get("extension_loaded"):
        print("WARNING: the fused extension is not loaded: the fused kernel is 'uncovered' in "
              "every case (no speedup is reported) and fused_rnn's default policy runs cuDNN.",
              flush=True)
    todo = cases.select_cases(args)
    runner = Runner(args, fused_rnn)
    if args.time_budget:
        runner.deadline = time.monotonic() + args.time_budget
    meta = dict(common.environment(), fused_rnn=info, fused_rnn_path=os.path.dirname(fused_rnn.__file__),
                runs=args.runs, warmup=args.warmup, flop_convention=cases.FLOP_CONVENTION,
                peak_tflops=cases.PEAK_TFLOPS if cases.peak_tflops(runner.device, "bf16") else None,
                peak_source=cases.PEAK_SOURCE, flashrnn=runner.flashrnn is not None,
                flashrnn_version=flashrnn_version() if runner.flashrnn is not None else None,
                baselines=["cudnn", *[n for n in runner.extra if n in cases.BASELINES
                                      and (n != "flashrnn" or runner.flashrnn is not None)]],
                auto_target=report.AUTO_TARGET, sync_requested=common.requested_sync(),
                sync_compare=args.sync_compare)
    out_dir = args.out or os.path.join(common.REPO, "benchmarks", "results", meta["device_slug"])
    os.makedirs(out_dir, exist_ok=True)

    def checkpoint(done):  # what survives a hung case or a killed process
        partial = dict(meta, incomplete=f"{len(done)} of {len(todo)} cases done; the run stopped before the rest")
        common.write_json(os.path.join(out_dir, "results.json"), partial, done)

    print(f"{len(todo)} cases, {args.runs} timed runs each (median/min/max, CUDA events); "
          f"baselines: {', '.join(meta['baselines'])}"
          + ("" if runner.flashrnn is not None else f" (flashrnn: {runner.env.flashrnn_why})"), flush=True)
    print(report.sync_note(meta), flush=True)
    t0 = time.monotonic()
    checkpoint([])
    results = run_sweep(runner, todo, checkpoint, args.case_timeout)
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
    print(outputs.best_summary(results))
    print(outputs.auto_summary(results))
    if len(results) < len(todo):
        meta["incomplete"] = f"interrupted after {len(results)} of {len(todo)} cases"
    outputs.write_outputs(out_dir, meta, results, floors)
    return 0


def flashrnn_version() -> str | None:
    try:
        from importlib.metadata import version
        return version("flashrnn")
    except Exception:  # noqa: BLE001 - a version string is context only
        return None
