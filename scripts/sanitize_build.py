"""Builds scripts/sanitize_target.cu, the torch-free compute-sanitizer target: one program
per dtype, and the bisection variants of the backward kernel (FRNN_BISECT, described in
csrc/kernels/common.h), in parallel.

    python scripts/sanitize_build.py --out DIR                       # nvcc, this GPU's arch
    python scripts/sanitize_build.py --out DIR --bisect 1,2,4,8,16   # + bf16 bisection builds
    python scripts/sanitize_build.py --out DIR --emulate thread      # g++, the host emulation

Programs: DIR/target_<dtype> (dtype: bf16, fp16, tf32, fp32) and DIR/target_<dtype>_b<N>
for each bisection value N (of --bisect-dtypes, default bf16). With nvcc: the extension's
own nvcc flags (fused_rnn/_build.py; no phase timing: the kernels as shipped) for
TORCH_CUDA_ARCH_LIST (or --arch). With --emulate SANITIZER: g++ -fsanitize=SANITIZER over
csrc/emu (no GPU needed), as the tests run it. Each build's command and compiler output go to
DIR/build_<name>.log; the exit status is 0 only when every program was built.

No torch import: the GPU check runs it beside the extension's build.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "scripts", "sanitize_target.cu")
CSRC = os.path.join(ROOT, "csrc")
DTYPES = ("bf16", "fp16", "tf32", "fp32")
MACRO = {"bf16": "SAN_BF16", "fp16": "SAN_F16", "tf32": "SAN_TF32", "fp32": "SAN_FP32"}
BISECT_VALUES = (1, 2, 4, 8, 16)  # csrc/kernels/common.h: the switches one at a time


def _build_config():
    """fused_rnn/_build.py by path (no torch import): the extension's flags."""
    spec = importlib.util.spec_from_file_location(
        "_fused_rnn_build_cfg", os.path.join(ROOT, "fused_rnn", "_build.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def name_of(dtype: str, bisect: int = 0) -> str:
    return f"target_{dtype}" + (f"_b{bisect}" if bisect else "")


def programs(dtypes, bisect, bisect_dtypes) -> list[tuple[str, int]]:
    """(dtype, FRNN_BISECT) of every program: each dtype plain, each bisection value of
    each bisection dtype."""
    return [(d, 0) for d in dtypes] + [(d, b) for d in bisect_dtypes for b in bisect if b]


def nvcc_flags(archs: list[str]) -> list[str]:
    """The extension's nvcc flags for `archs`, without the phase-timing definition."""
    cfg = _build_config()
    return [f for f in cfg.nvcc_flags(archs) if f != "-DFRNN_PHASE_TIMING=1"]


def defines(dtype: str, bisect: int) -> list[str]:
    return [f"-DSAN_DTYPE={MACRO[dtype]}", f"-DFRNN_BISECT={bisect}"]


def nvcc_command(dtype: str, bisect: int, archs: list[str], exe: str, nvcc: str = "nvcc",
                 extra: tuple[str, ...] = ()) -> list[str]:
    return [nvcc, *nvcc_flags(archs), "-std=c++17", f"-I{CSRC}", *defines(dtype, bisect),
            *extra, SOURCE, "-o", exe]


def emu_command(dtype: str, bisect: int, sanitize: str, exe: str, cxx: str = "g++") -> list[str]:
    """The host-emulation build (tests/compile_helpers.py's flags for csrc/emu)."""
    return [cxx, "-std=c++17", "-O1", "-g", "-pthread", "-Wall", "-Wno-unknown-pragmas",
            f"-fsanitize={sanitize}", "-fno-sanitize-recover=all",
            f"-I{os.path.join(CSRC, 'emu', 'include')}", f"-I{CSRC}", *defines(dtype, bisect),
            "-x", "c++", SOURCE, "-o", exe]


# ---------------------------------------------------------------- SASS (no GPU needed)

# The instructions a bisection switch targets: shared-memory loads / stores (LDS, STS, LDSM
# with any size) and the 16-bit shared stores among them, generic loads / stores (LD, ST),
# cp.async (LDGSTS), tensor-core MMAs (HMMA). An entry with a dot names one opcode with
# its size (STS.U16); one without matches every size of that opcode.
SASS_CLASSES = {
    "shared load": ("LDS", "LDSM"), "shared store": ("STS",), "16-bit shared store": ("STS.U16",),
    "generic load": ("LD",), "generic store": ("ST",), "cp.async": ("LDGSTS",), "mma": ("HMMA",),
}


def find_nvdisasm() -> str | None:
    """nvdisasm: on PATH, in $CUDA_HOME/bin, or from the nvidia-cuda-nvdisasm wheel."""
    found = shutil.which("nvdisasm")
    if found:
        return found
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    cands = [os.path.join(home, "bin", "nvdisasm")]
    spec = importlib.util.find_spec("nvidia")
    for base in (spec.submodule_search_locations or []) if spec else []:
        cands += sorted(os.path.join(base, d, "bin", "nvdisasm") for d in os.listdir(base)
                        if d.startswith("cu"))
    return next((c for c in cands if os.access(c, os.X_OK)), None)


def cubin_command(dtype: str, bisect: int, arch: str, cubin: str, nvcc: str = "nvcc") -> list[str]:
    """nvcc -cubin of the target's device code for one arch (e.g. 9.0a)."""
    return nvcc_command(dtype, bisect, [arch], cubin, nvcc, extra=("-cubin",))


def sass_opcodes(sass: str) -> dict[str, dict[str, int]]:
    """Per function of nvdisasm's output (mangled name): how often each opcode occurs.
    Instructions predicated on !PT (never executed: the compiler's placeholders) are left
    out."""
    import re

    funcs: dict[str, dict[str, int]] = {}
    cur = None
    for line in sass.splitlines():
        head = re.match(r"\s*//-+ \.text\.(\S+) -+", line)
        if head:
            cur = funcs.setdefault(head.group(1), {})
            continue
        m = re.match(r"\s+/\*[0-9a-f]{4,}\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if m and cur is not None and (m.group(1) or "").strip() != "@!PT":
            op = m.group(2)
            cur[op] = cur.get(op, 0) + 1
    return funcs


def sass_classes(ops: dict[str, int]) -> dict[str, int]:
    """Opcode counts of one function summed per SASS_CLASSES entry."""
    out = {k: 0 for k in SASS_CLASSES}
    for op, n in ops.items():
        for k, names in SASS_CLASSES.items():
            if any(op == e or op.startswith(e + ".") if "." in e else op.split(".")[0] == e
                   for e in names):
                out[k] += n
    return out


def kernel_of(mangled: str) -> str:
    """'backward (flags)' etc. for a kernel's mangled name (SyncPolicy 1 grid, 2 flags, 4 the
    forward's recurrence in a cluster)."""
    kind = "backward" if "rnn_backward_kernel" in mangled else \
        "forward" if "rnn_forward_kernel" in mangled else mangled
    sync = "grid" if "SyncPolicyE1E" in mangled else "flags" if "SyncPolicyE2E" in mangled \
        else "cluster" if "SyncPolicyE4E" in mangled else "?"
    return f"{kind} ({sync})"


def kernel_sass(dtype: str, bisect: int, arch: str, out: str, nvdisasm: str) -> dict:
    """{mangled kernel name: opcode counts} of one target build's device code."""
    cubin = os.path.join(out, name_of(dtype, bisect) + f"_sm{arch.replace('.', '')}.cubin")
    cmd = cubin_command(dtype, bisect, arch, cubin)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(" ".join(cmd) + "\n" + proc.stderr[-4000:])
    dis = subprocess.run([nvdisasm, "-c", cubin], capture_output=True, text=True, check=True)
    return sass_opcodes(dis.stdout)


def build(out: str, dtypes=DTYPES, bisect=(), bisect_dtypes=("bf16",), archs=None,
          emulate: str | None = None, jobs: int | None = None) -> dict[str, tuple[bool, str]]:
    """Builds every program into `out`, in parallel: {name: (built, log path)}."""
    os.makedirs(out, exist_ok=True)
    todo = programs(dtypes, bisect, bisect_dtypes)
    if archs is None:
        archs = _build_config().arch_list()

    def one(dtype, value):
        name = name_of(dtype, value)
        exe, log = os.path.join(out, name), os.path.join(out, f"build_{name}.log")
        cmd = emu_command(dtype, value, emulate, exe) if emulate else \
            nvcc_command(dtype, value, archs, exe)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        with open(log, "w") as f:
            f.write(" ".join(cmd) + "\n" + proc.stdout + proc.stderr)
        return name, (proc.returncode == 0 and os.path.exists(exe), log)

    workers = jobs or min(len(todo), os.cpu_count() or 1) or 1
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(pool.map(lambda dv: one(*dv), todo))


def print_sass(out, dtypes, values, bdtypes, arch) -> int:
    nvdisasm = find_nvdisasm()
    if nvdisasm is None or shutil.which("nvcc") is None:
        print("sanitize_build: --sass needs nvcc and nvdisasm (pip install nvidia-cuda-nvdisasm)",
              file=sys.stderr)
        return 1
    os.makedirs(out, exist_ok=True)
    todo = programs(dtypes, values, bdtypes)
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = list(pool.map(lambda dv: kernel_sass(*dv, arch, out, nvdisasm), todo))
    print("program kernel: " + ", ".join(SASS_CLASSES))
    for (dtype, value), funcs in zip(todo, results):
        for fn, ops in sorted(funcs.items(), key=lambda kv: kernel_of(kv[0])):
            counts = sass_classes(ops)
            print(f"{name_of(dtype, value)} {kernel_of(fn)}: " +
                  ", ".join(str(counts[k]) for k in SASS_CLASSES))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for the programs and build logs")
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    ap.add_argument("--bisect", default="", help="FRNN_BISECT values, e.g. 1,2,4,8,16")
    ap.add_argument("--bisect-dtypes", default="bf16")
    ap.add_argument("--arch", help="e.g. 9.0a (default: TORCH_CUDA_ARCH_LIST or the extension's)")
    ap.add_argument("--emulate", metavar="SANITIZER", help="g++ host emulation, e.g. thread")
    ap.add_argument("--jobs", type=int)
    ap.add_argument("--sass", metavar="ARCH",
                    help="instead of building: per program, the shared-memory / MMA "
                         "instruction counts of each kernel's SASS for ARCH (e.g. 9.0a)")
    a = ap.parse_args(argv)
    dtypes = [d for d in a.dtypes.split(",") if d]
    bdtypes = [d for d in a.bisect_dtypes.split(",") if d]
    if any(d not in DTYPES for d in dtypes + bdtypes):
        ap.error(f"dtypes: {', '.join(DTYPES)}")
    try:
        values = [int(v) for v in a.bisect.split(",") if v]
    except ValueError:
        ap.error("--bisect: integers")
    if any(not 0 <= v <= 31 for v in values):
        ap.error("--bisect: sums of 1, 2, 4, 8, 16")
    if a.sass:
        return print_sass(a.out, dtypes, values, bdtypes, a.sass)
    tool = "g++" if a.emulate else "nvcc"
    if shutil.which(tool) is None:
        print(f"sanitize_build: {tool} not found", file=sys.stderr)
        return 1
    results = build(a.out, dtypes, values, bdtypes, [a.arch] if a.arch else None, a.emulate,
                    a.jobs)
    for name, (ok, log) in sorted(results.items()):
        print(f"{name}: {'built' if ok else 'FAILED (' + log + ')'}")
    return 0 if all(ok for ok, _ in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
