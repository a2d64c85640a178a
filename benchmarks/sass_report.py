"""Static SASS report of the forward kernel's step loop (no GPU needed).

    python benchmarks/sass_report.py [--arch 9.0a] [--out DIR] [--label NAME]

Compiles the forward kernel (csrc/kernels/forward_kernel.cuh) with the extension's own
nvcc flags into a cubin per variant -- bf16 and TF32 LSTM, flag synchronisation, the
variants of the bf16 / TF32 L=4 H=512 plans at B=1 and B=32 -- disassembles it with
nvdisasm (line information, inlined frames included) and counts, per phase of the step
loop, what a wave step executes: instructions, integer divisions, constant-bank reads,
LDSM / HMMA, CTA barriers, memory barriers, acquire loads and L1 invalidates, global
loads / stores, cp.async, shuffles, MUFU, branches.

Where an instruction belongs: the kernel body's source is cut into regions by marker
comments (`// [sass:NAME]`, forward_kernel.cuh); an instruction counts for the region
of its outermost frame's line (the kernel body's line it was inlined into). `setup` is
the step's own address arithmetic, `sync` the flag wait and the publish.

Static counts are not executed counts: where the step loop has loops of its own (the
GEMM's column-tile pairs, the epilogue's rounds when there are more (unit, batch row)
pairs than threads) the report gives each plan's trip counts beside them, from the
planner itself (forward_plan.h, compiled for the host with the H200's numbers).

The per-phase prediction scales the phases measured on the H200 (floors.py --phases,
benchmarks/results/NVIDIA-H200/phases.json, the kernel of commit 5af3a93) by the ratio
of instructions the critical warp issues per step, new over old, for the phases that
are instruction-bound (gather, GEMM, epilogue); the barrier wait is the flag hop's floor
(0.61 us, floors.json) plus the measured excess scaled by the same ratio as the work
that causes it (the producers' step). Written to DIR/forward_sass_<label>.{json,md}.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
KERNEL = os.path.join(CSRC, "kernels", "forward_kernel.cuh")

# (name, C++ type, cell, tf32)
VARIANTS = [("bf16 LSTM", "__nv_bfloat16", "kLSTM", "false"),
            ("tf32 LSTM", "float", "kLSTM", "true")]
# The plans the report is about: bf16 / TF32 LSTM L=4 H=I=512 T=512 at these batches,
# planned with the H200's numbers.
PLAN_BATCHES = (1, 32)
H200 = dict(sm_count=132, smem_optin=232448, smem_per_sm=233472, cc_major=9, cc_minor=0)

# What is counted: a name and a predicate on (opcode with modifiers, operand text).
def _is(*names):
    def pred(op, args):
        base = op.split(".")[0]
        return any(op == n or op.startswith(n + ".") if "." in n else base == n for n in names)
    return pred


COUNTERS = {
    "instructions": lambda op, args: op != "NOP",
    # 32-bit integer division / modulo: the compiler's reciprocal sequence starts with an
    # I2F.U32.RP; 64-bit ones call a subroutine (CALL.REL.NOINC to __internal_*div*).
    "int div": lambda op, args: op.startswith("I2F.U32.RP") or op.startswith("I2F.RP") or
    op.startswith("CALL"),
    "const reads": lambda op, args: op.startswith("LDC") or "c[0x" in args,
    "LDSM": _is("LDSM"),
    "HMMA": _is("HMMA"),
    "LDS": _is("LDS"),
    "STS": _is("STS"),
    "BAR": _is("BAR"),
    "MEMBAR": _is("MEMBAR"),
    "acquire loads": lambda op, args: op.startswith("LDG") and ".STRONG" in op,
    "L1 invalidate": _is("CCTL"),
    "LDG": _is("LDG"),
    "STG": _is("STG"),
    "cp.async": _is("LDGSTS"),
    "atomics": _is("ATOM", "ATOMG", "RED", "REDG"),
    "SHFL": _is("SHFL"),
    "MUFU": _is("MUFU"),
    "branches": _is("BRA", "BRX", "JMP", "WARPSYNC", "BSSY", "BSYNC"),
}


def build_config():
    """fused_rnn/_build.py by path (no torch import): the extension's nvcc flags."""
    spec = importlib.util.spec_from_file_location(
        "_fused_rnn_build_cfg", os.path.join(ROOT, "fused_rnn", "_build.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def find_nvdisasm() -> str | None:
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        from sanitize_build import find_nvdisasm as find
    finally:
        sys.path.pop(0)
    return find()


def regions() -> list[tuple[int, str]]:
    """[(first line, region name)] of the kernel body, from the `// [sass:NAME]` markers."""
    out = []
    with open(KERNEL) as f:
        for no, line in enumerate(f, 1):
            m = re.match(r"\s*// \[sass:(\w+)\]", line)
            if m:
                out.append((no, m.group(1)))
    names = [n for _, n in out]
    if not out or names[0] != "setup" or names[-1] != "end":
        raise RuntimeError(f"{KERNEL}: the [sass:setup] ... [sass:end] markers are missing")
    return out


def region_of(line: int, marks: list[tuple[int, str]]) -> str | None:
    """The step-loop region of a kernel-body line, None outside the loop."""
    name = None
    for first, n in marks:
        if line >= first:
            name = n
    return None if name in (None, "end") or line < marks[0][0] else name


def compile_variant(ctype: str, cell: str, tf32: str, arch: str, work: str) -> str:
    """nvcc -cubin of one forward variant with the extension's flags; the cubin's path."""
    tag = f"{ctype.strip('_')}_{cell}_{tf32}"
    src = os.path.join(work, f"fwd_{tag}.cu")
    with open(src, "w") as f:
        f.write('#include "kernels/forward_kernel.cuh"\n'
                f"FRNN_INSTANTIATE_FORWARD({ctype}, fused_rnn::CellKind::{cell}, {tf32})\n")
    cubin = os.path.join(work, f"fwd_{tag}.cubin")
    flags = [f for f in build_config().nvcc_flags([arch]) if not f.startswith("-gencode")]
    code = arch.replace(".", "")
    cmd = ["nvcc", *flags, f"-gencode=arch=compute_{code},code=sm_{code}", "-Xptxas", "-v",
           f"-I{CSRC}", "-cubin", src, "-o", cubin]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(" ".join(cmd) + "\n" + proc.stderr[-4000:])
    with open(cubin + ".ptxas", "w") as f:
        f.write(proc.stderr)
    return cubin


def ptxas_registers(cubin: str) -> dict[str, int]:
    """{mangled kernel: registers} from the ptxas report beside the cubin."""
    out, fn = {}, None
    with open(cubin + ".ptxas") as f:
        for line in f:
            m = re.search(r"Compiling entry function '(\S+)'", line)
            if m:
                fn = m.group(1)
            m = re.search(r"Used (\d+) registers", line)
            if m and fn:
                out[fn] = int(m.group(1))
    return out


_FILE = re.compile(r'\s*//## File "([^"]+)", line (\d+)')
_INSN = re.compile(r"\s+/\*[0-9a-f]{4,}\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_FUNC = re.compile(r"\s*//-+ \.text\.(\S+) -+")


def count_step_loop(sass: str, marks) -> dict[str, dict[str, dict[str, int]]]:
    """{mangled kernel: {region: {counter: n}}} over the step loop's instructions."""
    kernel_path = os.path.realpath(KERNEL)
    funcs: dict[str, dict[str, dict[str, int]]] = {}
    cur = None
    outer_line = None  # the kernel body's line of the current instruction group
    for line in sass.splitlines():
        m = _FUNC.match(line)
        if m:
            cur = funcs.setdefault(m.group(1), {})
            outer_line = None
            continue
        m = _FILE.match(line)
        if m:
            # the last frame of a group is the outermost: inlined-at chains end in the body
            chain = re.findall(r'"([^"]+)", line (\d+)', line)
            path, no = chain[-1]
            outer_line = int(no) if os.path.realpath(path) == kernel_path else None
            continue
        m = _INSN.match(line)
        if not m or cur is None or (m.group(1) or "").strip() == "@!PT":
            continue
        region = region_of(outer_line, marks) if outer_line is not None else None
        if region is None:
            continue
        op, args = m.group(2), m.group(3)
        counts = cur.setdefault(region, {k: 0 for k in COUNTERS})
        for k, pred in COUNTERS.items():
            if pred(op, args):
                counts[k] += 1
    for regs in funcs.values():
        total = {k: sum(r[k] for r in regs.values()) for k in COUNTERS}
        regs["step loop"] = total
    return funcs


_PLAN_PROGRAM = r"""
#include "kernels/forward_plan.h"
#include <cstdio>
using namespace fused_rnn;
static DeviceLimits dev;
static int occ(const void*, int64_t smem) { return estimate_occupancy(dev, smem); }
int main(int argc, char** argv) {
  dev.sm_count = %(sm_count)d; dev.smem_optin_per_block = %(smem_optin)d;
  dev.smem_per_sm = %(smem_per_sm)d; dev.cc_major = %(cc_major)d; dev.cc_minor = %(cc_minor)d;
  const int batches[] = {%(batches)s};
  printf("[");
  for (int dt = 0; dt < 2; ++dt)
    for (int bi = 0; bi < (int)(sizeof(batches) / sizeof(int)); ++bi) {
      ForwardProblem p;
      p.mode = Mode::kLSTM; p.num_layers = 4; p.hidden_size = 512; p.input_size = 512;
      p.batch = batches[bi]; p.seq_len = 512; p.allow_tf32 = true; p.can_project_input = true;
      p.dtype = dt == 0 ? DType::kBFloat16 : DType::kFloat32;
      const PlanResult r = plan_forward(p, dev, occ, nullptr);
      const ForwardConfig& c = r.cfg;
      printf("%%s{\"variant\": \"%%s\", \"batch\": %%d, \"ok\": %%d, \"units\": %%d, "
             "\"batch_tile\": %%d, \"m_group\": %%d, \"k_chunk\": %%d, \"x_splits\": %%d, "
             "\"h_splits\": %%d, \"items\": %%d, \"reg_tiles\": %%d, \"item_tiles\": %%d, "
             "\"m_pad\": %%d, \"summary\": \"%%s\"}",
             dt + bi ? ", " : "", dt == 0 ? "bf16 LSTM" : "tf32 LSTM", batches[bi], r.ok,
             c.units_per_cta, c.batch_tile, c.m_group, c.k_chunk, c.x_splits, c.h_splits,
             r.ok ? frag_items(c) : 0, r.ok ? item_reg_tiles(c, 0) : 0,
             r.ok ? item_tiles(c, 0) : 0, c.m_pad, r.reason.c_str());
    }
  printf("]\n");
}
"""


def plans(work: str) -> list[dict]:
    """The planner's choices for the report's shapes (host build of forward_plan.h)."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise RuntimeError("a host C++ compiler is needed for the plans")
    src, exe = os.path.join(work, "plans.cpp"), os.path.join(work, "plans")
    with open(src, "w") as f:
        f.write(_PLAN_PROGRAM % dict(H200, batches=", ".join(map(str, PLAN_BATCHES))))
    subprocess.run([cxx, "-std=c++17", "-O1", f"-I{CSRC}", src, "-o", exe], check=True)
    return json.loads(subprocess.run([exe], capture_output=True, text=True, check=True).stdout)


def trips(plan: dict) -> dict[str, int]:
    """Per-step trip counts of the loops inside the step loop's phases, for one plan (the
    critical warp / thread): the GEMM's column-tile pairs per item and items per warp, the
    epilogue's rounds over (unit, batch row) pairs, and the batch tiles per step."""
    B, nb = plan["batch"], plan["batch_tile"]
    tiles = -(-B // nb)
    rows = min(B, nb)
    n8 = -(-rows // 8)
    return dict(batch_tiles=tiles, gemm_column_pairs=-(-n8 // 2),
                gemm_items_per_warp=-(-plan["items"] // 8),
                epilogue_rounds=-(-plan["units"] * rows // 256))


def report(arch: str, label: str) -> dict:
    marks = regions()
    nvdisasm = find_nvdisasm()
    if nvdisasm is None or shutil.which("nvcc") is None:
        raise RuntimeError("needs nvcc and nvdisasm (pip install nvidia-cuda-nvdisasm)")
    with tempfile.TemporaryDirectory() as work:
        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            cubins = list(pool.map(lambda v: compile_variant(v[1], v[2], v[3], arch, work),
                                   VARIANTS))
        planned = plans(work)
        out = {"meta": meta(arch, label), "regions": [n for _, n in marks], "variants": []}
        for (name, *_), cubin in zip(VARIANTS, cubins):
            sass = subprocess.run([nvdisasm, "-c", "-gi", cubin], capture_output=True,
                                  text=True, check=True).stdout
            regs = ptxas_registers(cubin)
            for fn, counts in sorted(count_step_loop(sass, marks).items()):
                if "rnn_forward_kernel" not in fn or "SyncPolicyE2E" not in fn:
                    continue  # the flags variant: the planner's default
                out["variants"].append(dict(
                    variant=name, kernel=fn, registers=regs.get(fn), regions=counts,
                    plans=[dict(p, trips=trips(p)) for p in planned if p["variant"] == name]))
    return out


def meta(arch: str, label: str) -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None
    nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout
    release = re.search(r"release ([\d.]+)", nvcc)
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "label": label, "arch": f"sm_{arch.replace('.', '')}",
            "git_commit": git("rev-parse", "--short", "HEAD"),
            "tree_dirty": bool(git("status", "--porcelain", "--", "csrc")),
            "nvcc": release.group(1) if release else None,
            "command": "python benchmarks/sass_report.py " + " ".join(sys.argv[1:])}


SHOWN = ["instructions", "int div", "const reads", "LDSM", "HMMA", "LDS", "STS", "BAR",
         "MEMBAR", "acquire loads", "L1 invalidate", "LDG", "STG", "cp.async", "atomics", "SHFL",
         "MUFU", "branches"]


def markdown(rep: dict) -> str:
    m = rep["meta"]
    lines = [f"# Forward step loop, static SASS ({m['label']})", "",
             f"{m['arch']}, nvcc {m['nvcc']}, commit {m['git_commit']}"
             f"{' (csrc/ modified)' if m['tree_dirty'] else ''}, {m['date']}; "
             f"`{m['command']}`.", "",
             "Static instruction counts of the flags variant's step loop, per region (the "
             "kernel body's `// [sass:...]` markers); loops inside a region count once "
             "(their trip counts per plan are below each table).", ""]
    for v in rep["variants"]:
        lines += [f"## {v['variant']} ({v['registers']} registers)", "",
                  "| region | " + " | ".join(SHOWN) + " |",
                  "| --- |" + " ---: |" * len(SHOWN)]
        order = [r for r in ("setup", "sync", "gather", "gemm", "epilogue") if r in v["regions"]]
        for r in order + ["step loop"]:
            c = v["regions"][r]
            name = f"**{r}**" if r == "step loop" else r
            lines.append(f"| {name} | " + " | ".join(str(c[k]) for k in SHOWN) + " |")
        lines.append("")
        for p in v["plans"]:
            t = p["trips"]
            lines.append(f"- B={p['batch']}: {p['summary']}")
            lines.append(f"  - per step: {t['batch_tiles']} batch tile(s); GEMM "
                         f"{t['gemm_items_per_warp']} item(s) per warp x {t['gemm_column_pairs']} "
                         f"column-tile pair(s); epilogue {t['epilogue_rounds']} round(s)")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="9.0a")
    ap.add_argument("--label", default="current")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "sass"))
    a = ap.parse_args(argv)
    rep = report(a.arch, a.label)
    os.makedirs(a.out, exist_ok=True)
    base = os.path.join(a.out, f"forward_sass_{a.label}")
    with open(base + ".json", "w") as f:
        json.dump(rep, f, indent=1)
        f.write("\n")
    md = markdown(rep)
    with open(base + ".md", "w") as f:
        f.write(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
