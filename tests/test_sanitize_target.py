"""scripts/sanitize_target.cu, the torch-free compute-sanitizer target, without a GPU:

* built through the host emulation (csrc/emu) for every dtype, it plans with the
  extension's planners, runs the unmodified forward and backward kernels, and its outputs
  match the float64 reference (so a sanitizer run over it checks the real thing);
* the bisection switches of the backward kernel (FRNN_BISECT, csrc/kernels/common.h):
  1 (32-bit weight-tile stores), 2 (generic shared addresses) and 16 (shared memory
  poisoned, the never-written staging rows left poisoned) leave every output
  bit-identical; 4 (no GEMM) and 8 (no read of the partial sums) give the same results
  as each other, those of the reference with the backward's weight products removed;
* under ThreadSanitizer at scripts/gpu_sanitize.py's problem and on the 16-bit
  weights-in-shared-memory paths (two m-tiles; one m-tile with more tiles than registers),
  in clusters and under the grid policy, with results bit-identical to the ASan build's;
* the SASS of each switch (nvcc -cubin + nvdisasm, sm_90a) shows it removes what it
  targets, and only in the backward kernel.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import struct
import subprocess

import pytest

from compile_helpers import CXX, NVCC, ROOT

_spec = importlib.util.spec_from_file_location(
    "sanitize_build", os.path.join(ROOT, "scripts", "sanitize_build.py"))
sb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sb)

DTYPES = ["bf16", "fp16", "tf32", "fp32"]
# max |err| / max(1, max |ref|) against float64 (as tests/test_compile_backward.py)
TOL = {"bf16": 4e-2, "fp16": 6e-3, "tf32": 6e-3, "fp32": 2e-5}
SAME = [1, 2, 16]      # switches that must leave every output bit-identical
NO_PRODUCT = [4, 8]    # switches that remove the backward's weight products
# the 16-bit weights-in-shared-memory paths, small enough for ThreadSanitizer
SMEM_2M = ["--hidden", "40", "--sms", "4"]                      # 20 units: two m-tiles
SMEM_1M = ["--hidden", "64", "--batch", "64", "--sms", "8"]     # 16 tiles per warp > 12


def _need_cxx():
    if CXX is None:
        pytest.skip("no host C++ compiler")


def _build(tmp_path_factory, sanitize, dtypes, bisect=()):
    _need_cxx()
    out = str(tmp_path_factory.mktemp("san_" + sanitize.replace(",", "_")))
    res = sb.build(out, dtypes, bisect, ("bf16",), emulate=sanitize)
    for name, (ok, log) in res.items():
        text = open(log).read()
        if not ok and "_Float16" in text:
            pytest.skip("host compiler lacks _Float16 (needed by the fp16 emulation)")
        assert ok, text[-6000:]
        assert "warning" not in text, text[-6000:]
    return out


@pytest.fixture(scope="module")
def asan(tmp_path_factory):
    return _build(tmp_path_factory, "address,undefined", DTYPES, SAME + NO_PRODUCT)


@pytest.fixture(scope="module")
def tsan(tmp_path_factory):
    return _build(tmp_path_factory, "thread", ["bf16"])


def run_target(folder, name, tmp_path, args=(), env=None, tag="out"):
    """Runs a built target with --out; returns (stdout, its records by name)."""
    dst = tmp_path / f"{name}_{tag}.bin"
    proc = subprocess.run([os.path.join(folder, name), *args, "--out", str(dst)],
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, **(env or {})))
    assert proc.returncode == 0, f"{name} {args} exit {proc.returncode}:\n{proc.stdout}\n" \
        f"{proc.stderr[-8000:]}"
    assert "ThreadSanitizer" not in proc.stderr, proc.stderr[-8000:]
    assert proc.stdout.strip().endswith("all outputs finite"), proc.stdout
    return proc.stdout, read_records(dst)


def read_records(path):
    """--out's records: {name: tensor}."""
    import torch

    kinds = {0: torch.float32, 1: torch.float16, 2: torch.bfloat16, 3: torch.int64}
    raw, pos, out = path.read_bytes(), 0, {}
    while pos < len(raw):
        name = raw[pos:pos + 32].split(b"\0")[0].decode()
        kind, nd = struct.unpack_from("<ii", raw, pos + 32)
        dims = struct.unpack_from("<4q", raw, pos + 40)[:nd]
        pos += 72
        dt = kinds[kind]
        n = 1
        for d in dims:
            n *= d
        nbytes = n * dt.itemsize
        out[name] = torch.frombuffer(bytearray(raw[pos:pos + nbytes]), dtype=dt).reshape(dims)
        pos += nbytes
    assert pos == len(raw)
    return out


def reference_of(r, zero_products=False):
    """The float64 reference of a run's inputs: forward (output, h_n, c_n) and backward
    (grad_hx, grad_cx). zero_products: the backward with W_hh and the upper layers' W_ih
    zeroed (the reserve still the real forward's): what the kernel gives without its GEMM."""
    from fused_rnn import reference

    L = sum(1 for k in r if k.startswith("w_ih_l"))
    w = [r[f"{n}_l{l}"].double() for l in range(L) for n in ("w_ih", "w_hh", "b_ih", "b_hh")]
    x, hx, cx = r["x"].double(), r["hx"].double(), r["cx"].double()
    lengths = r["lengths"] if "lengths" in r else None
    seed, p = r["seed"].reshape(()), 0.25
    out, hy, cy, res = reference.rnn_forward(x, w, hx, cx, lengths, seed, "LSTM", L, False, True,
                                             0, p, True)
    wb = list(w)
    if zero_products:
        for l in range(L):
            wb[4 * l + 1] = wb[4 * l + 1] * 0
            if l > 0:
                wb[4 * l] = wb[4 * l] * 0
    g = reference.rnn_backward(r["grad_output"].double(), r["grad_hy"].double(),
                               r["grad_cy"].double(), x, wb, hx, cx, lengths, seed, res, "LSTM",
                               L, False, True, 0, p)
    return {"output": out, "h_n": hy, "c_n": cy, "grad_hx": g[2], "grad_cx": g[3]}


def errors(r, ref):
    return {k: ((r[k].double() - v).abs().max() / max(1.0, v.abs().max())).item()
            for k, v in ref.items()}


@pytest.mark.parametrize("dtype", DTYPES)
def test_target_matches_the_reference(asan, dtype, tmp_path):
    out, r = run_target(asan, f"target_{dtype}", tmp_path)
    # scripts/gpu_sanitize.py's problem, planned as the extension plans it
    assert f"sanitize_target: {dtype} LSTM L=2 I=10 H=24 B=3 T=3 dropout=0.25, lengths" in out
    assert "forward plan: fused: LSTM" in out and "backward plan: fused backward: LSTM" in out
    if dtype in ("bf16", "fp16"):
        assert "layer-0 input projection before the loop" in out  # computed on the host here
    errs = errors(r, reference_of(r))
    print(dtype, {k: f"{v:.1e}" for k, v in errs.items()})
    assert max(errs.values()) <= TOL[dtype], errs
    assert {"dg_ih", "xdrop", "grad_hx", "grad_cx"} <= set(r)


def test_target_refuses_what_it_can_not_check(asan):
    exe = os.path.join(asan, "target_bf16")
    for args, code in ((["--bogus"], 2), (["--dropout", "1"], 2), (["--hidden", "0"], 2),
                       (["--sms", "1"], 3)):
        proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == code, (args, proc.stdout, proc.stderr)
        assert "all outputs finite" not in proc.stdout
    proc = subprocess.run([exe], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, FUSED_RNN_SYNC="sometimes"))
    assert proc.returncode == 2 and "FUSED_RNN_SYNC" in proc.stderr


@pytest.mark.parametrize("value", SAME + NO_PRODUCT)
def test_bisection_switches(asan, value, tmp_path):
    _, base = run_target(asan, "target_bf16", tmp_path)
    out, r = run_target(asan, f"target_bf16_b{value}", tmp_path)
    assert f"FRNN_BISECT={value}" in out
    import torch

    if value in SAME:
        for k in base:
            assert torch.equal(base[k].view(torch.uint8), r[k].view(torch.uint8)), k
        return
    # the forward is untouched, the backward lost its weight products
    for k in ("output", "h_n", "c_n"):
        assert torch.equal(base[k].view(torch.uint8), r[k].view(torch.uint8)), k
    assert not torch.equal(base["grad_hx"], r["grad_hx"])
    errs = errors(r, {k: v for k, v in reference_of(r, zero_products=True).items()
                      if k.startswith("grad")})
    assert max(errs.values()) <= TOL["bf16"], errs
    _, other = run_target(asan, f"target_bf16_b{12 - value}", tmp_path)
    for k in r:
        assert torch.equal(r[k].view(torch.uint8), other[k].view(torch.uint8)), k


TSAN_RUNS = {
    "gpu_sanitize-problem": ([], {}),
    "gpu_sanitize-problem-grid": ([], {"FUSED_RNN_SYNC": "grid"}),
    "gpu_sanitize-problem-cluster2": ([], {"FUSED_RNN_CLUSTER": "2"}),
    "weights-in-smem-2-mtiles": (SMEM_2M, {}),
    "weights-in-smem-16-tiles": (SMEM_1M, {}),
}


@pytest.mark.parametrize("run", sorted(TSAN_RUNS))
def test_target_has_no_data_races(tsan, asan, run, tmp_path):
    args, env = TSAN_RUNS[run]
    out, r = run_target(tsan, "target_bf16", tmp_path, args, env, tag="tsan")
    if args:
        assert "weights in shared memory" in out, out
    if env.get("FUSED_RNN_CLUSTER"):
        assert "K stream multicast in clusters of 2 CTAs" in out, out
    if env.get("FUSED_RNN_SYNC"):
        assert out.count("grid sync") == 2, out
    _, a = run_target(asan, "target_bf16", tmp_path, args, env, tag="asan")
    import torch

    for k in a:
        assert torch.equal(a[k].view(torch.uint8), r[k].view(torch.uint8)), k


# ------------------------------------------------------------------ SASS

@pytest.fixture(scope="module")
def sass(tmp_path_factory):
    nvdisasm = sb.find_nvdisasm()
    if NVCC is None or nvdisasm is None:
        pytest.skip("needs nvcc and nvdisasm (the test extra installs nvidia-cuda-nvdisasm)")
    import concurrent.futures

    out = str(tmp_path_factory.mktemp("san_sass"))
    values = [0] + SAME + NO_PRODUCT
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        found = list(pool.map(lambda v: sb.kernel_sass("bf16", v, "9.0a", out, nvdisasm), values))
    return {v: {sb.kernel_of(fn): ops for fn, ops in f.items()} for v, f in zip(values, found)}


def test_each_switch_removes_what_it_targets_in_the_sass(sass):
    base = {k: sb.sass_classes(v) for k, v in sass[0].items()}
    assert set(base) == {"backward (flags)", "backward (grid)", "forward (flags)", "forward (grid)",
                         "forward (cluster)"}
    for v in SAME + NO_PRODUCT:
        got = {k: sb.sass_classes(ops) for k, ops in sass[v].items()}
        print(v, got["backward (flags)"])
        for fwd in ("forward (flags)", "forward (grid)", "forward (cluster)"):  # never changes
            assert sass[v][fwd] == sass[0][fwd], (v, fwd)
        for k in ("backward (flags)", "backward (grid)"):
            b, g = base[k], got[k]
            # ldmatrix (the GEMM's fragments from shared memory) takes a shared-space
            # address whatever pointer it was given: no switch makes it generic
            ldsm = sum(n for op, n in sass[0][k].items() if op.startswith("LDSM"))
            assert b["16-bit shared store"] > 0 and b["shared load"] > ldsm > 0 and b["mma"] > 0
            if v == 1:  # 16-bit weight-tile stores -> 32-bit (one per pair); nothing else
                assert g["16-bit shared store"] == 0
                wide = g["shared store"] - (b["shared store"] - b["16-bit shared store"])
                assert 0 < wide <= b["16-bit shared store"]
                assert {c: g[c] for c in g if "store" not in c} == \
                    {c: b[c] for c in b if "store" not in c}
            elif v == 2:  # no shared-space load or store left but ldmatrix; the same number
                assert g["shared load"] == ldsm and g["shared store"] == 0
                assert g["generic store"] == b["generic store"] + b["shared store"]
                assert g["generic load"] == b["generic load"] + b["shared load"] - ldsm
            elif v == 4:  # no MMA, no cp.async, no staging loads
                assert g["mma"] == g["cp.async"] == 0 and g["generic load"] <= 1
            elif v == 8:  # the epilogue's partial-sum loads were the only other shared loads
                assert g["shared load"] == ldsm and g["mma"] == b["mma"]
            elif v == 16:  # the poison stores come on top
                assert g["shared store"] > b["shared store"]
                assert g["16-bit shared store"] == b["16-bit shared store"]


def test_the_target_builds_for_sm90a_with_nvcc(tmp_path):
    if NVCC is None or shutil.which("nvcc") is None:
        pytest.skip("no nvcc")
    res = sb.build(str(tmp_path), ["bf16"], archs=["9.0a"])
    ok, log = res["target_bf16"]
    text = open(log).read()
    assert ok, text[-6000:]
    assert "warning" not in text, text[-6000:]
    assert "-DFRNN_PHASE_TIMING" not in text  # the kernels as shipped
