"""Shared by the two CPU-CI tests of the CUDA sources (test_compile_kernels.py for the
forward kernel, test_compile_backward.py for the backward): tool paths, the extension's
build flags, nvcc runs, and the host emulation's build and file protocol (random
problems in, raw tensors out).

Imports torch only inside the functions that need it (test_compile_kernels.py runs its
nvcc and planner tests without torch).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import zlib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
NVCC = shutil.which("nvcc")
CXX = shutil.which("g++") or shutil.which("c++")
ARCHS = ["8.0", "9.0a"]


def build_config():
    """fused_rnn/_build.py by path (as setup.py does): the exact flags of the real build."""
    spec = importlib.util.spec_from_file_location(
        "_fused_rnn_build_cfg", os.path.join(ROOT, "fused_rnn", "_build.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def nvcc_compile(source, archs, obj):
    """nvcc -c with the extension's flags for `archs` and the ptxas report: (returncode, log)."""
    flags = build_config().nvcc_flags(archs)
    cmd = [NVCC, *flags, "-Xptxas", "-v", f"-I{CSRC}", "-c", source, "-o", str(obj)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def spill_bytes(log):
    """Every 'N bytes spill stores/loads' figure of a ptxas report."""
    return [int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", log)]


def run_host_program(tmp_path_factory, name, program):
    """Builds the C++ `program` (kernel headers on the include path) with g++ -Werror,
    runs it, and returns its stdout parsed as JSON. Skips without a host compiler."""
    if CXX is None:
        pytest.skip("no host C++ compiler")
    d = tmp_path_factory.mktemp(name)
    src, exe = d / f"{name}.cpp", d / name
    src.write_text(program)
    subprocess.run([CXX, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", f"-I{CSRC}",
                    str(src), "-o", str(exe)], check=True)
    proc = subprocess.run([str(exe)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


# --------------------------------------------------------------- the host emulation


def build_emulator(tmp_path_factory, main, name, sanitize, defines=()):
    """Builds csrc/emu/<main> with -fsanitize=<sanitize> (and -D<d> for each of `defines`,
    e.g. FRNN_PHASE_TIMING=1): (executable, compiler stderr). Skips where the host compiler
    lacks _Float16 or the sanitizer."""
    if CXX is None:
        pytest.skip("no host C++ compiler")
    exe = tmp_path_factory.mktemp(name) / name
    cmd = [CXX, "-std=c++17", "-O1", "-g", "-pthread", "-Wall", "-Wno-unknown-pragmas",
           *[f"-D{d}" for d in defines],
           f"-fsanitize={sanitize}", "-fno-sanitize-recover=all",
           f"-I{os.path.join(CSRC, 'emu', 'include')}", f"-I{CSRC}",
           os.path.join(CSRC, "emu", main), "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 and "_Float16" in proc.stderr:
        pytest.skip("host compiler lacks _Float16 (needed by the fp16 emulation)")
    if proc.returncode != 0 and "sanitize" in proc.stderr:
        pytest.skip(f"host compiler lacks -fsanitize={sanitize}")
    assert proc.returncode == 0, proc.stderr[-6000:]
    return exe, proc.stderr


def case_seed(case) -> int:
    """The random seed of an emulation case: from its id."""
    return zlib.crc32(case.id.encode()) % 100000


def random_stack(case, grads=False):
    """Random weights (torch's init range), input, states, lengths and dropout seed of a
    case (mode, L, bidir, bias, I, H, B, T, dtype, lengths, dropout), in the case's dtype;
    with `grads`, output gradients too (drawn after the rest)."""
    import torch
    from fused_rnn import reference

    g = torch.Generator().manual_seed(case_seed(case))
    dt = getattr(torch, case.dtype)
    D = 2 if case.bidir else 1
    G = reference.GATES[case.mode]
    k = 1.0 / math.sqrt(case.H)
    f64 = dict(generator=g, dtype=torch.float64)
    weights = []
    for layer in range(case.L):
        for _ in range(D):
            in_l = case.I if layer == 0 else D * case.H
            shapes = [(G * case.H, in_l), (G * case.H, case.H)]
            shapes += [(G * case.H,), (G * case.H,)] if case.bias else []
            weights += [((torch.rand(s, **f64) * 2 - 1) * k).to(dt) for s in shapes]
    x = torch.randn(case.T, case.B, case.I, **f64).to(dt)
    hx = (0.5 * torch.randn(case.L * D, case.B, case.H, **f64)).to(dt)
    cx = (0.5 * torch.randn(case.L * D, case.B, case.H, **f64)).to(dt) \
        if case.mode == "LSTM" else None
    lengths = None
    if case.lengths:
        lengths = torch.randint(1, case.T + 1, (case.B,), generator=g)
        lengths[0] = case.T
    seed = torch.tensor(987654321 + case.B, dtype=torch.int64) \
        if case.dropout > 0 and case.L > 1 else None
    out = dict(x=x, w=weights, hx=hx, cx=cx, lengths=lengths, seed=seed)
    if grads:
        out["gout"] = torch.randn(case.T, case.B, D * case.H, **f64).to(dt)
        out["ghy"] = torch.randn(case.L * D, case.B, case.H, **f64).to(dt)
        out["gcy"] = torch.randn(case.L * D, case.B, case.H, **f64).to(dt) \
            if case.mode == "LSTM" else None
    return out


def write_tensors(path, tensors):
    """The emulator's input file: the tensors' raw bytes, concatenated."""
    import torch

    def raw(t):
        # clone(): a storage of exactly the tensor's bytes (a view's may be larger); the
        # bytes are read from the storage itself, so numpy is not needed
        return bytes(t.detach().contiguous().clone().view(torch.uint8).untyped_storage())

    path.write_bytes(b"".join(raw(t) for t in tensors))


class TensorReader:
    """The emulator's output file, read front to back as tensors of one dtype."""

    def __init__(self, path, dtype):
        import torch

        self.raw = bytearray(path.read_bytes())
        self.flat = torch.frombuffer(self.raw, dtype=torch.uint8) if self.raw \
            else torch.empty(0, dtype=torch.uint8)
        self.dtype = dtype
        self.pos = 0

    def take(self, *shape):
        n = math.prod(shape) * self.dtype.itemsize
        t = self.flat[self.pos:self.pos + n].view(self.dtype).reshape(shape)
        self.pos += n
        return t


def rel_err(a, b):
    """max |a - b| / max(1, max |b|), in float64."""
    b = b.double()
    return ((a.double() - b).abs().max() / max(1.0, b.abs().max().item())).item()
