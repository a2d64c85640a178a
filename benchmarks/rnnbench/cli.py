"""The command line of benchmarks/bench.py."""

from __future__ import annotations

import argparse
import os
import sys

import torch

import common

from . import calibrate, cpu, sweep
from .calibrate import CALIBRATE_RUNS
from .cases import DTYPES, GATES, SYNC_COMPARE

def parse_args(argv=None, doc: str = ""):
    def csv_of(kind):
        return lambda s: [kind(v) for v in s.split(",") if v]

    def upper(s):
        return s.upper()

    doc = doc or sys.modules["__main__"].__doc__ or __doc__
    ap = argparse.ArgumentParser(prog="bench.py", description=doc.strip().splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
    ap.add_argument("--quick", action="store_true", help="acceptance shapes only (< 2 min on an H100)")
    ap.add_argument("--cell", type=csv_of(upper), help="LSTM,GRU,RNN,RNN_RELU (RNN: tanh)")
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
    ap.add_argument("--skip-baselines", type=csv_of(str), default=None,
                    help="baselines not to run, comma-separated: cudnn_graph, cudnn_persist, flashrnn, "
                    "fused_graph (cudnn and the fused kernel always run)")
    ap.add_argument("--no-graphed", action="store_true",
                    help="--calibrate: measure the eager crossover only, not the one inside a CUDA graph")
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
                    "(--out: another folder); grid flags: --dtype --cell --layers --hidden --batch --seq "
                    "--direction")
    ap.add_argument("--direction", type=csv_of(str), help="--calibrate: uni,bi (unidirectional, "
                    "bidirectional)")
    ap.add_argument("--margin", type=float, default=0.95,
                    help="--calibrate: fused wins a batch when it takes <= margin x cuDNN's time")
    ap.add_argument("--out", help="output folder (default benchmarks/results/<device>/ on a GPU, "
                    "fused_rnn/crossover/ with --calibrate; nothing is written on CPU without it)")
    args = ap.parse_args(argv)
    skippable = ("cudnn_graph", "cudnn_persist", "flashrnn", "fused_graph")
    for name, allowed in (("cell", GATES), ("dtype", DTYPES), ("mode", ("infer", "train")),
                          ("skip_baselines", skippable)):
        bad = [v for v in getattr(args, name) or [] if v not in allowed]
        if bad:
            ap.error(f"--{name.replace('_', '-')}: unknown {bad}; choose from {', '.join(allowed)}")
    if args.direction and not args.calibrate:
        ap.error("--direction applies to --calibrate (the sweep's cases are unidirectional)")
    if args.no_graphed and not args.calibrate:
        ap.error("--no-graphed applies to --calibrate (the sweep: --skip-baselines cudnn_graph,fused_graph)")
    if args.calibrate:
        clash = [f"--{k.replace('_', '-')}" for k in ("quick", "mode", "dropout", "sync_compare",
                                                      "skip_baselines")
                 if getattr(args, k)]
        if clash:
            ap.error(f"--calibrate measures its own grid, inference and training at dropout 0: "
                     f"{', '.join(clash)} do not apply")
        bad = [v for v in args.direction or [] if v not in ("uni", "bi")]
        if bad:
            ap.error(f"--direction: unknown {bad}; choose from uni, bi")
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
        args.time_budget = 70.0  # scripts/gpu_check.sh passes its own (--time-budget 23)
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
    fused_rnn = sweep.import_fused_rnn()
    if args.calibrate:
        return calibrate.calibrate_main(args, fused_rnn)
    if not torch.cuda.is_available():
        return cpu.cpu_main(args, fused_rnn)
    return sweep.gpu_main(args, fused_rnn)
