"""Static SASS report of the forward kernel's step loop (no GPU needed).

    python benchmarks/sass_report.py [--arch 9.0a] [--out DIR] [--label NAME] [--root TREE]

Compiles the forward kernel (csrc/kernels/forward_kernel.cuh) with the extension's own
nvcc flags into a cubin per variant -- bf16 and TF32 LSTM, flag synchronisation --
disassembles it with nvdisasm (line information, inlined frames included) and counts,
for the planner's bf16 / TF32 L=4 H=I=512 plans at B=1 and B=32 (H200 numbers), the
instructions of one wave step on the plan's path, per phase: instructions, integer
divisions, constant-bank reads, LDSM / HMMA, CTA barriers, memory barriers, acquire
loads (the flag polls) and L1 invalidates, global loads / stores, cp.async, atomics, shuffles, MUFU,
branches.

Where an instruction belongs:
  - phase: the kernel body is cut into regions by marker comments (`// [sass:NAME]`);
    an instruction counts for the region of its outermost frame's line (the kernel
    body's line it was inlined into). `setup` is the step's own address arithmetic,
    `sync` the flag wait and the publish.
  - path: code between `// [sass-path:NAME:begin]` and `...:end]` (anywhere in the
    file; an instruction is on a path if any frame of its inline chain is) runs only for
    some plans: `unaligned` (rows that are not 16-byte vectors), `step0` (the state's
    read at step 0), `layer0` (layer 0's projected input: the counts are for a layer >= 1)
    and, since these are inference plans (as floors.py --phases measured them),
    `lengths`, `reserve` and `dropout`, never per step of these plans; `generic-gemm` or the `lean-gemm`
    bodies, `epilogue-pairs` or `epilogue-groups`, `sync-flags` (the default) or
    `sync-lean` (FUSED_RNN_SYNC=lean) as the plan picks. The lean GEMM's instantiations
    share their source lines, so each one a plan runs is compiled on its own (a kernel
    that calls it once) and counted apart, times its calls per step.
Loops inside a phase count once (their trip counts per plan are listed); the unrolled
GEMM has none.

The per-phase prediction scales the phases measured on the H200 (floors.py --phases,
benchmarks/results/NVIDIA-H200/phases.json: bf16, the kernel of commit 5af3a93, the
flags protocol) by the ratio of the step's instructions on the plan's path, new over
this report's `--baseline` (the same count for that kernel), per phase (gather with
setup, GEMM, epilogue), the gather no less than one L2 round trip (GATHER_FLOOR_US);
the barrier wait is the flag hop's floor (0.61 us, floors.json) plus the measured excess
scaled by the whole step's ratio (the wait is mostly for the slowest producer's step).
TF32 has no measured phases: its rows are priced at bf16's rate per instruction. Written to DIR/forward_sass_<label>.{json,md}.
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
# The tree whose kernel is reported (--root: e.g. a worktree of an older commit); the
# build flags are always this checkout's (fused_rnn/_build.py).
TREE = ROOT


def csrc() -> str:
    return os.path.join(TREE, "csrc")


def kernel_path() -> str:
    return os.path.join(csrc(), "kernels", "forward_kernel.cuh")

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
    # ld.relaxed / ld.acquire at .gpu scope (the flag polls): LDG...STRONG.GPU; an acquire
    # is followed by an L1 invalidate (CCTL), a relaxed poll is not
    "strong loads": lambda op, args: op.startswith("LDG") and ".STRONG" in op,
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


def regions(kernel: str | None = None) -> list[tuple[int, str]]:
    """[(first line, region name)] of the kernel body, from the `// [sass:NAME]` markers
    of `kernel` (default: the forward kernel's file)."""
    kernel = kernel or kernel_path()
    out = []
    with open(kernel) as f:
        for no, line in enumerate(f, 1):
            m = re.match(r"\s*// \[sass:(\w+)\]", line)
            if m and m.group(1) != "cold":
                out.append((no, m.group(1)))
    names = [n for _, n in out]
    if not out or names[0] != "setup" or names[-1] != "end":
        raise RuntimeError(f"{kernel}: the [sass:setup] ... [sass:end] markers are missing")
    return out


# The files whose `// [sass-path:...]` spans the report follows (the kernel's own, and the
# gate math's accurate / hardware nonlinearities).
PATH_FILES = ("forward_kernel.cuh", "gate_math.h")


def path_ranges(files=PATH_FILES) -> list[tuple[str, int, int, str]]:
    """[(file, first, last line, path name)] of the `// [sass-path:NAME:begin]` ... `end]`
    spans of `files` (names in csrc/kernels/)."""
    out = []
    for name in files:
        path = os.path.realpath(os.path.join(csrc(), "kernels", name))
        if not os.path.exists(path):
            continue
        open_ = {}
        with open(path) as f:
            for no, line in enumerate(f, 1):
                m = re.search(r"// \[sass-path:([\w-]+):(begin|end)\]", line)
                if not m:
                    continue
                pname, what = m.groups()
                if what == "begin":
                    open_[pname] = no
                elif pname in open_:
                    out.append((path, open_.pop(pname), no, pname))
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
    text = ('#include "kernels/forward_kernel.cuh"\n'
            f"FRNN_INSTANTIATE_FORWARD({ctype}, fused_rnn::CellKind::{cell}, {tf32})\n")
    return compile_source(text, f"fwd_{tag}", arch, work)


def compile_source(text: str, tag: str, arch: str, work: str) -> str:
    """nvcc -cubin of a translation unit `text` (work/tag.cu) with the extension's flags and
    csrc/ on the include path; the cubin's path (ptxas -v's report beside it, .ptxas)."""
    src = os.path.join(work, f"{tag}.cu")
    with open(src, "w") as f:
        f.write(text)
    cubin = os.path.join(work, f"{tag}.cubin")
    flags = [f for f in build_config().nvcc_flags([arch]) if not f.startswith("-gencode")]
    code = arch.replace(".", "")
    cmd = ["nvcc", *flags, f"-gencode=arch=compute_{code},code=sm_{code}", "-Xptxas", "-v",
           f"-I{csrc()}", "-cubin", src, "-o", cubin]
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


def sass_groups(sass: str, marks, paths, function_filter=None, kernel: str | None = None):
    """Per function of nvdisasm's output: a list of (region, paths, opcode, operands,
    source) for the step loop's instructions (region None: outside the loop; paths: the
    path names of the instruction's inline chain; source: (file, line) of its innermost
    frame, None without line information). `kernel`: the file of the marked kernel body
    (default: the forward kernel's)."""
    kpath = os.path.realpath(kernel or kernel_path())
    funcs: dict[str, list] = {}
    cur = None
    outer_line, on_paths, frames, inner = None, frozenset(), [], None
    for line in sass.splitlines():
        m = _FUNC.match(line)
        if m:
            cur = funcs.setdefault(m.group(1), []) if (
                function_filter is None or function_filter(m.group(1))) else None
            outer_line, on_paths, frames, inner = None, frozenset(), [], None
            continue
        if _FILE.match(line):
            # an instruction's frames: one `//## File` line per frame, innermost first,
            # each "inlined at" its caller; the last line's last frame is the outermost
            frames.append([(os.path.realpath(p), int(n))
                           for p, n in re.findall(r'"([^"]+)", line (\d+)', line)])
            continue
        m = _INSN.match(line)
        if not m:
            continue
        if frames:  # (an instruction without lines of its own keeps the previous ones)
            path, no = frames[-1][-1]
            outer_line = no if path == kpath else None
            inner = frames[0][0]
            on_paths = frozenset(name for fr in frames for p, n in fr
                                 for f, a, b, name in paths if p == f and a <= n <= b)
            frames = []
        if cur is None or (m.group(1) or "").strip() == "@!PT":
            continue
        region = region_of(outer_line, marks) if outer_line is not None else None
        cur.append((region, on_paths, m.group(2), m.group(3), inner))
    return funcs


def tally(insns, keep, counters=None) -> dict[str, int]:
    """Counter totals (`counters`, default COUNTERS) over the instructions `keep` accepts."""
    counters = COUNTERS if counters is None else counters
    out = {k: 0 for k in counters}
    for insn in insns:
        if keep(insn):
            for k, pred in counters.items():
                if pred(insn[2], insn[3]):
                    out[k] += 1
    return out


_LEAN_PROGRAM = r"""
#include "kernels/forward_kernel.cuh"
using namespace fused_rnn;
using namespace fused_rnn::fwd;
// One call of the lean GEMM's instantiation, for its instruction count.
__global__ void __launch_bounds__(256, 1) lean_body(const uint32_t* w, const void* sx, float* part,
                                                   int ld, int m_pad) {
  extern __shared__ __align__(128) unsigned char smem[];
  uint32_t wreg[%(nreg)d * kRegsPerTile<%(tf32)s> + 1];
#pragma unroll
  for (int i = 0; i < %(nreg)d * kRegsPerTile<%(tf32)s>; ++i) wreg[i] = w[i * 32 + threadIdx.x];
  gemm_lean_columns<%(ctype)s, %(tf32)s, %(nreg)d, %(nt)d, %(mg)d, %(two)s>(
      wreg, smem + threadIdx.x %% 32 * 16, reinterpret_cast<const %(ctype)s*>(smem) + ld * (threadIdx.x %% 8),
      ld, reinterpret_cast<float*>(smem + 65536) + threadIdx.x / 32 * 64, m_pad, threadIdx.x %% 32);
  if (threadIdx.x == 0) part[0] = 0.0f;  // (part: unused; the partial sums go to shared memory)
}
"""


def lean_count(ctype, tf32, nt, mg, two, arch, work, nvdisasm, marks, paths) -> dict[str, int]:
    """Counters of one gemm_lean_columns instantiation (its lean-gemm lines only)."""
    nreg = min(26 if ctype != "float" else 14, nt)
    tag = f"lean_{ctype.strip('_')}_{tf32}_{nt}_{mg}_{two}"
    cubin = compile_source(_LEAN_PROGRAM % dict(ctype=ctype, tf32=tf32, nreg=nreg, nt=nt, mg=mg,
                                                two=two), tag, arch, work)
    sass = subprocess.run([nvdisasm, "-c", "-gi", cubin], capture_output=True, text=True,
                          check=True).stdout
    # the instructions with a lean-gemm frame (the region is none: not the kernel's body)
    funcs = sass_groups(sass, marks, paths, lambda fn: "lean_body" in fn)
    return tally(next(iter(funcs.values())), lambda i: "lean-gemm" in i[1])


_PLAN_PROGRAM = r"""
#include "kernels/forward_plan.h"
#include <cstdio>
using namespace fused_rnn;
static DeviceLimits dev;
static int occ(const void*, int64_t smem) { return estimate_occupancy(dev, smem); }
int main(int argc, char** argv) {
%(device_setup)s
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


# The start of a plan program's main(): `dev` holds the H200's limits, `batches` the
# report's batch sizes.
_DEVICE_SETUP = """\
  dev.sm_count = %(sm_count)d; dev.smem_optin_per_block = %(smem_optin)d;
  dev.smem_per_sm = %(smem_per_sm)d; dev.cc_major = %(cc_major)d; dev.cc_minor = %(cc_minor)d;
  const int batches[] = {%(batches)s};""" % dict(H200, batches=", ".join(map(str, PLAN_BATCHES)))


def run_plan_program(program: str, work: str, name: str, **fields) -> list[dict]:
    """Build and run a host plan program (`program` % device_setup and `fields`) in
    `work`; its stdout, a JSON list, parsed."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise RuntimeError("a host C++ compiler is needed for the plans")
    src, exe = os.path.join(work, name + ".cpp"), os.path.join(work, name)
    with open(src, "w") as f:
        f.write(program % dict(fields, device_setup=_DEVICE_SETUP))
    subprocess.run([cxx, "-std=c++17", "-O1", f"-I{csrc()}", src, "-o", exe], check=True)
    return json.loads(subprocess.run([exe], capture_output=True, text=True, check=True).stdout)


def plans(work: str) -> list[dict]:
    """The planner's choices for the report's shapes (host build of forward_plan.h)."""
    return run_plan_program(_PLAN_PROGRAM, work, "plans")


PHASES = ("setup", "sync", "gather", "gemm", "epilogue")
# The H200 measurement the prediction is calibrated on (bf16 LSTM L=4 H=512 T=512, the
# flags protocol; floors.py --phases) and the flag hop's floor (floors.json).
PHASES_JSON = os.path.join(ROOT, "benchmarks", "results", "NVIDIA-H200", "phases.json")
FLAG_HOP_US = 0.61
# The gather waits for its copies from L2 (data another SM wrote): at least one L2 round
# trip, however few its instructions. An assumption (below the flag hop's 0.61 us, which
# is a store, a poll and a round trip).
GATHER_FLOOR_US = 0.5


def epilogue_lanes(plan: dict, gates: int) -> int:
    """The kernel's eg_lanes for a layer >= 1 of the plan (forward_kernel.cuh prologue)."""
    reads = plan["x_splits"] + plan["h_splits"]
    pairs = plan["units"] * min(plan["batch"], plan["batch_tile"])
    full = 1
    while full < reads and full < 8:
        full *= 2
    spl = full
    while True:
        lanes = 1
        while lanes < gates * spl:
            lanes *= 2
        if lanes * pairs <= 256 or spl == 1:
            break
        spl //= 2
    return 1 if lanes * pairs > 256 else lanes


def plan_path(plan: dict, paths: set[str], sync: str = "flags", fast: bool = False) -> dict:
    """What one wave step of a layer >= 1 runs under `plan` (`fast`: FUSED_RNN_FAST_TANH=1):
    the paths left out, the lean GEMM's calls per instantiation, the loop trip counts."""
    B, nb = plan["batch"], plan["batch_tile"]
    tiles = -(-B // nb)
    rows = min(B, nb)
    n8 = -(-rows // 8)
    # (inference, as floors.py --phases measured it: no reserve, no dropout, no lengths)
    # (the recurrence in clusters, FUSED_RNN_SYNC=cluster, is opt-in: never in these plans)
    out = {"exclude": {"unaligned", "step0", "layer0", "lengths", "reserve", "dropout",
                       "sync-lean" if sync == "flags" else "sync-flags", "sync-cluster",
                       "accurate-act" if fast else "fast-act"},
           "batch_tiles": tiles, "lean_calls": {}, "epilogue_lanes": None,
           "epilogue_rounds": -(-plan["units"] * rows // 256)}
    lean = (plan["items"] <= 8 and plan["m_group"] in (1, 2) and
            plan["item_tiles"] in (16, 32) and "lean-gemm" in paths)
    if lean:
        out["exclude"] |= {"generic-gemm", "lean-gemm"}
        for two, calls in ((True, n8 // 2), (False, n8 % 2)):
            if calls:
                out["lean_calls"][(plan["item_tiles"], plan["m_group"], two)] = calls * tiles
    if "epilogue-groups" in paths:
        lanes = epilogue_lanes(plan, 4)
        out["epilogue_lanes"] = lanes
        out["exclude"].add("epilogue-groups" if lanes == 1 else "epilogue-pairs")
        out["epilogue_rounds"] = -(-plan["units"] * rows // (256 // lanes))
    return out


def step_counts(insns, path: dict, lean_counts) -> dict[str, dict[str, int]]:
    """{phase: counters} of one wave step on the path (gather, GEMM and epilogue times
    the batch tiles; the epilogue's loop body once per round; the lean GEMM's
    instantiations times their calls)."""
    ex = path["exclude"]
    out = {}
    for phase in PHASES:
        c = tally(insns, lambda i: i[0] == phase and not (i[1] & ex))
        mult = 1
        if phase in ("gather", "gemm"):
            mult = path["batch_tiles"]
        if phase == "epilogue":
            mult = path["epilogue_rounds"] * path["batch_tiles"]
        c = {k: v * mult for k, v in c.items()}
        if phase == "gemm":
            for key, calls in path["lean_calls"].items():
                for k, v in lean_counts[key].items():
                    c[k] += v * calls
        out[phase] = c
    out["step"] = {k: sum(out[p][k] for p in PHASES) for k in COUNTERS}
    return out


def report(arch: str, label: str) -> dict:
    marks, paths = regions(), path_ranges()
    names = {n for _, _, _, n in paths}
    nvdisasm = find_nvdisasm()
    if nvdisasm is None or shutil.which("nvcc") is None:
        raise RuntimeError("needs nvcc and nvdisasm (pip install nvidia-cuda-nvdisasm)")
    with tempfile.TemporaryDirectory() as work:
        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            cubins = list(pool.map(lambda v: compile_variant(v[1], v[2], v[3], arch, work),
                                   VARIANTS))
        planned = plans(work)
        out = {"meta": meta(arch, label), "paths": sorted(names), "variants": []}
        for (name, ctype, cell, tf32), cubin in zip(VARIANTS, cubins):
            sass = subprocess.run([nvdisasm, "-c", "-gi", cubin], capture_output=True,
                                  text=True, check=True).stdout
            regs = ptxas_registers(cubin)
            funcs = sass_groups(sass, marks, paths,
                                lambda fn: "rnn_forward_kernel" in fn and "SyncPolicyE2E" in fn)
            (fn, insns), = funcs.items()  # the flags variant: the planner's default
            rows = []
            for plan in (p for p in planned if p["variant"] == name):
                protocols = [("flags", False)]
                if "sync-lean" in names:
                    protocols.append(("lean", False))
                if "fast-act" in names and ctype == "__nv_bfloat16":
                    protocols.append(("flags", True))
                for sync, fast in protocols:
                    path = plan_path(plan, names, sync, fast)
                    lean_counts = {key: lean_count(ctype, tf32, key[0], key[1],
                                                   "true" if key[2] else "false", arch, work,
                                                   nvdisasm, marks, paths)
                                   for key in path["lean_calls"]}
                    rows.append(dict(
                        batch=plan["batch"], batch_tile=plan["batch_tile"], sync=sync,
                        fast_tanh=fast, summary=plan["summary"],
                        batch_tiles=path["batch_tiles"], epilogue_lanes=path["epilogue_lanes"],
                        epilogue_rounds=path["epilogue_rounds"],
                        lean_calls={f"NT={k[0]} MG={k[1]} {'pair' if k[2] else 'single'}": v
                                    for k, v in path["lean_calls"].items()},
                        counts=step_counts(insns, path, lean_counts)))
            out["variants"].append(dict(
                variant=name, kernel=fn, registers=regs.get(fn),
                all_paths={ph: tally(insns, lambda i, ph=ph: i[0] == ph)["instructions"]
                           for ph in PHASES},
                plans=rows))
    return out


def predict(rep: dict, base: dict | None) -> None:
    """Adds each flags-protocol row's predicted µs per phase (see the module's doc) when a
    baseline report and the H200's phases are at hand."""
    if base is None or not os.path.exists(PHASES_JSON):
        return
    with open(PHASES_JSON) as f:
        measured = {(r["kernel"], r["batch"]): r["phases_us"] for r in json.load(f)["phases"]
                    if r["kernel"] == "forward"}
    def rows(report, variant):
        v = next((v for v in report["variants"] if v["variant"] == variant), None)
        return {(r["batch"], r["sync"], r.get("fast_tanh", False)): r["counts"]
                for r in v["plans"]} if v else {}
    bf16_base = rows(base, "bf16 LSTM")
    for v in rep["variants"]:
        for r in v["plans"]:
            m = measured.get(("forward", r["batch"]))
            b = bf16_base.get((r["batch"], "flags", False))
            if m is None or b is None:
                continue
            c = r["counts"]
            def n(counts, *phases):
                return sum(counts[p]["instructions"] for p in phases)
            pred = {}
            for phase, mine in (("gather", ("setup", "gather")), ("gemm", ("gemm",)),
                                ("epilogue", ("epilogue",))):
                pred[phase] = m[phase] * n(c, *mine) / n(b, *mine)
            pred["gather"] = max(pred["gather"], GATHER_FLOOR_US)
            ratio = n(c, *PHASES) / n(b, *PHASES)
            pred["barrier"] = FLAG_HOP_US + max(0.0, m["barrier"] - FLAG_HOP_US) * ratio
            pred["total"] = sum(pred.values())
            r["predicted_us"] = pred
            r["calibration"] = ("bf16 measured phases (H200) x instruction ratio vs the baseline "
                                "bf16 flags row" + ("" if v["variant"] == "bf16 LSTM" else
                                                    "; TF32 priced at bf16's rate per instruction"))


def meta(arch: str, label: str, script: str = "sass_report.py") -> dict:
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
            "git_commit": git("-C", TREE, "rev-parse", "--short", "HEAD"),
            "tree_dirty": bool(git("-C", TREE, "status", "--porcelain", "--", "csrc")),
            "nvcc": release.group(1) if release else None,
            "command": f"python benchmarks/{script} " + " ".join(sys.argv[1:])}


SHOWN = ["instructions", "int div", "const reads", "LDSM", "HMMA", "LDS", "STS", "BAR",
         "MEMBAR", "strong loads", "L1 invalidate", "LDG", "STG", "cp.async", "atomics", "SHFL",
         "MUFU", "branches"]


def protocol(row: dict) -> str:
    """'flags protocol', 'lean protocol', '... + hardware tanh'."""
    return f"{row['sync']} protocol" + (" + hardware tanh" if row.get("fast_tanh") else "")


def markdown(rep: dict, base: dict | None = None) -> str:
    m = rep["meta"]
    lines = [f"# Forward step loop, static SASS ({m['label']})", "",
             f"{m['arch']}, nvcc {m['nvcc']}, commit {m['git_commit']}"
             f"{' (csrc/ modified: ' + m['tree_note'] + ')' if m.get('tree_note') else ''}"
             f"{' (csrc/ modified)' if m['tree_dirty'] and not m.get('tree_note') else ''}, "
             f"{m['date']}; `{m['command']}`.", "",
             "Instructions of one wave step of a layer >= 1 on the plan's path (see "
             "benchmarks/sass_report.py: phases by the kernel body's `// [sass:...]` markers, "
             "paths by `// [sass-path:...]`), per phase; gather, GEMM and epilogue times the "
             "batch tiles, the epilogue's loop once per round, the unrolled GEMM counted per "
             "instantiation and call. Static code: a loop inside a phase (the gather's copies, "
             "the generic GEMM's shared-memory tiles) counts once.", ""]
    if base:
        lines += [f"Baseline: {base['meta']['label']} (commit {base['meta']['git_commit']}).", ""]
    shown = SHOWN
    for v in rep["variants"]:
        allp = v["all_paths"]
        lines += [f"## {v['variant']} ({v['registers']} registers; all paths of the step loop: "
                  f"{sum(allp.values())} instructions)", ""]
        for r in v["plans"]:
            lean = ", ".join(f"{k} x{n}" for k, n in r["lean_calls"].items()) or "generic loop"
            epi = (f"{r['epilogue_lanes']} lane(s) per pair" if r["epilogue_lanes"] else
                   "one thread per pair")
            lines += [f"### B={r['batch']}, {protocol(r)}", "",
                      f"{r['summary']}", "",
                      f"Per step: {r['batch_tiles']} batch tile(s); GEMM: {lean}; epilogue: "
                      f"{epi}, {r['epilogue_rounds']} round(s).", "",
                      "| phase | " + " | ".join(shown) + " |",
                      "| --- |" + " ---: |" * len(shown)]
            for ph in PHASES + ("step",):
                c = r["counts"][ph]
                name = "**step**" if ph == "step" else ph
                lines.append(f"| {name} | " + " | ".join(str(c[k]) for k in shown) + " |")
            lines.append("")
            pred = r.get("predicted_us")
            if pred:
                lines += [f"Predicted on an H200 ({r['calibration']}): " +
                          ", ".join(f"{k} {pred[k]:.2f}" for k in ("gather", "gemm", "epilogue",
                                                                    "barrier")) +
                          f"; **{pred['total']:.2f} us per wave step**.", ""]
    if base:
        lines += ["## Against the baseline", "", "| variant | B | protocol | step instructions "
                  "(baseline -> this) | ratio | int div | const reads | barriers (BAR) |",
                  "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
        for v in rep["variants"]:
            bv = next((x for x in base["variants"] if x["variant"] == v["variant"]), None)
            if bv is None:
                continue
            for r in v["plans"]:
                br = next((x for x in bv["plans"] if x["batch"] == r["batch"] and
                           x["sync"] == "flags" and not x.get("fast_tanh")), None)
                if br is None:
                    continue
                a, b_ = br["counts"]["step"], r["counts"]["step"]
                lines.append(
                    f"| {v['variant']} | {r['batch']} | {protocol(r)} | {a['instructions']} -> "
                    f"{b_['instructions']} | {a['instructions'] / b_['instructions']:.2f}x | "
                    f"{a['int div']} -> {b_['int div']} | {a['const reads']} -> "
                    f"{b_['const reads']} | {a['BAR']} -> {b_['BAR']} |")
        lines.append("")
    return "\n".join(lines)


def cli(argv, description: str, name: str, report_fn, predict_fn, markdown_fn) -> int:
    """The command line of a SASS report (this one and sass_report_backward.py): report
    --root's kernel, predict from --baseline (or itself), write DIR/<name>_<label>.{json,md}."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--arch", default="9.0a")
    ap.add_argument("--label", default="current")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "sass"))
    ap.add_argument("--root", default=ROOT,
                    help="the tree whose csrc/ is reported (default: this checkout)")
    ap.add_argument("--tree-note", default="",
                    help="what was changed in --root's csrc/ (said in the report)")
    ap.add_argument("--baseline", default=None,
                    help="an earlier report's JSON: the comparison and the prediction's basis")
    a = ap.parse_args(argv)
    global TREE
    TREE = os.path.abspath(a.root)
    rep = report_fn(a.arch, a.label)
    if a.tree_note:
        rep["meta"]["tree_note"] = a.tree_note
    base = None
    if a.baseline:
        with open(a.baseline) as f:
            base = json.load(f)
    predict_fn(rep, base if base is not None else rep)
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, f"{name}_{a.label}")
    with open(path + ".json", "w") as f:
        json.dump(rep, f, indent=1)
        f.write("\n")
    md = markdown_fn(rep, base)
    with open(path + ".md", "w") as f:
        f.write(md + "\n")
    print(md)
    return 0


def main(argv=None) -> int:
    return cli(argv, __doc__.split("\n\n")[0], "forward_sass", report, predict, markdown)


if __name__ == "__main__":
    sys.exit(main())
