"""Static SASS report of the backward kernel's step loop (no GPU needed).

    python benchmarks/sass_report_backward.py [--arch 9.0a] [--out DIR] [--label NAME] [--root TREE]

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

Static code: a loop counts once. Each plan row lists the trip counts of the loops inside
the step (passes, K chunks per warp item, K tiles per chunk, copies per lane, K-split
reads and remainder pairs of the epilogue); nothing is multiplied by them. The integer
divisions and the generic loads / stores on the plan's path are also listed by the source
line of their innermost frame (the `%` or `/` they compute, the wmma load they come from).
Written to DIR/backward_sass_<label>.{json,md}.
"""

from __future__ import annotations

import argparse
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
PLAN_BATCHES = (1, 32)
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
  dev.sm_count = %(sm_count)d; dev.smem_optin_per_block = %(smem_optin)d;
  dev.smem_per_sm = %(smem_per_sm)d; dev.cc_major = %(cc_major)d; dev.cc_minor = %(cc_minor)d;
  const int batches[] = {%(batches)s};
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
             "\"ka\": %%d, \"kw\": %%d, \"elem_bytes\": %%d, \"summary\": \"%%s\"}",
             dt + bi ? ", " : "", dt == 0 ? "bf16 LSTM" : "tf32 LSTM", batches[bi], r.ok,
             c.units_per_cta, c.ctas_per_dir, c.batch_slices, c.rows_per_slice, c.n_tiles,
             c.k_splits, c.stages, c.stage_k, c.cluster, c.reg_tiles, c.m_tiles, c.gh_pad,
             c.ka, c.kw, c.elem_bytes, why.c_str());
    }
  printf("]\n");
}
"""


def plans(work: str) -> list[dict]:
    """The backward planner's choices for the report's shapes (host build of backward_plan.h)."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise RuntimeError("a host C++ compiler is needed for the plans")
    src, exe = os.path.join(work, "bwd_plans.cpp"), os.path.join(work, "bwd_plans")
    with open(src, "w") as f:
        f.write(_PLAN_PROGRAM % dict(sr.H200, batches=", ".join(map(str, PLAN_BATCHES))))
    subprocess.run([cxx, "-std=c++17", "-O1", f"-I{sr.csrc()}", src, "-o", exe], check=True)
    return json.loads(subprocess.run([exe], capture_output=True, text=True, check=True).stdout)


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
            funcs = sr.sass_groups(sass, marks, paths, lambda fn: "rnn_backward_kernel" in fn,
                                   kernel)
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
                rows.append(dict(
                    batch=plan["batch"], planned=True, summary=plan["summary"],
                    config={k: plan[k] for k in ("units", "n_tiles", "k_splits", "stages",
                                                 "cluster", "reg_tiles")},
                    excluded=sorted(ex), trips=path["trips"],
                    counts=per_phase(lambda i, ex=ex: not (i[1] & ex)),
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


def markdown(rep: dict) -> str:
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
             "guards: BSSY / BSYNC / WARPSYNC.", ""]
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
            for k, rows in r["sources"].items():
                if rows:
                    lines += [f"{k} by source line (innermost frame): " + "; ".join(
                        f"{where} `{txt}` x{n}" for where, txt, n in rows) + ".", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="9.0a")
    ap.add_argument("--label", default="current")
    ap.add_argument("--out", default=os.path.join(sr.ROOT, "benchmarks", "results", "sass"))
    ap.add_argument("--root", default=sr.ROOT,
                    help="the tree whose csrc/ is reported (default: this checkout)")
    ap.add_argument("--tree-note", default="",
                    help="what was changed in --root's csrc/ (said in the report)")
    a = ap.parse_args(argv)
    sr.TREE = os.path.abspath(a.root)
    rep = report(a.arch, a.label)
    if a.tree_note:
        rep["meta"]["tree_note"] = a.tree_note
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, f"backward_sass_{a.label}")
    with open(path + ".json", "w") as f:
        json.dump(rep, f, indent=1)
        f.write("\n")
    md = markdown(rep)
    with open(path + ".md", "w") as f:
        f.write(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
