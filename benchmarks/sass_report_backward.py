"""Static SASS report of the backward kernel's step loop (no GPU needed).

    python benchmarks/sass_report_backward.py [--arch 9.0a] [--out DIR] [--label NAME] [--root TREE]
        [--baseline OLD.json]

Compiles rnn_backward_kernel<T, LSTM, TF32, SyncPolicy::kFlags> (csrc/kernels/
backward_kernel.cuh) with the extension's own nvcc flags into a cubin per variant -- bf16
LSTM and TF32 LSTM, flag synchronisation (the planner's default) -- disassembles it with
nvdisasm (line information, inlined frames included) and counts, per phase of the step
loop, the static instructions: integer divisions, generic loads / stores (LD / ST without
a state space: the compiler could not prove the address shared or global), LDS / LDSM /
STS, HMMA, divergence guards (BSSY / BSYNC / WARPSYNC), CTA barriers, memory barriers
(MEMBAR) and fences (FENCE, ERRBAR, CGAERRBAR), strong loads (LDG...STRONG.GPU: the flag
polls, and __ldcg's of the fp32 carries) and L1 invalidates (CCTL: one per acquire), global
loads / stores, cp.async (LDGSTS), bulk copies (UBLKCP), mbarrier operations (SYNCS),
shuffles and branches (BRA / BRX / JMP); with ptxas' registers. The shared logic (compilation, nvdisasm's inline chains, the phase and
path attribution, the counters' predicates) is sass_report.py's.

Where an instruction belongs:
  - phase: the step loop of rnn_backward_kernel is cut by marker comments
    (`// [sass:NAME]`: setup, prefetch, sync, gemm, epilogue, ..., end); an instruction
    counts for the region of its outermost frame's line (the kernel body's line it was
    inlined into), so everything inlined from warp_item counts for `gemm`. `setup` is the
    step's own arithmetic (k, t, the GEMM's K segments, the pass loop), `prefetch` the
    epilogue's input loads issued before the GEMM, `sync` the flag wait before the GEMM,
    the cluster's proxy fences and the publish after the step.
  - path: an instruction is on a path if any frame of its inline chain is in one of the
    path's line spans. In the kernel body, `// [sass-path:NAME:begin]` ... `end]` spans:
    `step0` (the carries at k = 0), `final` (k = T: grad_hx / grad_cx), `top` (the top
    layer's grad_output) and `dropout`. In the GEMM (warp_item, not marked), spans found
    in the source text when the report runs: the branches on `clustered` /
    `c.cluster > 1` (`cluster`; their else branches, and the rest of a block whose
    cluster branch returns, `plain`) and on `c.reg_tiles > 0` (`reg-tiles`; else
    `smem-tiles`, the A fragments loaded from shared memory per K tile).
Plans: the backward planner's (plan_backward, host build of backward_plan.h) bf16 / TF32
LSTM L=4 H=I=512 T=512 at B=1 and B=32, with the H200's numbers (clusters co-resident by
the planner's own estimate, no runtime query). A plan's row counts one wave step of a
layer below the top at 0 < k < T without dropout: the paths step0, final, top and dropout
are left out, and `plain` or `cluster`, `reg-tiles` or `smem-tiles` as the plan picks. A
shape the planner rejects is reported as not planned, with its reason.

Static code (`counts`): a loop counts once. Each plan row lists the trip counts of the loops
inside the step (passes, K chunks per warp item, K tiles per chunk, copies per lane, K-split
reads and remainder pairs of the epilogue); the static counts are not multiplied by them. The integer
divisions and the generic loads / stores on the plan's path are also listed by the source
line of their innermost frame (the `%` or `/` they compute, the wmma load they come from).

Dynamic estimate (each plan row's `dynamic`): the instructions of one wave step on the plan's
path, each static instruction times how often its loop levels run per step. The levels are
found in the source text when the report runs (loop_spans; the same for the kernel before the
lean GEMM, whose lambdas took a tile index v): in warp_item the chunk loop of `pipeline`
(and what it inlines: acquire, issue_next / issue, the `multiply` call, release) runs once per
K chunk of the warp item, the loop of `begin` stages - 1 times, the issue under issue_next's
`if` once per chunk issued (begin's the first stages - 1, the acquires' the rest), the arms of
`if (seg >= sk.nseg_a)` for the rec / above segment's share of the chunks, the K-tile loop of
`compute` (`for (int kt`) once per K tile, the copy loops of `issue` their per-lane trips
(the streamed weights' under the `if` on kres, for the streamed chunks); in the kernel body
the pass loop once per pass, the prefetched pairs' unrolled loop (`q < kPre`) for the pairs
thread 0 has, the remainder pairs' loop its trips, the epilogue's K-split reads k_splits
times. A level the compiler unrolls or duplicates with a runtime trip count (the K tiles,
the K-split reads, the copies) is scaled by its marker instruction (HMMA, LDS, cp.async):
the marker's runs per step (predicated-off m-tiles included) over its static count in the
same context. Trip counts are the plan's: the chunk cursor walked per K split as the kernel
walks it (chunk_walk: never across kres), for the slowest warp (the K split with the most
streamed tiles, then the most chunks) of the first batch tile, thread 0 of the epilogue.
Assumed: each instruction of a run issues once (predicated-off instructions counted, no
scheduling across trips, no dual issue); a poll loop or an mbarrier wait runs once; the
sync phase once per step; a branch skipped by every lane of the warp (the remainder pairs,
the second prefetched pair at small batch) not counted.

Prediction (`predicted_us`, with a baseline report: `--baseline`, else the report itself):
the bf16 LSTM backward phases measured on the H200 (floors.py --phases,
benchmarks/results/NVIDIA-H200/phases.json, the kernel of commit 5af3a93; the baseline
report of the kernel before the lean GEMM, bf7395a, is taken as that kernel's instruction
stream: the commits between added compile-time bisection switches, off by default, and
comments to the step loop -- not checked instruction for instruction) scaled per measured phase by
dynamic instructions, this row over the baseline's bf16 row of the same batch: gemm (setup,
prefetch and GEMM: the prefetch and the step's arithmetic count with the GEMM there),
epilogue, barrier (the sync phase). The GEMM no less than its floor: the bytes a CTA receives
per step (rows x K x element bytes of gate gradients, plus the streamed weights the plan's
summary states) at 64 B/clk x 1.8 GHz, and ceil(chunks / (stages - 1)) dependent L2 round
trips of sass_report.GATHER_FLOOR_US; the barrier the flag hop's floor (FLAG_HOP_US, 0.61 us,
floors.json) plus the measured excess scaled by the whole step's ratio. TF32 has no measured
phases: priced at bf16's rate per instruction, with its own floor. Targets: <= 3 us per
backward step at B=1, <= 7 us at B=32.
Written to DIR/backward_sass_<label>.{json,md}.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sass_report as sr  # noqa: E402

_is = sr._is

# (name, C++ type, cell, tf32): the flags-synchronised instantiation of each
VARIANTS = [("bf16 LSTM", "__nv_bfloat16", "kLSTM", "false"),
            ("tf32 LSTM", "float", "kLSTM", "true")]
PLAN_BATCHES = sr.PLAN_BATCHES  # (the plan program's batches: sass_report._DEVICE_SETUP)
PHASES = ("setup", "prefetch", "sync", "gemm", "epilogue")
# the kernel body's path spans (marker comments) and those found in the GEMM's source
BODY_PATHS = ("step0", "final", "top", "dropout")
CODE_PATHS = ("cluster", "plain", "reg-tiles", "smem-tiles")
# branches whose arms are paths: (condition, then-path, else-path); conditions are
# matched whole, whitespace collapsed
BRANCHES = [(r"clustered", "cluster", "plain"),
            (r"!clustered", "plain", "cluster"),
            (r"c\.cluster > 1( && .*)?", "cluster", "plain"),
            (r"c\.reg_tiles > 0", "reg-tiles", "smem-tiles")]
K_PRE = 2  # the kernel's kPre: (unit, row) pairs per thread prefetched before the GEMM
THREADS = 256

C = sr.COUNTERS
COUNTERS = {
    "instructions": C["instructions"],
    "int div": C["int div"],
    # generic loads / stores print without a state space (LD.E, ST.E.64); LDS / LDG /
    # LDSM / LDGSTS are other opcodes
    "generic LD": _is("LD"),
    "generic ST": _is("ST"),
    "LDS": C["LDS"],
    "LDSM": C["LDSM"],
    "STS": C["STS"],
    "HMMA": C["HMMA"],
    "guards": _is("BSSY", "BSYNC", "WARPSYNC"),
    "BAR": C["BAR"],
    "MEMBAR": C["MEMBAR"],
    "fences": _is("FENCE", "ERRBAR", "CGAERRBAR"),
    "strong loads": C["strong loads"],
    "L1 invalidate": C["L1 invalidate"],
    "LDG": C["LDG"],
    "STG": C["STG"],
    "cp.async": C["cp.async"],
    "bulk copies": _is("UBLKCP"),
    "mbarrier": _is("SYNCS"),
    "SHFL": C["SHFL"],
    "branches": _is("BRA", "BRX", "JMP"),
}
SHOWN = list(COUNTERS)
# the counters whose instructions are also listed by source line (innermost frame)
SOURCED = ("int div", "generic LD", "generic ST")


def kernel_path() -> str:
    return os.path.join(sr.csrc(), "kernels", "backward_kernel.cuh")


def phase_marks() -> list[tuple[int, str]]:
    """sass_report.regions() of the backward kernel, checked: every phase marked, inside
    rnn_backward_kernel's body."""
    path = kernel_path()
    marks = sr.regions(path)
    names = {n for _, n in marks}
    missing = [p for p in PHASES if p not in names]
    if missing:
        raise RuntimeError(f"{path}: the step loop's [sass:{'] / [sass:'.join(missing)}] "
                           "marker(s) are missing")
    with open(path) as f:
        text = f.read()
    m = re.search(r"^rnn_backward_kernel\(", text, re.M)
    if m is None or marks[0][0] <= text.count("\n", 0, m.start()) + 1:
        raise RuntimeError(f"{path}: the [sass:...] markers must be inside rnn_backward_kernel")
    return marks


def _blank_comments(text: str) -> str:
    """The source with its comments and string literals blanked (newlines kept)."""
    def blank(m):
        return re.sub(r"[^\n]", " ", m.group(0))
    return re.sub(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"', blank, text, flags=re.S)


def _close(text: str, i: int) -> int:
    """The index of the bracket closing the one at text[i]."""
    pair = {"(": ")", "{": "}", "[": "]"}[text[i]]
    depth = 0
    for j in range(i, len(text)):
        if text[j] == text[i]:
            depth += 1
        elif text[j] == pair:
            depth -= 1
            if depth == 0:
                return j
    raise RuntimeError(f"unbalanced {text[i]!r} at offset {i}")


def _statement(text: str, i: int) -> tuple[int, int, bool]:
    """The statement from offset i: (start, end, is a block); a block's span is inside its
    braces, a simple statement's up to its `;`."""
    while text[i].isspace():
        i += 1
    if text[i] == "{":
        return i + 1, _close(text, i) - 1, True
    depth = 0
    for j in range(i, len(text)):
        if text[j] in "({[":
            depth += 1
        elif text[j] in ")}]":
            depth -= 1
        elif text[j] == ";" and depth == 0:
            return i, j, False
    raise RuntimeError(f"no end of the statement at offset {i}")


def _enclosing_end(text: str, i: int) -> int:
    """The offset just before the `}` that closes the block around offset i."""
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            if depth == 0:
                return j - 1
            depth -= 1
    raise RuntimeError(f"no enclosing block at offset {i}")


def code_paths(path: str | None = None) -> list[tuple[str, int, int, str]]:
    """[(file, first, last line, path name)] of the BRANCHES' arms in the kernel's source:
    the then-branch, the else-branch, or where the then-branch is a block ending in
    `return;` and there is no else, the rest of the enclosing block."""
    path = os.path.realpath(path or kernel_path())
    with open(path) as f:
        text = _blank_comments(f.read())

    def lines(a: int, b: int) -> tuple[int, int]:
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b].isspace():
            b -= 1
        return text.count("\n", 0, a) + 1, text.count("\n", 0, b) + 1

    out = []
    for m in re.finditer(r"\bif\s*\(", text):
        close = _close(text, m.end() - 1)
        cond = " ".join(text[m.end():close].split())
        arms = next(((t, e) for pat, t, e in BRANCHES if re.fullmatch(pat, cond)), None)
        if arms is None:
            continue
        a, b, block = _statement(text, close + 1)
        out.append((path, *lines(a, b), arms[0]))
        rest = re.match(r"\s*else\b", text[b + 2 if block else b + 1:])
        if rest:
            a2, b2, _ = _statement(text, (b + 2 if block else b + 1) + rest.end())
            out.append((path, *lines(a2, b2), arms[1]))
        elif block and text[a:b + 1].rstrip().endswith("return;"):
            out.append((path, *lines(b + 2, _enclosing_end(text, b + 2)), arms[1]))
    return out


def all_paths() -> list[tuple[str, int, int, str]]:
    """The body's marked spans and the GEMM's branch arms, each path checked present."""
    spans = sr.path_ranges(("backward_kernel.cuh",)) + code_paths()
    names = {n for *_, n in spans}
    missing = [p for p in BODY_PATHS + CODE_PATHS if p not in names]
    if missing:
        raise RuntimeError(f"{kernel_path()}: no span of the path(s) {', '.join(missing)} "
                           "(the [sass-path:...] markers, or the branches of BRANCHES)")
    return spans


_PLAN_PROGRAM = r"""
#include "kernels/backward_plan.h"
#include <cstdio>
using namespace fused_rnn;
static DeviceLimits dev;
// (ptxas: about 250 registers: one CTA per SM by the register file, as the smoke harness)
static int occ(const void*, int64_t smem) { return estimate_occupancy(dev, smem, 250); }
int main() {
%(device_setup)s
  printf("[");
  for (int dt = 0; dt < 2; ++dt)
    for (int bi = 0; bi < (int)(sizeof(batches) / sizeof(int)); ++bi) {
      ForwardProblem p;
      p.mode = Mode::kLSTM; p.num_layers = 4; p.hidden_size = 512; p.input_size = 512;
      p.batch = batches[bi]; p.seq_len = 512; p.allow_tf32 = true; p.need_reserve = true;
      p.dtype = dt == 0 ? DType::kBFloat16 : DType::kFloat32;
      const BackwardPlanResult r = plan_backward(p, dev, occ, nullptr);
      const BackwardConfig& c = r.cfg;
      std::string why;
      for (char ch : r.reason) { if (ch == '"' || ch == '\\') why += '\\'; why += ch; }
      printf("%%s{\"variant\": \"%%s\", \"batch\": %%d, \"ok\": %%d, \"units\": %%d, "
             "\"ctas_per_dir\": %%d, \"batch_slices\": %%d, \"rows_per_slice\": %%d, "
             "\"n_tiles\": %%d, \"k_splits\": %%d, \"stages\": %%d, \"stage_k\": %%d, "
             "\"cluster\": %%d, \"reg_tiles\": %%d, \"m_tiles\": %%d, \"gh_pad\": %%d, "
             "\"ka\": %%d, \"kw\": %%d, \"kres\": %%d, \"elem_bytes\": %%d, "
             "\"summary\": \"%%s\"}",
             dt + bi ? ", " : "", dt == 0 ? "bf16 LSTM" : "tf32 LSTM", batches[bi], r.ok,
             c.units_per_cta, c.ctas_per_dir, c.batch_slices, c.rows_per_slice, c.n_tiles,
             c.k_splits, c.stages, c.stage_k, c.cluster, c.reg_tiles, c.m_tiles, c.gh_pad,
             c.ka, c.kw, %(kres)s, c.elem_bytes, why.c_str());
    }
  printf("]\n");
}
"""


def plans(work: str) -> list[dict]:
    """The backward planner's choices for the report's shapes (host build of backward_plan.h)."""
    return sr.run_plan_program(_PLAN_PROGRAM, work, "bwd_plans",
                               kres="c.kres" if _has_kres() else "c.kw")


def plan_path(plan: dict) -> dict:
    """What one wave step of a layer below the top at 0 < k < T runs under `plan` (no
    dropout): the paths left out and the trip counts of the step's loops (CTA 0 of the
    layer-direction: the first batch slice, the first batch tile, K split 0)."""
    rows = min(plan["rows_per_slice"], plan["batch"])
    pass_rows = plan["n_tiles"] * 16
    nbv = min(rows, pass_rows)
    gt = plan["gh_pad"] // 16
    wlen = gt // plan["k_splits"]                    # K tiles of K split 0 per segment
    chunk_tiles = plan["stage_k"] // 16
    segments = plan["kw"] // plan["gh_pad"]          # above (D, L > 1) + rec
    tile_rows = min(16, nbv)
    per_row = min(chunk_tiles, wlen) * 16 // (16 // plan["elem_bytes"])
    pairs = plan["units"] * nbv
    clustered = plan["cluster"] > 1
    return {
        "exclude": set(BODY_PATHS) | {"plain" if clustered else "cluster",
                                      "smem-tiles" if plan["reg_tiles"] > 0 else "reg-tiles"},
        "trips": {
            "passes per step": -(-rows // pass_rows),
            "K chunks per warp item": segments * -(-wlen // chunk_tiles),
            "K tiles per chunk": min(chunk_tiles, wlen),
            # plain: 16-byte cp.async pieces per lane per chunk; cluster: one bulk copy of
            # a row per lane (rows dealt to the cluster's CTAs)
            "copies per lane per chunk": (-(-tile_rows // (32 * plan["cluster"])) if clustered
                                          else -(-tile_rows * per_row // 32)),
            "K-split reads per epilogue pair": plan["k_splits"],
            "epilogue pairs per CTA": pairs,
            "remainder pairs per thread": max(0, -(-(pairs - K_PRE * THREADS) // THREADS)),
        },
    }


# ------------------------------------------------------------------ the dynamic estimate

# Loop levels of the step (found in the source text when the report runs, for the old and
# the new kernel alike; see loop_spans): their names as pseudo-paths of sass_groups.
LOOP = "loop:"
# required in every tree; stream-if / stream-copy only where the weights may be streamed
LOOPS = ("pass", "chunk", "fill", "issue-if", "arm-rec", "arm-above", "tile", "copy",
         "pair-pre", "pair-rest", "ksplit")
# loops whose body the compiler may unroll or duplicate (a runtime trip count): their
# instructions are scaled by how often the loop's marker instruction runs per step over how
# often it appears in the static code, per context (the loop level around it that tells
# its inlined copies apart): {loop: (marker counter, context levels)}
MARKERS = {"tile": ("HMMA", ("arm-rec", "arm-above")),
           "ksplit": ("LDS", ("pair-pre", "pair-rest")),
           "copy": ("cp.async", ("fill", "chunk")),
           "stream-copy": ("cp.async", ("fill", "chunk"))}
# the H200's numbers the prediction's floors use
SM_CLOCK_GHZ = 1.8
L2_BYTES_PER_CLK = 64  # one SM's share of L2 bandwidth
STEP_TARGET_US = {1: 3.0, 32: 7.0}  # the backward step's targets per batch


def _has_kres() -> bool:
    with open(os.path.join(sr.csrc(), "kernels", "backward_params.h")) as f:
        return re.search(r"\bint kres\b", f.read()) is not None


def _source_int(pattern: str, path: str, default: int) -> int:
    try:
        with open(path) as f:
            m = re.search(pattern, f.read())
    except OSError:
        return default
    return int(m.group(1)) if m else default


def _lambdas(text: str, name: str, lo: int, hi: int) -> list[tuple[int, int]]:
    """[(start, end)] of the bodies of the lambdas `auto name = [..](..) {..}` in text[lo:hi]."""
    out = []
    for m in re.finditer(r"\bauto\s+" + re.escape(name) + r"\s*=\s*\[[^\]]*\]\s*\(", text[lo:hi]):
        close = _close(text, lo + m.end() - 1)
        body = text.index("{", close)
        out.append((body + 1, _close(text, body) - 1))
    return out


def _fors(text: str, lo: int, hi: int, header: str = r".*") -> list[tuple[int, int, str]]:
    """[(start, end, header)] of the `for` statements in text[lo:hi] whose header (the text in
    its parentheses, whitespace collapsed) matches `header`: from the keyword to the body's end."""
    out = []
    for m in re.finditer(r"\bfor\s*\(", text[lo:hi]):
        close = _close(text, lo + m.end() - 1)
        head = " ".join(text[lo + m.end():close].split())
        if re.search(header, head):
            a, b, _ = _statement(text, close + 1)
            out.append((lo + m.start(), b + 1 if text[b + 1:b + 2] == "}" else b, head))
    return out


def _ifs(text: str, lo: int, hi: int, cond: str = r".*"):
    """[(cond, then (start, end), else (start, end) or None)] of the `if`s in text[lo:hi]."""
    out = []
    for m in re.finditer(r"\bif\s*\(", text[lo:hi]):
        close = _close(text, lo + m.end() - 1)
        c = " ".join(text[lo + m.end():close].split())
        if not re.fullmatch(cond, c):
            continue
        a, b, block = _statement(text, close + 1)
        after = b + 2 if block else b + 1
        rest = re.match(r"\s*else\b", text[after:])
        els = _statement(text, after + rest.end())[:2] if rest else None
        out.append((c, (a, b), els))
    return out


def _function(text: str, name: str) -> tuple[int, int]:
    """The body of the function definition `name(...) {...}` (the first not followed by `;`)."""
    for m in re.finditer(r"^[^\n;]*?\b" + re.escape(name) + r"\(", text, re.M):
        close = _close(text, m.end() - 1)
        nxt = re.match(r"[^;{]*\{", text[close + 1:])
        if nxt:
            body = close + 1 + nxt.end() - 1
            return body + 1, _close(text, body) - 1
    raise RuntimeError(f"no definition of {name}")


def loop_spans(path: str | None = None) -> list[tuple[str, int, int, str]]:
    """[(file, first, last line, 'loop:NAME')] of the step's loop levels in the kernel's source:
    in warp_item, the `for` of the `pipeline` lambda (chunk: once per K chunk), the `for` of
    `begin` (fill: the pipeline's first stages - 1 issues), the first `if` of `issue_next`
    (issue-if: a chunk issued), the arms of the `if (seg >= sk.nseg_a)` in the calls of
    `pipeline(...)` (arm-rec / arm-above: a chunk of the rec / above segment), the
    `for (int kt` loops of the `compute` lambdas (tile: once per K tile), in `issue` the
    `for (int i = lane` copy loops (copy) and, inside an `if` on `kres`, the streamed
    weights' (stream-if, stream-copy); in the kernel body the pass loop `for (int64_t b0`
    (pass), the `for (... q < kPre ...)` loops (pair-pre: the prefetched pairs), the
    remainder pairs' loop (pair-rest) and the K-split reads' loop on `c.k_splits` (ksplit)."""
    path = os.path.realpath(path or kernel_path())
    with open(path) as f:
        text = _blank_comments(f.read())
    spans: list[tuple[int, int, str]] = []
    lo, hi = _function(text, "warp_item")
    for a, b in _lambdas(text, "pipeline", lo, hi):
        spans += [(s, e, "chunk") for s, e, _ in _fors(text, a, b)[:1]]
    for a, b in _lambdas(text, "begin", lo, hi):
        spans += [(s, e, "fill") for s, e, _ in _fors(text, a, b)[:1]]
    for a, b in _lambdas(text, "issue_next", lo, hi):
        spans += [(*then, "issue-if") for _, then, _ in _ifs(text, a, b)[:1]]
    for a, b in _lambdas(text, "compute", lo, hi):
        spans += [(s, e, "tile") for s, e, _ in _fors(text, a, b, r"^int kt\b")]
    for a, b in _lambdas(text, "issue", lo, hi):
        streamed = [then for c, then, _ in _ifs(text, a, b) if re.search(r"\bkres", c)]
        spans += [(*t, "stream-if") for t in streamed]
        for s, e, _ in _fors(text, a, b, r"^int i = lane\b"):
            inside = any(t[0] <= s <= t[1] for t in streamed)
            spans.append((s, e, "stream-copy" if inside else "copy"))
    for m in re.finditer(r"\bpipeline\s*\(\s*\[", text[lo:hi]):
        open_ = lo + m.end() - 2
        while text[open_] != "(":
            open_ -= 1
        a, b = open_ + 1, _close(text, open_) - 1
        for _, then, els in _ifs(text, a, b, r"(seg|seg_of\(v\)) >= sk\.nseg_a"):
            spans.append((*then, "arm-rec"))
            if els:
                spans.append((*els, "arm-above"))
    lo, hi = _function(text, "rnn_backward_kernel")
    spans += [(s, e, "pass") for s, e, _ in _fors(text, lo, hi, r"^int64_t b0 = ")]
    spans += [(s, e, "pair-pre") for s, e, _ in _fors(text, lo, hi, r"^int q = 0; q < kPre;")]
    spans += [(s, e, "pair-rest") for s, e, _ in _fors(text, lo, hi, r"^int pi = .*\bkPre\b")]
    spans += [(s, e, "ksplit") for s, e, _ in _fors(text, lo, hi, r"^int q = 0; q < .*c\.k_splits")]
    found = {n for *_, n in spans}
    missing = [n for n in LOOPS if n not in found]
    if missing:
        raise RuntimeError(f"{path}: no loop level(s) {', '.join(missing)} found in the source")

    def line(i):
        return text.count("\n", 0, i) + 1
    return [(path, line(a), line(b), LOOP + n) for a, b, n in spans]


def chunk_walk(plan: dict) -> dict:
    """The K chunks of the warp item of every K split (the kernel's chunk cursor: to the end of
    the segment's range, never across the resident prefix's end, kres) of a layer below the
    top; the split picked is the one with the most streamed tiles, then the most chunks (the
    slowest warp). Chunks: [(segment, tiles, streamed)]."""
    gt = plan["gh_pad"] // 16
    segs = plan["kw"] // plan["gh_pad"]          # above (D) + rec
    nseg_a = plan["ka"] // plan["gh_pad"]
    chunk_tiles = plan["stage_k"] // 16
    kres_t = plan.get("kres", plan["kw"]) // 16
    best = None
    for ks in range(plan["k_splits"]):
        s0 = gt * ks // plan["k_splits"]
        wlen = gt * (ks + 1) // plan["k_splits"] - s0
        chunks = []
        for seg in range(segs):
            off = 0
            while off < wlen:
                n = min(chunk_tiles, wlen - off)
                wk = seg * gt + s0 + off
                if wk < kres_t and kres_t - wk < n:
                    n = kres_t - wk
                chunks.append((seg, n, wk >= kres_t))
                off += n
        key = (sum(n for _, n, st in chunks if st), len(chunks))
        if best is None or key > best[0]:
            best = (key, ks, chunks)
    _, ks, chunks = best
    return {"k_split": ks, "chunks": chunks, "nseg_a": nseg_a}


def loop_trips(plan: dict, k_pre: int = K_PRE, max_m: int = 2, fixed_pieces: bool = True) -> dict:
    """Per wave step (a layer below the top, 0 < k < T, the slowest warp of the first batch
    tile, thread 0 of the epilogue): `factors`, the runs of each loop level per run of the
    level around it (`LEVEL@CONTEXT`: where it depends on the context, e.g. the chunks the
    pipeline's first stages - 1 issues fill vs those issued per acquired chunk), and
    `markers`, the marker instructions (MARKERS) each marker loop issues per step, per context.
    `fixed_pieces`: the B copy loop walks a fixed 8 pieces per row (else the chunk's)."""
    walk = chunk_walk(plan)
    ch = walk["chunks"]
    rows = min(plan["rows_per_slice"], plan["batch"])
    pass_rows = plan["n_tiles"] * 16
    nbv = min(rows, pass_rows)
    tile_rows = min(16, nbv)
    passes = -(-rows // pass_rows)
    eb = plan["elem_bytes"]
    piece = 16 // eb                                  # elements per 16-byte copy
    stages = plan["stages"]
    n_ch = len(ch)
    first = min(stages - 1, n_ch)                     # the chunks begin() issues
    tiles = sum(n for _, n, _ in ch)
    rec = [n for seg, n, _ in ch if seg >= walk["nseg_a"]]
    pairs = plan["units"] * nbv
    pre_run = min(k_pre, -(-pairs // THREADS))
    rest = max(0, -(-(pairs - k_pre * THREADS) // THREADS))
    clustered = plan["cluster"] > 1
    lanes = [0 if clustered else -(-tile_rows * (8 if fixed_pieces else n * 16 // piece) // 32)
             for _, n, _ in ch]
    s_lanes = [-(-(n * 16 * plan["units"] // piece) // 32) if st else 0 for _, n, st in ch]
    n_st = [1 if st else 0 for _, _, st in ch]
    subs = 2 if eb == 4 else 1                        # k8 (TF32) or k16 steps per K tile
    per_tile = 2 * max_m * subs     # HMMAs per K tile: n8 halves x m-tiles (predicated too)

    def ratio(a, b):
        return a / b if b else 0.0
    factors = {
        "pass": passes,
        "chunk": n_ch,
        "fill": stages - 1,
        # begin()'s stages - 1 calls issue the first chunks, the acquires the rest
        "issue-if@fill": ratio(first, stages - 1),
        "issue-if@chunk": ratio(n_ch - first, n_ch),
        "arm-rec": ratio(len(rec), n_ch),
        "arm-above": ratio(n_ch - len(rec), n_ch),
        "tile": ratio(tiles, n_ch),
        "copy": ratio(sum(lanes), n_ch),
        "stream-if@fill": ratio(sum(n_st[:first]), first),
        "stream-if@chunk": ratio(sum(n_st[first:]), n_ch - first),
        "stream-copy": ratio(sum(s_lanes), sum(n_st)),
        "pair-pre": pre_run / k_pre,
        "pair-rest": rest,
        "ksplit": plan["k_splits"],
    }
    markers = {
        "tile@arm-rec": passes * sum(rec) * per_tile,
        "tile@arm-above": passes * (tiles - sum(rec)) * per_tile,
        # two partial sums (rec, above) per K split per pair
        "ksplit@pair-pre": passes * pre_run * plan["k_splits"] * 2,
        "ksplit@pair-rest": passes * rest * plan["k_splits"] * 2,
        "copy@fill": passes * sum(lanes[:first]),
        "copy@chunk": passes * sum(lanes[first:]),
        "stream-copy@fill": passes * sum(s_lanes[:first]),
        "stream-copy@chunk": passes * sum(s_lanes[first:]),
    }
    return {"factors": factors, "markers": markers, "k_split": walk["k_split"],
            "chunks": n_ch, "tiles": tiles, "streamed_chunks": sum(n_st),
            "streamed_tiles": sum(n for _, n, st in ch if st), "passes": passes}


def _context(loop: str, loops) -> str | None:
    """The context level of a marker loop in an instruction's chain."""
    return next((c for c in MARKERS[loop][1] if c in loops), None)


def multipliers(insns, keep, trips: dict) -> list[float]:
    """Each instruction's runs per step: in a marker loop, the marker's runs in its context
    over its static count there (on the path `keep` accepts); elsewhere the product of the
    factors of the loop levels of its inline chain (`LEVEL@CONTEXT` where there is one;
    none: once)."""
    def levels(i):
        return {n[len(LOOP):] for n in i[1] if n.startswith(LOOP)}
    static: dict[str, int] = {}
    for i in insns:
        if keep(i):
            ls = levels(i)
            for L, (ctr, _) in MARKERS.items():
                if L in ls and COUNTERS[ctr](i[2], i[3]):
                    key = f"{L}@{_context(L, ls)}"
                    static[key] = static.get(key, 0) + 1
    f = trips["factors"]
    out = []
    for i in insns:
        ls = levels(i)
        m = None
        for L in MARKERS:
            key = f"{L}@{_context(L, ls)}"
            if L in ls and static.get(key) and key in trips["markers"]:
                m = trips["markers"][key] / static[key]
                break
        if m is None:
            m = 1.0
            for L in ls:
                m *= next((f[f"{L}@{c}"] for c in ls if f"{L}@{c}" in f), f.get(L, 1.0))
        out.append(m)
    return out


def dynamic_counts(insns, keep, trips: dict) -> dict:
    """{phase: counters} per step: each instruction times its multiplier (rounded)."""
    mult = multipliers(insns, keep, trips)
    out = {ph: {k: 0.0 for k in COUNTERS} for ph in PHASES}
    for i, m in zip(insns, mult):
        if keep(i) and i[0] in out and m:
            c = out[i[0]]
            for k, pred in COUNTERS.items():
                if pred(i[2], i[3]):
                    c[k] += m
    out = {ph: {k: round(v) for k, v in c.items()} for ph, c in out.items()}
    out["step"] = {k: sum(out[ph][k] for ph in PHASES) for k in COUNTERS}
    return out


def streamed_bytes(plan: dict) -> int:
    """The streamed weights' bytes per CTA per step, as the plan's summary says them."""
    m = re.search(r"the rest, ([\d.]+) KB per CTA per step", plan.get("summary", ""))
    return int(round(float(m.group(1)) * 1024)) if m else 0


def gemm_floor_us(plan: dict, trips: dict) -> dict:
    """The GEMM's floor: the bytes a CTA receives per step (its rows x K gate gradients, and
    the streamed weights) at one SM's share of L2 bandwidth, and the pipeline's dependent L2
    round trips (ceil(chunks / (stages - 1)), GATHER_FLOOR_US each)."""
    rows = min(plan["rows_per_slice"], plan["batch"])
    grads = rows * plan["kw"] * plan["elem_bytes"]
    stream = streamed_bytes(plan)
    bw = (grads + stream) / (L2_BYTES_PER_CLK * SM_CLOCK_GHZ * 1e3)
    trips_ = -(-trips["chunks"] // max(1, plan["stages"] - 1)) * trips["passes"]
    lat = trips_ * sr.GATHER_FLOOR_US
    return {"bytes": grads + stream, "streamed_bytes": stream, "bandwidth_us": bw,
            "round_trips": trips_, "latency_us": lat, "floor_us": max(bw, lat)}


# the measured phases (floors.py --phases) and the report's phases they cover: the prefetch
# and the step's arithmetic count with the GEMM there (phase_timing.h), the wait with the
# barrier
MEASURED = (("gemm", ("setup", "prefetch", "gemm")), ("epilogue", ("epilogue",)),
            ("barrier", ("sync",)))


def predict(rep: dict, base: dict | None) -> None:
    """Adds each planned row's predicted µs per phase on the H200 (see the module's doc): the
    measured bf16 backward phases of the same batch times the ratio of dynamic instructions,
    this row over the baseline's bf16 row; the GEMM no less than gemm_floor_us, the barrier
    the flag hop's floor plus the measured excess scaled by the whole step's ratio."""
    if base is None or not os.path.exists(sr.PHASES_JSON):
        return
    with open(sr.PHASES_JSON) as f:
        measured = {r["batch"]: r["phases_us"] for r in json.load(f)["phases"]
                    if r["kernel"] == "backward" and r.get("dtype") == "bf16"
                    and r.get("cell") == "LSTM"}
    bv = next((v for v in base["variants"] if v["variant"] == "bf16 LSTM"), None)
    if bv is None:
        return
    bases = {r["batch"]: r["dynamic"] for r in bv["plans"] if r.get("planned") and "dynamic" in r}

    def n(counts, phases):
        return sum(counts[p]["instructions"] for p in phases)
    for v in rep["variants"]:
        for r in v["plans"]:
            m, b = measured.get(r["batch"]), bases.get(r["batch"])
            if not r.get("planned") or m is None or b is None or "dynamic" not in r:
                continue
            d = r["dynamic"]
            pred = {}
            for name, phases in MEASURED[:2]:
                pred[name] = m[name] * n(d, phases) / n(b, phases)
            pred["gemm"] = max(pred["gemm"], r["floor"]["floor_us"])
            ratio = n(d, PHASES) / n(b, PHASES)
            hop = sr.FLAG_HOP_US
            pred["barrier"] = hop + max(0.0, m["barrier"] - hop) * ratio
            pred["total"] = pred["gemm"] + pred["epilogue"] + pred["barrier"]
            r["predicted_us"] = pred
            r["target_us"] = STEP_TARGET_US.get(r["batch"])
            r["calibration"] = (
                f"bf16 backward phases measured on the H200 at B={r['batch']} (floors.py "
                "--phases, the kernel of commit 5af3a93) x dynamic instructions over "
                f"{base['meta']['label']}'s bf16 row" +
                ("" if v["variant"] == "bf16 LSTM" else
                 "; TF32: no measured phases, priced at bf16's rate per instruction"))


def by_source(insns, keep, top: int = 8) -> dict[str, list]:
    """{counter: [[file:line, the line's text, instructions]]} of the SOURCED counters over
    the instructions `keep` accepts, by their innermost frame (most first, `top` of them)."""
    texts: dict[str, list[str]] = {}

    def text(path, no):
        if path not in texts:
            try:
                with open(path, errors="replace") as f:
                    texts[path] = f.read().split("\n")
            except OSError:
                texts[path] = []
        lines = texts[path]
        return lines[no - 1].strip() if 0 < no <= len(lines) else ""
    out = {}
    for k in SOURCED:
        pred, seen = COUNTERS[k], {}
        for i in insns:
            if keep(i) and pred(i[2], i[3]):
                seen[i[4]] = seen.get(i[4], 0) + 1
        ranked = sorted(seen.items(), key=lambda kv: (-kv[1], str(kv[0])))[:top]
        out[k] = [[f"{os.path.basename(src[0])}:{src[1]}" if src else "?",
                   text(*src) if src else "", n] for src, n in ranked]
    return out


def report(arch: str, label: str) -> dict:
    marks, paths = phase_marks(), all_paths()
    kernel = kernel_path()
    loops = loop_spans()
    with open(kernel) as f:
        ktext = f.read()
    k_pre = _source_int(r"constexpr int kPre = (\d+);", kernel, K_PRE)
    max_m = _source_int(r"constexpr int kBackwardMaxMTiles = (\d+);",
                        os.path.join(sr.csrc(), "kernels", "backward_params.h"), 2)
    fixed_pieces = re.search(r"for \(int i = lane; i < rows \* kRowPieces;", ktext) is not None
    nvdisasm = sr.find_nvdisasm()
    if nvdisasm is None or shutil.which("nvcc") is None:
        raise RuntimeError("needs nvcc and nvdisasm (pip install nvidia-cuda-nvdisasm)")
    with tempfile.TemporaryDirectory() as work:
        def build(v):
            name, ctype, cell, tf32 = v
            kind = "fused_rnn::SyncPolicy::kFlags"
            text = ('#include "kernels/backward_kernel.cuh"\n'
                    f"template __global__ void fused_rnn::bwd::rnn_backward_kernel<{ctype}, "
                    f"fused_rnn::CellKind::{cell}, {tf32}, {kind}>(\n"
                    "    const __grid_constant__ fused_rnn::BackwardParams);\n")
            return sr.compile_source(text, f"bwd_{ctype.strip('_')}_{cell}_{tf32}", arch, work)
        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            cubins = list(pool.map(build, VARIANTS))
        planned = plans(work)
        out = {"meta": sr.meta(arch, label, "sass_report_backward.py"),
               "paths": sorted({n for *_, n in paths}), "variants": []}
        for (name, ctype, cell, tf32), cubin in zip(VARIANTS, cubins):
            sass = subprocess.run([nvdisasm, "-c", "-gi", cubin], capture_output=True,
                                  text=True, check=True).stdout
            regs = sr.ptxas_registers(cubin)
            funcs = sr.sass_groups(sass, marks, paths + loops,
                                   lambda fn: "rnn_backward_kernel" in fn, kernel)
            (fn, insns), = funcs.items()

            def count(keep):
                return sr.tally(insns, keep, COUNTERS)

            def per_phase(keep):
                c = {ph: count(lambda i, ph=ph: i[0] == ph and keep(i)) for ph in PHASES}
                c["step"] = {k: sum(c[ph][k] for ph in PHASES) for k in COUNTERS}
                return c
            rows = []
            for plan in (p for p in planned if p["variant"] == name):
                if not plan["ok"]:
                    rows.append(dict(batch=plan["batch"], planned=False, reason=plan["summary"]))
                    continue
                path = plan_path(plan)
                ex = path["exclude"]
                trips = loop_trips(plan, k_pre, max_m, fixed_pieces)
                rows.append(dict(
                    batch=plan["batch"], planned=True, summary=plan["summary"],
                    config={k: plan[k] for k in ("units", "n_tiles", "k_splits", "stages",
                                                 "cluster", "reg_tiles")},
                    excluded=sorted(ex), trips=path["trips"],
                    counts=per_phase(lambda i, ex=ex: not (i[1] & ex)),
                    loops={k: trips[k] for k in ("k_split", "chunks", "tiles",
                                                  "streamed_chunks", "streamed_tiles",
                                                  "passes", "factors", "markers")},
                    dynamic=dynamic_counts(insns, lambda i, ex=ex: i[0] is not None and
                                           not (i[1] & ex), trips),
                    floor=gemm_floor_us(plan, trips),
                    sources=by_source(insns, lambda i, ex=ex: i[0] is not None and
                                      not (i[1] & ex))))
            out["variants"].append(dict(
                variant=name, kernel=fn, registers=regs.get(fn),
                kernel_total=count(lambda i: True),
                all_paths=per_phase(lambda i: True),
                cluster_only={ph: count(lambda i, ph=ph: i[0] == ph and "cluster" in i[1])
                              ["instructions"] for ph in PHASES},
                plans=rows))
    return out


def _table(counts: dict, rows) -> list[str]:
    lines = ["| phase | " + " | ".join(SHOWN) + " |", "| --- |" + " ---: |" * len(SHOWN)]
    for ph in rows:
        name = f"**{ph}**" if ph in ("step", "whole kernel") else ph
        lines.append(f"| {name} | " + " | ".join(str(counts[ph][k]) for k in SHOWN) + " |")
    return lines + [""]


def markdown(rep: dict, base: dict | None = None) -> str:
    m = rep["meta"]
    lines = [f"# Backward step loop, static SASS ({m['label']})", "",
             f"{m['arch']}, nvcc {m['nvcc']}, commit {m['git_commit']}"
             f"{' (csrc/ modified: ' + m['tree_note'] + ')' if m.get('tree_note') else ''}"
             f"{' (csrc/ modified)' if m['tree_dirty'] and not m.get('tree_note') else ''}, "
             f"{m['date']}; `{m['command']}`.", "",
             "Static instructions of rnn_backward_kernel<T, LSTM, TF32, kFlags>'s step loop "
             "per phase (see benchmarks/sass_report_backward.py: phases by the kernel body's "
             "`// [sass:...]` markers, everything inlined from warp_item in `gemm`; paths by "
             "the body's `// [sass-path:...]` spans and the GEMM's branches on the cluster and "
             "the register tiles). A loop counts once: its trip counts are listed per plan, "
             "not multiplied in. Generic LD / ST: loads / stores without a state space; "
             "guards: BSSY / BSYNC / WARPSYNC.", "",
             "Dynamic estimate per step (per plan, `dynamic`): each static instruction of the "
             "plan's path times the runs of the loop levels of its inline chain (loop_spans: "
             "the chunk loop of `pipeline`, the fills of `begin`, the K-tile loop of `compute`, "
             "the copy loops of `issue`, the epilogue's prefetched / remainder pairs and K-split "
             "reads), for the slowest warp (the K split with the most streamed tiles) and "
             "thread 0; the loops a compiler unrolls (K tiles, K-split reads, copies) scaled by "
             "their marker instruction's runs (HMMA, LDS, cp.async) over its static count. "
             "Assumed: every instruction of a run issues once (predicated-off ones counted, no "
             "scheduling across trips, a poll or mbarrier wait once), the remainder pairs' "
             "branch never taken where the plan has none.", ""]
    if base:
        lines += [f"Baseline: {base['meta']['label']} (commit {base['meta']['git_commit']}).",
                  ""]
    for v in rep["variants"]:
        ap = v["all_paths"]
        lines += [f"## {v['variant']} ({v['registers']} registers; the whole kernel "
                  f"{v['kernel_total']['instructions']} instructions, the step loop "
                  f"{ap['step']['instructions']} on all paths)", "",
                  "All paths of the step loop (cluster-only instructions: " +
                  ", ".join(f"{ph} {n}" for ph, n in v["cluster_only"].items()) + "):", ""]
        lines += _table(dict(ap, **{"whole kernel": v["kernel_total"]}),
                        PHASES + ("step", "whole kernel"))
        for r in v["plans"]:
            if not r["planned"]:
                lines += [f"### B={r['batch']}: not planned", "", f"{r['reason']}", ""]
                continue
            t = r["trips"]
            lines += [f"### B={r['batch']}", "", r["summary"], "",
                      "A step of a layer below the top, 0 < k < T, no dropout; left out: " +
                      ", ".join(r["excluded"]) + ". Loop trips: " +
                      "; ".join(f"{k} {n}" for k, n in t.items()) + ".", ""]
            lines += _table(r["counts"], PHASES + ("step",))
            if "dynamic" in r:
                lp = r["loops"]
                fl = r["floor"]
                lines += [f"Dynamic estimate per step (K split {lp['k_split']}: {lp['chunks']} "
                          f"chunks, {lp['tiles']} K tiles, {lp['streamed_chunks']} chunks "
                          f"streamed; factors: " + "; ".join(
                              f"{k} {x:.3g}" for k, x in lp["factors"].items()) + "):", ""]
                lines += _table(r["dynamic"], PHASES + ("step",))
                lines += [f"GEMM floor: {fl['bytes'] / 1024:.1f} KB per CTA per step "
                          f"({fl['streamed_bytes'] / 1024:.1f} KB streamed weights) at "
                          f"{L2_BYTES_PER_CLK} B/clk x {SM_CLOCK_GHZ} GHz = "
                          f"{fl['bandwidth_us']:.2f} us; {fl['round_trips']} dependent L2 round "
                          f"trips x {sr.GATHER_FLOOR_US} us = {fl['latency_us']:.2f} us.", ""]
            pred = r.get("predicted_us")
            if pred:
                tgt = r.get("target_us")
                lines += [f"Predicted on an H200 ({r['calibration']}): " +
                          ", ".join(f"{k} {pred[k]:.2f}" for k in ("gemm", "epilogue",
                                                                    "barrier")) +
                          f"; **{pred['total']:.2f} us per wave step**" +
                          (f" (target <= {tgt:g} us)" if tgt else "") + ".", ""]
            for k, rows in r["sources"].items():
                if rows:
                    lines += [f"{k} by source line (innermost frame): " + "; ".join(
                        f"{where} `{txt}` x{n}" for where, txt, n in rows) + ".", ""]
    if base:
        lines += _comparison(rep, base)
    return "\n".join(lines)


COMPARED = ("instructions", "int div", "generic LD", "generic ST", "LDSM", "HMMA", "guards")


def _comparison(rep: dict, base: dict) -> list[str]:
    """Before -> after per plan and phase: the static and dynamic counts, the predictions."""
    lines = [f"## Against the baseline ({base['meta']['label']} -> {rep['meta']['label']})", "",
             "Per plan and phase: static instructions, dynamic (estimated per step), and the "
             "static integer divisions, generic LD / ST, LDSM, HMMA and guards on the plan's "
             "path (a plan the baseline did not plan: - ).", ""]
    head = ["static", "dynamic"] + [k for k in COMPARED if k != "instructions"]
    for v in rep["variants"]:
        bv = next((x for x in base["variants"] if x["variant"] == v["variant"]), None)
        for r in v["plans"]:
            if not r.get("planned"):
                continue
            br = next((x for x in (bv or {}).get("plans", []) if x["batch"] == r["batch"]
                       and x.get("planned")), None)
            lines += [f"### {v['variant']}, B={r['batch']}", "",
                      "| phase | " + " | ".join(head) + " |", "| --- |" + " ---: |" * len(head)]

            def cell(get, ph, k):
                a = get(r, ph, k)
                b = get(br, ph, k) if br else None
                return f"{a}" if b is None else f"{b} -> {a}"
            for ph in PHASES + ("step",):
                cells = [cell(lambda x, p, k: x["counts"][p][k], ph, "instructions"),
                         cell(lambda x, p, k: x.get("dynamic", {}).get(p, {}).get(k), ph,
                              "instructions")]
                cells += [cell(lambda x, p, k: x["counts"][p][k], ph, k) for k in head[2:]]
                name = "**step**" if ph == "step" else ph
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines.append("")
    rows = []
    for v in rep["variants"]:
        bv = next((x for x in base["variants"] if x["variant"] == v["variant"]), None)
        for r in v["plans"]:
            pred = r.get("predicted_us")
            if not pred:
                continue
            br = next((x for x in (bv or {}).get("plans", []) if x["batch"] == r["batch"]
                       and x.get("predicted_us")), None)

            def us(k):
                b = br["predicted_us"][k] if br else None
                return f"{pred[k]:.2f}" if b is None else f"{b:.2f} -> {pred[k]:.2f}"
            tgt = r.get("target_us")
            rows.append(f"| {v['variant']} | {r['batch']} | {us('gemm')} | {us('epilogue')} | "
                        f"{us('barrier')} | **{us('total')}** | {r['floor']['floor_us']:.2f} | "
                        f"{'<= %g' % tgt if tgt else '-'} |")
    if rows:
        lines += ["### Predicted us per wave step on an H200", "",
                  "The measured phases' split: gemm (the step's arithmetic, the prefetch and "
                  "the GEMM), epilogue, barrier (the wait). The baseline's rows are the "
                  "measurement itself, floors applied.", "",
                  "| variant | B | gemm | epilogue | barrier | step | GEMM floor | target |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"] + rows + [""]
    return lines


def main(argv=None) -> int:
    return sr.cli(argv, __doc__.split("\n\n")[0], "backward_sass", report, predict, markdown)


if __name__ == "__main__":
    sys.exit(main())
