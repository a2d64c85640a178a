"""--calibrate: the crossover table `auto` reads (fused_rnn/policy.py), measured on this GPU:
per shape (dtype, cell, layers, hidden size, direction, sequence length), inference and
training, eagerly (fused kernel vs the nn module) and inside a CUDA graph (fused_graph vs
cudnn_graph: what `auto` compares against when a call is captured). The default grid covers
L = 1..4, both directions, LSTM, GRU and both RNNs, H up to 1024, T in {64, 256, 1024}: many
hours; --time-budget keeps the complete shapes measured so far."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time

import torch

import common
import report

from . import baselines as bl
from . import cases, timing
from .cases import OP_MODE
from .sweep import UNCOVERED, make_modules, one_line, uncovered_reason

CALIBRATE = dict(dtype=["bf16", "fp16", "tf32"], cell=["LSTM", "GRU", "RNN", "RNN_RELU"],
                 layers=[1, 2, 3, 4], hidden=[128, 256, 512, 1024],
                 batch=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512], seq=[64, 256, 1024],
                 direction=["uni", "bi"])
TABLE_SEQ = 256  # the table's own seq_len (entries without one; a trace that cannot know T)
CALIBRATE_RUNS = 10  # per implementation and batch: a crossover needs a ranking, not a 1% figure


@dataclasses.dataclass(frozen=True)
class Shape:
    """One entry of the crossover table."""
    dtype: str
    cell: str
    layers: int
    hidden: int
    bidirectional: bool = False
    seq: int | None = None  # None: the Calibrator's

    def label(self) -> str:
        return (f"{self.dtype} {self.cell} L={self.layers} H={self.hidden}"
                + (" bidirectional" if self.bidirectional else "")
                + (f" T={self.seq}" if self.seq else ""))


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


MODES = ((False, False), (True, False), (False, True), (True, True))  # (train, graphed)


def series_key(train: bool, graphed: bool) -> str:
    """The measured-points key of a series: forward, training, graphed_forward, graphed_training."""
    return ("graphed_" if graphed else "") + ("training" if train else "forward")


def table_entry(s: Shape, series: dict) -> dict:
    """One format-1 entry (fused_rnn/policy.py) from a shape's series, keyed (train, graphed);
    the graphed fields only where those series were measured."""
    e = {"dtype": s.dtype, "mode": OP_MODE[s.cell], "num_layers": s.layers, "hidden_size": s.hidden,
         "bidirectional": s.bidirectional, "measured": {}}
    if s.seq:
        e["seq_len"] = s.seq
    for (train, graphed), r in series.items():
        key = series_key(train, graphed)
        e[f"{key}_max_batch"] = r.max_batch
        e["measured"][key] = r.points
        e["measured"][f"{key}_stop"] = r.stop
    return e


def calibrate(shapes: list[Shape], batches, point, margin: float, out_of_time,
              graphed: bool = True) -> tuple[list, str | None]:
    """(entries of every shape whose series all completed, None or why the others are
    missing). point(shape, train, B, graphed) -> (fused_ms, baseline_ms): eager, the fused
    kernel against the nn module; graphed, both captured in CUDA graphs. A shape cut short
    is left out whole: the table never claims a win it did not measure."""
    entries = []
    modes = MODES if graphed else MODES[:2]
    try:
        for i, s in enumerate(shapes):
            series = {}
            for train, g in modes:
                r = walk_series(batches, functools.partial(point, s, train, graphed=g), margin, out_of_time)
                found = f"max batch {r.max_batch}" if r.complete else "incomplete, left out"
                what = ("train" if train else "infer") + (" in a CUDA graph" if g else "")
                print(f"[{i + 1}/{len(shapes)}] {s.label()} {what}: {found} ({r.stop})", flush=True)
                if not r.complete:
                    return entries, (f"the time budget ran out during shape {i + 1} of {len(shapes)} "
                                     f"({s.label()}); only the {len(entries)} complete shapes are here")
                series[(train, g)] = r
            entries.append(table_entry(s, series))
    except KeyboardInterrupt:
        return entries, (f"interrupted during shape {len(entries) + 1} of {len(shapes)}; only the "
                         f"{len(entries)} complete shapes are here")
    return entries, None


class Calibrator:
    """point(): the forced-fused module and the nn module (cuDNN), on the same weights and
    inputs, eagerly or each captured in CUDA graphs (baselines.FusedGraph / CudnnGraph);
    CUDA events, median of args.runs runs each."""

    def __init__(self, args, fused_rnn, seq: int):
        self.args, self.fused_rnn, self.seq = args, fused_rnn, seq
        self.shape = self.modules = None
        self.env = bl.Env(fused_rnn)

    def point(self, s: Shape, train: bool, batch: int, graphed: bool = False) -> tuple[float, float]:
        dtype = cases.set_precision(s.dtype)
        if s != self.shape:  # one pair of modules per shape, for every mode and batch
            self.shape = self.modules = None
            torch.cuda.empty_cache()
            torch.manual_seed(0)
            self.modules = make_modules(self.fused_rnn, s.cell, s.layers, s.hidden, s.hidden, 0.0,
                                        cases.DEVICE, dtype, bidirectional=s.bidirectional)
            self.shape = s
        ref, fused = self.modules
        ref.train(train)
        fused.train(train)
        T, H = s.seq or self.seq, s.hidden
        D = 2 if s.bidirectional else 1
        n_buf = timing.buffer_count(T * batch * H * torch.empty((), dtype=dtype).element_size())
        xs = [torch.randn(T, batch, H, device=cases.DEVICE, dtype=dtype, requires_grad=train)
              for _ in range(n_buf)]
        gout = torch.randn(T, batch, D * H, device=cases.DEVICE, dtype=dtype) if train else None
        c = cases.Case(s.cell, s.layers, H, batch, T, s.dtype, "train" if train else "infer")
        ci = bl.Inputs(c, dtype, ref, fused, xs, gout)
        pair = (bl.FusedGraph, bl.CudnnGraph) if graphed else (bl.Fused, bl.Cudnn)
        made = []
        try:
            times = []
            for cls in pair:  # fused first: its refusal, if any, ends the point early
                b = cls(self.env)
                made.append(b)
                b.prepare(ci)
                times.append(self.time(b))
            return times[0], times[1]
        finally:
            for b in made:
                b.close()
            del xs, gout, ci
            torch.cuda.empty_cache()

    def time(self, b: bl.Baseline) -> float:
        b.before_run()
        b.step(b.ci.xs[0])  # first call: plans, autotuning; the fused kernel's refusal, if any
        return common.stats(common.cuda_time(b.step, b.ci.xs, self.args.runs, self.args.warmup,
                                             b.before_run))[0]


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
    header = ["dtype", "cell", "L", "H", "direction", "T", "inference max B", "training max B",
              "graphed inference max B", "graphed training max B", "inference stop", "training stop"]
    cell = {v: k for k, v in OP_MODE.items()}
    lines = [[e["dtype"], cell[e["mode"]], e["num_layers"], e["hidden_size"],
              "bi" if e["bidirectional"] else "uni", e.get("seq_len", "—"), e["forward_max_batch"],
              e["training_max_batch"], e.get("graphed_forward_max_batch", "—"),
              e.get("graphed_training_max_batch", "—"), e["measured"]["forward_stop"],
              e["measured"]["training_stop"]]
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
    seq = TABLE_SEQ if TABLE_SEQ in grid["seq"] else grid["seq"][0]
    shapes = [Shape(dt, cell, L, H, d == "bi", T) for dt in grid["dtype"] for cell in grid["cell"]
              for L in grid["layers"] for H in grid["hidden"] for d in grid["direction"]
              for T in grid["seq"]]
    deadline = time.monotonic() + args.time_budget if args.time_budget else None
    asked = common.requested_sync()
    print(f"calibrating on {device}: {len(shapes)} shapes x (inference, training), B in "
          f"{sorted(grid['batch'])}, T in {sorted(grid['seq'])}, {'/'.join(grid['direction'])}"
          f"directional; a batch counts as a win when the forced fused kernel "
          f"takes <= {args.margin:g} x cuDNN's time (median of {args.runs} runs each), eagerly"
          + ("" if args.no_graphed else " and with both captured in CUDA graphs") + ", under "
          f"FUSED_RNN_SYNC={asked}" + (" (the default policy)" if asked == "auto" else
                                       ": NOT the default policy, which `auto` runs"), flush=True)
    entries, incomplete = calibrate(shapes, grid["batch"], Calibrator(args, fused_rnn, seq).point,
                                    args.margin, lambda: deadline is not None and time.monotonic() > deadline,
                                    graphed=not args.no_graphed)
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
