"""The floors of a persistent RNN kernel on the current GPU (DESIGN.md section 4).

    python benchmarks/floors.py [--out DIR]     # or: python benchmarks/bench.py --floors

At small batch a fused stack costs about (T + L - 1) x one inter-CTA
synchronisation; this measures
  - one grid-wide barrier: cooperative_groups grid.sync() in a persistent
    cooperative kernel, one CTA per SM;
  - one cluster barrier (Hopper thread-block clusters, cluster.sync()) for
    cluster sizes 2, 4, 8 and 16 (16 is non-portable);
  both bare and with a few words exchanged per step (global memory /
  distributed shared memory);
  - cuDNN's time per layer-step: nn.LSTM, 1 layer, T steps, small B, / T.
The CUDA kernels (csrc/floors.cu, no torch header) are compiled at run time
for the current arch (sm_90a on Hopper) and called through ctypes. A barrier's
cost is the difference of two launches with N and 2N barriers, divided by N,
so launch overhead cancels; each launch is repeated and the median taken.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "floors.cu")


def arch_flags() -> list[str]:
    major, minor = torch.cuda.get_device_capability()
    arch = f"{major}{minor}" + ("a" if major == 9 else "")  # sm_90a: the Hopper-specific target
    return [f"-gencode=arch=compute_{arch},code=sm_{arch}"]


def build() -> ctypes.CDLL:
    """Compile csrc/floors.cu for this GPU (cached by torch.utils.cpp_extension) and load it."""
    flags = ["-O3", "-std=c++17"] + arch_flags()
    try:
        from torch.utils.cpp_extension import load

        path = load(name="fused_rnn_bench_floors_" + flags[-1].rsplit("_", 1)[-1], sources=[SOURCE],
                    extra_cuda_cflags=flags, is_python_module=False, verbose=False)
    except Exception as e:  # e.g. no ninja: plain nvcc does the same for one file
        print(f"floors: cpp_extension.load failed ({type(e).__name__}); building with nvcc", file=sys.stderr)
        path = os.path.join(tempfile.mkdtemp(prefix="floors_"), "floors.so")
        subprocess.run(["nvcc", "-shared", "-Xcompiler", "-fPIC", *flags, SOURCE, "-o", path], check=True)
    return load_library(path)


def load_library(path: str) -> ctypes.CDLL:
    """The compiled floors.cu with its extern "C" signatures declared."""
    lib = ctypes.CDLL(path)
    i, p_f, p_i = ctypes.c_int, ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_int)
    lib.floors_grid_sync.argtypes = [i, i, i, i, p_f, p_i]
    lib.floors_cluster_sync.argtypes = [i, i, i, i, i, p_f, p_i]
    lib.floors_error_string.restype = ctypes.c_char_p
    return lib


def _per_barrier_us(launch, iters: int, repeats: int) -> tuple[float, int]:
    """(µs per barrier, count of CTAs or clusters) from launches of iters and 2*iters barriers."""
    def median_ms(n):
        times = []
        for _ in range(repeats):
            ms, count = launch(n)
            times.append(ms)
        return common.stats(times)[0], count

    launch(iters)  # warm-up (module load)
    t1, count = median_ms(iters)
    t2, _ = median_ms(2 * iters)
    return 1e3 * (t2 - t1) / iters, count


def grid_sync(lib, threads: int, exchange: bool, iters: int = 10000, repeats: int = 5, device=None) -> dict:
    dev = torch.cuda.current_device() if device is None else device
    row = dict(threads=threads, exchange=exchange, blocks=0, us=None)

    def launch(n):
        ms, blocks = ctypes.c_float(), ctypes.c_int()
        err = lib.floors_grid_sync(dev, threads, n, int(exchange), ctypes.byref(ms), ctypes.byref(blocks))
        if err:
            raise RuntimeError(lib.floors_error_string(err).decode())
        return ms.value, blocks.value

    try:
        row["us"], row["blocks"] = _per_barrier_us(launch, iters, repeats)
    except RuntimeError as e:
        row["reason"] = str(e)
    return row


def cluster_sync(lib, size: int, exchange: bool, threads: int = 128, iters: int = 10000,
                 repeats: int = 5, device=None) -> dict:
    dev = torch.cuda.current_device() if device is None else device
    row = dict(cluster_size=size, threads=threads, exchange=exchange, clusters=0, us=None)

    def launch(n):
        ms, clusters = ctypes.c_float(), ctypes.c_int()
        err = lib.floors_cluster_sync(dev, size, threads, n, int(exchange), ctypes.byref(ms),
                                      ctypes.byref(clusters))
        if err:
            raise RuntimeError(lib.floors_error_string(err).decode())
        return ms.value, clusters.value

    try:
        row["us"], row["clusters"] = _per_barrier_us(launch, iters, repeats)
    except RuntimeError as e:
        row["reason"] = f"not available: {e}"
    return row


def cudnn_layer_step(hiddens=(128, 256, 512, 1024), batches=(1, 16), seq: int = 512,
                     dtypes=("tf32", "bf16"), runs: int = 20) -> list[dict]:
    """cuDNN's time per layer and step: nn.LSTM, one layer, inference, time / T."""
    table = {"tf32": torch.float32, "bf16": torch.bfloat16}
    rows = []
    for dt in dtypes:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        for H in hiddens:
            for B in batches:
                torch.manual_seed(0)
                m = torch.nn.LSTM(H, H, 1, device="cuda", dtype=table[dt]).eval()
                xs = [torch.randn(seq, B, H, device="cuda", dtype=table[dt]) for _ in range(4)]

                def step(x):
                    with torch.no_grad():
                        m(x)

                med = common.stats(common.cuda_time(step, xs, runs=runs, warmup=3))[0]
                rows.append(dict(cell="LSTM", hidden=H, batch=B, seq=seq, dtype=dt, ms=med,
                                 us=1e3 * med / seq))
    return rows


def run_all() -> dict:
    """Every floor on the current GPU, as a JSON-ready dict."""
    out = {"device": torch.cuda.get_device_name(), "grid_sync": [], "cluster_sync": [],
           "cudnn_layer_step": cudnn_layer_step()}
    try:
        lib = build()
    except Exception as e:
        out["build_error"] = f"{type(e).__name__}: {e}"
        print(f"floors: could not build csrc/floors.cu: {e}", file=sys.stderr)
        return out
    for threads in (128, 512):
        for exchange in (False, True):
            out["grid_sync"].append(grid_sync(lib, threads, exchange))
    for size in (2, 4, 8, 16):
        for exchange in (False, True):
            out["cluster_sync"].append(cluster_sync(lib, size, exchange))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="folder for floors.json")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("floors: no CUDA GPU visible; these are GPU measurements (nothing to do here).")
        return 0
    import report

    res = run_all()
    print(f"{res['device']}:\n{report.floors_table(res)}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        meta = common.environment()
        with open(os.path.join(args.out, "floors.json"), "w") as f:
            json.dump({"meta": meta, "floors": res}, f, indent=1)
        print(f"wrote {args.out}/floors.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
