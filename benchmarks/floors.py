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
  - the exchange of a recurrence inside a cluster, with the kernels' own
    primitives (csrc/kernels/cluster_copy.cuh: st.async of 16 bytes into a
    peer CTA's shared memory with complete_tx on its mbarrier, the receiver's
    arrive.expect_tx and parity wait), each CTA on its own SM (forced with the
    largest dynamic shared memory), the payload checked after every wait:
      DSMEM ping-pong: a cluster of 2 pushes 16 bytes one way and back; µs per
        one-way hand-off (half a round trip);
      DSMEM bandwidth: CTA 0 of a cluster of 2 pushes 1, 8 or 32 KB per step
        into a double buffer of CTA 1, which arrives on CTA 0's barrier once it
        has read them; µs per step and GB/s;
      DSMEM all-to-all: one cluster of 16, every CTA pushes 8 or 32 rows x 32
        units x 2 bytes (512 B / 2 KB) into each of its 15 peers per step and
        waits for what it receives; µs per step;
      co-resident clusters: cudaOccupancyMaxActiveClusters for 256 threads and
        clusters of 16 with 200 and 100 KB of dynamic shared memory per CTA, and
        of 8 with 200 KB (0 with the reason where the query fails);
  - the forward kernel's point-to-point synchronisation (SyncPolicy::kFlags,
    with its own primitives from csrc/kernels/sync_flags.cuh: a release store
    of a step counter, acquire loads polled by one thread per counter, then
    a CTA barrier), 256 threads per CTA, one CTA per SM (forced with the
    largest dynamic shared memory), launched cooperatively so all are
    co-resident:
      flag ping-pong: two CTAs on two SMs hand a step counter back and forth;
        µs per hand-off (half a round trip);
      wait for all C slices: C producer CTAs and 1 consumer CTA; per step each
        producer waits for the consumer's previous step, then publishes; the
        consumer waits for all C counters, then publishes; µs per step for
        C = 32 and 128 (C + 1 SMs needed, else skipped with the reason), and
        the same launch with one grid.sync() per step instead, beside it;
  - cuDNN's time per layer-step: nn.LSTM, 1 layer, T steps, small B, / T.
The CUDA kernels (csrc/floors.cu, no torch header) are compiled at run time
for the current arch (sm_90a on Hopper) and called through ctypes. A barrier's
cost is the difference of two launches with N and 2N barriers, divided by N,
so launch overhead cancels; each launch is repeated and the median taken
(the same for the flag and DSMEM measurements, with fewer iterations: they
are slower).
Every flag spin is bounded (sync_flags.cuh traps after 2^26 polls), so a
broken wait fails the launch with an error instead of hanging the GPU; the
flag measurements run last, as a trap spoils the CUDA context. The mbarrier
waits of the DSMEM measurements are the kernels' own, unbounded ones: a lost
arrival hangs the launch, a wait for the wrong parity returns early and fails
the payload check.

    python benchmarks/floors.py --phases [--out DIR]

measures instead where the fused kernels' wave steps spend their time (gather,
GEMM, epilogue, barrier wait; bf16 LSTM L=4 H=I=512 T=512, B=1 and 32, forward
and backward), next to the performance model's prediction (PHASE_MODEL, the
table "Per-phase model" in csrc/kernels/README.md). It needs the extension
built with FUSED_RNN_PHASE_TIMING=1 (the kernels' clock64() recorders,
csrc/kernels/phase_timing.h); a production build carries none.
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
    lib.floors_sm_count.argtypes = [i, p_i]
    lib.floors_flag_pingpong.argtypes = [i, i, i, p_f, p_i, p_i]
    lib.floors_flag_wait_all.argtypes = [i, i, i, i, i, i, p_f, p_i]
    lib.floors_flag_stores_pingpong.argtypes = [i, i, i, i, p_f, p_i, p_i]
    lib.floors_dsmem_pingpong.argtypes = [i, i, i, p_f, p_i, p_i]
    lib.floors_dsmem_bandwidth.argtypes = [i, i, i, i, p_f, p_i, p_i]
    lib.floors_dsmem_all_to_all.argtypes = [i, i, i, i, i, p_f, p_i]
    lib.floors_max_active_clusters.argtypes = [i, i, i, i, p_i]
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


FLAG_THREADS = 256  # the forward kernel's CTA size (kForwardThreads, csrc/kernels/common.h)
FLAG_PRODUCERS = (32, 128)  # C of the wait-for-all-slices measurement


def flag_pingpong(lib, threads: int = FLAG_THREADS, iters: int = 4000, repeats: int = 5,
                  device=None) -> dict:
    """µs per flag hand-off between two CTAs on two SMs: half of one round trip (CTA 0
    publishes i, CTA 1 waits for it and publishes i, CTA 0 waits for that)."""
    dev = torch.cuda.current_device() if device is None else device
    row = dict(threads=threads, sms=None, us=None, round_trip_us=None)

    round_trip = _handoff(lib, lambda n, ms, sm0, sm1: lib.floors_flag_pingpong(
        dev, threads, n, ms, sm0, sm1), row, iters, repeats)
    if round_trip is None:
        return row
    row["round_trip_us"] = round_trip
    if row["sms"][0] == row["sms"][1]:  # the shared-memory request should make this impossible
        row["note"] = f"both CTAs ran on SM {row['sms'][0]}"
    return row


def _handoff(lib, call, row: dict, iters: int, repeats: int, reason=str) -> float | None:
    """A ping-pong measurement: `call(n, ms, sm0, sm1)` launches n round trips. Sets
    row["us"] (half a round trip) and row["sms"], or row["reason"] (`reason` of the
    FloorsError); returns the round trip in µs, or None."""
    def launch(n):
        ms, sm0, sm1 = ctypes.c_float(), ctypes.c_int(), ctypes.c_int()
        err = call(n, ctypes.byref(ms), ctypes.byref(sm0), ctypes.byref(sm1))
        if err:
            raise FloorsError(lib, err)
        return ms.value, [sm0.value, sm1.value]

    try:
        round_trip, row["sms"] = _per_barrier_us(launch, iters, repeats)
    except RuntimeError as e:
        row["reason"] = reason(e)
        return None
    row["us"] = round_trip / 2
    return round_trip


# flag_wait_all's variants: floors.cu's `mode` and the key of its µs in the row.
#   us                per-CTA counters, acquire load per poll (SyncPolicy::kFlags)
#   grid_sync_us      one grid.sync() per step (SyncPolicy::kGrid)
#   relaxed_fence_us  per-CTA counters, relaxed polls and one fence.acq_rel after the wait
#   one_counter_us    one counter per side advanced by red.release adds, relaxed polls,
#                     one fence (the forward's lean protocol, FUSED_RNN_SYNC=lean)
WAIT_ALL_MODES = ((0, "us"), (1, "grid_sync_us"), (2, "relaxed_fence_us"), (3, "one_counter_us"))
# flag_stores_pingpong: global stores per thread before each publish
PUBLISH_STORES = (0, 4, 16)


def flag_wait_all(lib, producers: int, consumers: int = 1, threads: int = FLAG_THREADS,
                  iters: int = 2000, repeats: int = 5, device=None) -> dict:
    """µs per step of C = `producers` producer CTAs and `consumers` consumer CTAs synchronised
    by step counters (each consumer waits for all C, each producer for the consumers' previous
    step), and of the same launch with one grid.sync() per step instead (grid_sync_us), with
    relaxed polls and one fence (relaxed_fence_us), and with one counter per side advanced by
    atomic adds (one_counter_us): WAIT_ALL_MODES."""
    dev = torch.cuda.current_device() if device is None else device
    blocks = producers + consumers
    row = dict(producers=producers, consumers=consumers, threads=threads, blocks=blocks,
               distinct_sms=None, **{key: None for _, key in WAIT_ALL_MODES})
    sms = ctypes.c_int()
    err = lib.floors_sm_count(dev, ctypes.byref(sms))
    if err:
        row["reason"] = lib.floors_error_string(err).decode()
        return row
    if sms.value < blocks:
        row["reason"] = (f"skipped: needs {blocks} co-resident CTAs, one per SM; this GPU has "
                         f"{sms.value} SMs")
        return row
    for mode, key in WAIT_ALL_MODES:
        def launch(n):
            ms, distinct = ctypes.c_float(), ctypes.c_int()
            err = lib.floors_flag_wait_all(dev, producers, consumers, threads, n, mode,
                                           ctypes.byref(ms), ctypes.byref(distinct))
            if err:
                raise RuntimeError(lib.floors_error_string(err).decode())
            return ms.value, distinct.value

        try:
            row[key], row["distinct_sms"] = _per_barrier_us(launch, iters, repeats)
        except RuntimeError as e:
            row["reason" if key == "us" else key.replace("_us", "_reason")] = str(e)
    if row["distinct_sms"] is not None and row["distinct_sms"] != blocks:
        row["note"] = f"{blocks} CTAs ran on {row['distinct_sms']} SMs"
    return row


def flag_stores_pingpong(lib, stores: int, threads: int = FLAG_THREADS, iters: int = 4000,
                         repeats: int = 5, device=None) -> dict:
    """µs per flag hand-off (as flag_pingpong) when each thread has `stores` global stores
    outstanding before the publish: what the release's memory barrier waits for behind an
    epilogue's stores."""
    dev = torch.cuda.current_device() if device is None else device
    row = dict(threads=threads, stores=stores, sms=None, us=None)
    _handoff(lib, lambda n, ms, sm0, sm1: lib.floors_flag_stores_pingpong(
        dev, threads, stores, n, ms, sm0, sm1), row, iters, repeats)
    return row


DSMEM_THREADS = 256  # CTA size of the DSMEM pushes and the occupancy query (the forward kernel's)
DSMEM_BANDWIDTH_KB = (1, 8, 32)  # bytes per step pushed from CTA 0 into CTA 1
# the recurrence's exchange in a cluster of 16: each CTA pushes its slice of h, `rows` batch
# rows x DSMEM_UNITS units x 2 bytes (bf16), to each of its 15 peers per step
DSMEM_CLUSTER = 16
DSMEM_UNITS = 32
DSMEM_ROWS = (8, 32)
# (cluster size, dynamic shared memory in KB per CTA) of the occupancy query
OCCUPANCY = ((16, 200), (16, 100), (8, 200))


ERR_PAYLOAD = -2  # floors.cu's kErrPayload: the kernel ran, and a payload was missing after its wait


class FloorsError(RuntimeError):
    """An error code of a floors.cu entry point, with floors_error_string's text."""

    def __init__(self, lib, code: int):
        super().__init__(lib.floors_error_string(code).decode())
        self.code = code


def _cluster_reason(e: Exception) -> str:
    """A cluster row's reason: a broken wait is a failure, anything else (no clusters before
    Hopper, no GPU, no such cluster fits) means the measurement is not available here."""
    return f"{'failed' if getattr(e, 'code', None) == ERR_PAYLOAD else 'not available'}: {e}"


def dsmem_pingpong(lib, threads: int = 128, iters: int = 4000, repeats: int = 5, device=None) -> dict:
    """µs per DSMEM hand-off between the two CTAs of a cluster on two SMs: half of one round
    trip (CTA 0 pushes 16 bytes into CTA 1 with st.async, CTA 1 waits on its mbarrier and
    pushes 16 bytes back, CTA 0 waits for those): one-way push + mbarrier latency."""
    dev = torch.cuda.current_device() if device is None else device
    row = dict(threads=threads, sms=None, us=None, round_trip_us=None)
    round_trip = _handoff(lib, lambda n, ms, sm0, sm1: lib.floors_dsmem_pingpong(
        dev, threads, n, ms, sm0, sm1), row, iters, repeats, reason=_cluster_reason)
    if round_trip is None:
        return row
    row["round_trip_us"] = round_trip
    if row["sms"][0] == row["sms"][1]:  # the shared-memory request should make this impossible
        row["note"] = f"both CTAs ran on SM {row['sms'][0]}"
    return row


def dsmem_bandwidth(lib, kb: int, threads: int = DSMEM_THREADS, iters: int = 2000, repeats: int = 5,
                    device=None) -> dict:
    """µs per step and GB/s of `kb` KB pushed per step from CTA 0 into CTA 1 of a 2-CTA
    cluster (st.async by all threads, into a double buffer; CTA 1 waits for the bytes, then
    arrives on CTA 0's barrier so CTA 0 never overwrites what it has not read)."""
    dev = torch.cuda.current_device() if device is None else device
    row = dict(kb=kb, threads=threads, sms=None, us=None, gb_s=None)

    def launch(n):
        ms, sm0, sm1 = ctypes.c_float(), ctypes.c_int(), ctypes.c_int()
        err = lib.floors_dsmem_bandwidth(dev, threads, kb * 1024, n, ctypes.byref(ms), ctypes.byref(sm0),
                                         ctypes.byref(sm1))
        if err:
            raise FloorsError(lib, err)
        return ms.value, [sm0.value, sm1.value]

    try:
        row["us"], row["sms"] = _per_barrier_us(launch, iters, repeats)
    except RuntimeError as e:
        row["reason"] = _cluster_reason(e)
        return row
    if row["us"] > 0:
        row["gb_s"] = kb * 1024 / (row["us"] * 1e3)  # bytes per µs / 1e3
    if row["sms"][0] == row["sms"][1]:
        row["note"] = f"both CTAs ran on SM {row['sms'][0]}"
    return row


def dsmem_all_to_all(lib, rows: int, units: int = DSMEM_UNITS, size: int = DSMEM_CLUSTER,
                     threads: int = DSMEM_THREADS, iters: int = 2000, repeats: int = 5, device=None) -> dict:
    """µs per step of one cluster of `size` CTAs (one per SM) in which every CTA pushes
    rows x units x 2 bytes into each of its size - 1 peers and waits for what it receives:
    the cluster recurrence's exchange with the work removed."""
    dev = torch.cuda.current_device() if device is None else device
    per_peer = rows * units * 2
    row = dict(cluster_size=size, rows=rows, units=units, bytes_per_peer=per_peer, threads=threads,
               distinct_sms=None, us=None)

    def launch(n):
        ms, distinct = ctypes.c_float(), ctypes.c_int()
        err = lib.floors_dsmem_all_to_all(dev, size, threads, per_peer, n, ctypes.byref(ms),
                                          ctypes.byref(distinct))
        if err:
            raise FloorsError(lib, err)
        return ms.value, distinct.value

    try:
        row["us"], row["distinct_sms"] = _per_barrier_us(launch, iters, repeats)
    except RuntimeError as e:
        row["reason"] = _cluster_reason(e)
        return row
    if row["distinct_sms"] != size:
        row["note"] = f"{size} CTAs ran on {row['distinct_sms']} SMs"
    return row


def max_active_clusters(lib, size: int, smem_kb: int, threads: int = DSMEM_THREADS, device=None) -> dict:
    """The largest number of co-resident clusters of `size` CTAs of `threads` threads with
    `smem_kb` KB of dynamic shared memory each (cudaOccupancyMaxActiveClusters; nothing is
    launched). 0 with the reason where the query fails (no clusters before Hopper)."""
    dev = torch.cuda.current_device() if device is None else device
    row = dict(cluster_size=size, smem_kb=smem_kb, threads=threads, clusters=0)
    clusters = ctypes.c_int()
    err = lib.floors_max_active_clusters(dev, size, threads, smem_kb * 1024, ctypes.byref(clusters))
    if err:
        row["reason"] = _cluster_reason(FloorsError(lib, err))
    else:
        row["clusters"] = clusters.value
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
           "dsmem_pingpong": [], "dsmem_bandwidth": [], "dsmem_all_to_all": [], "cluster_occupancy": [],
           "cudnn_layer_step": cudnn_layer_step(), "flag_pingpong": [], "flag_wait_all": [],
           "flag_stores_pingpong": []}
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
    out["dsmem_pingpong"].append(dsmem_pingpong(lib))
    for kb in DSMEM_BANDWIDTH_KB:
        out["dsmem_bandwidth"].append(dsmem_bandwidth(lib, kb))
    for rows in DSMEM_ROWS:
        out["dsmem_all_to_all"].append(dsmem_all_to_all(lib, rows))
    for size, smem_kb in OCCUPANCY:
        out["cluster_occupancy"].append(max_active_clusters(lib, size, smem_kb))
    # last: a broken wait traps, and a trap spoils the CUDA context for what follows
    out["flag_pingpong"].append(flag_pingpong(lib))
    for producers in FLAG_PRODUCERS:
        out["flag_wait_all"].append(flag_wait_all(lib, producers))
    for stores in PUBLISH_STORES:
        out["flag_stores_pingpong"].append(flag_stores_pingpong(lib, stores))
    return out


# ------------------------------------------------------------ per-phase timing (--phases)
#
# The buffer layout mirrors csrc/kernels/phase_timing.h (the header documents it):
# a run header of 8 int64, then per recorded CTA (one per layer-direction) 8
# int64 of stamps and 4 slots per wave step (cycles; -1 = did not happen).

PHASE_MAGIC = 0x315348504E4E5246  # the bytes "FRNNPHS1"
PHASE_RUN_HEADER = 8
PHASE_CTA_HEADER = 8
PHASES = ("gather", "gemm", "epilogue", "barrier")  # the 4 slots of a step, in order
PHASE_KINDS = ("forward", "backward")
PHASE_SHAPE = dict(cell="LSTM", dtype="bf16", layers=4, hidden=512, input_size=512, seq=512)
PHASE_BATCHES = (1, 32)
PHASE_DEVICE = "cuda"  # (the CPU tests run the measurement logic on CPU tensors, faked)

# The performance model's prediction per phase, in µs per active wave step (mean
# over the recorded CTAs, one per layer), for PHASE_SHAPE; written down before any
# measurement. csrc/kernels/README.md ("Per-phase model") has the same table with
# the reasoning; tests/test_bench.py checks that the two agree. None: the kernel
# has no such phase (the backward's epilogue inputs are loaded inside its GEMM phase).
PHASE_MODEL = {
    ("forward", 1): dict(gather=0.5, gemm=0.35, epilogue=0.3, barrier=0.7, total=1.85),
    ("forward", 32): dict(gather=1.0, gemm=0.9, epilogue=0.6, barrier=0.7, total=3.2),
    ("backward", 1): dict(gather=None, gemm=1.4, epilogue=0.2, barrier=0.7, total=2.3),
    ("backward", 32): dict(gather=None, gemm=2.2, epilogue=0.3, barrier=0.7, total=3.2),
}


def phase_wave_steps(kind: str, layers: int, dirs: int, seq: int) -> int:
    """Wave steps of one launch (phase_timing.h's phase_wave_steps)."""
    if kind == "forward":
        return layers * seq if dirs == 2 else seq + layers - 1
    return layers * seq + 1 if dirs == 2 else seq + layers


def phase_buffer_elems(kind: str, layers: int, dirs: int, seq: int) -> int:
    """int64 elements of a phase buffer for one launch (= _C.phase_buffer_size)."""
    return PHASE_RUN_HEADER + layers * dirs * (
        PHASE_CTA_HEADER + len(PHASES) * phase_wave_steps(kind, layers, dirs, seq))


def parse_phase_buffer(buf) -> dict:
    """The raw int64 buffer (a sequence of ints or a tensor) as a dict: the run header and,
    per complete record, its stamps and steps (4-tuples of cycles, -1 = did not happen).
    Raises ValueError for anything that is not a consistent phase buffer."""
    v = [int(x) for x in (buf.tolist() if hasattr(buf, "tolist") else buf)]
    if len(v) < PHASE_RUN_HEADER or v[0] != PHASE_MAGIC:
        raise ValueError("not a phase buffer (no run header: did the kernel record? "
                         "is the extension built with FUSED_RNN_PHASE_TIMING=1?)")
    _, kind, n_rec, steps, seq, layers, dirs, stride = v[:PHASE_RUN_HEADER]
    if kind not in (0, 1) or n_rec != layers * dirs or \
            steps != phase_wave_steps(PHASE_KINDS[kind], layers, dirs, seq) or \
            stride != PHASE_CTA_HEADER + len(PHASES) * steps:
        raise ValueError(f"inconsistent phase run header {v[:PHASE_RUN_HEADER]}")
    out = dict(kind=PHASE_KINDS[kind], layers=layers, dirs=dirs, seq=seq, steps=steps,
               records=[], incomplete=0)
    for r in range(n_rec):
        base = PHASE_RUN_HEADER + r * stride
        rec = v[base:base + stride]
        if len(rec) < stride or rec[7] != steps:  # cut off by the capacity, or not finished
            out["incomplete"] += 1
            continue
        block, ld, c0, c1, g0, g1, loop0, _ = rec[:PHASE_CTA_HEADER]
        if ld != r or not c0 <= loop0 <= c1 or not g0 < g1:
            raise ValueError(f"record {r}: bad stamps {rec[:PHASE_CTA_HEADER]}")
        st = [tuple(rec[PHASE_CTA_HEADER + 4 * s:PHASE_CTA_HEADER + 4 * s + 4]) for s in range(steps)]
        for s, slots in enumerate(st):
            if any(x < -1 for x in slots) or (slots[1] < 0 and any(x >= 0 for x in slots[:3])):
                raise ValueError(f"record {r}, step {s}: bad slots {slots}")
        out["records"].append(dict(block=block, ld=ld, clock=(c0, c1), ns=(g0, g1), loop_start=loop0,
                                   steps=st))
    return out


def analyze_phase_buffer(buf) -> dict:
    """Per-phase means of one launch's buffer, in µs per ACTIVE wave step: pooled over the
    recorded CTAs and their active steps (slot 1 >= 0), each CTA's cycles converted with its
    own clock rate, (clock end - start) / (globaltimer end - start). The barrier mean is over
    the active steps that end with one (the launch's last step has none); a phase that never
    happened (the backward's gather) is None. `total_us`: mean per active step of the sum of
    its recorded phases. Also: active steps per CTA, clock rate, kernel span (globaltimer)."""
    run = parse_phase_buffer(buf)
    if not run["records"]:
        raise ValueError("no complete record in the phase buffer (too small?)")
    sums = {name: [0.0, 0] for name in PHASES}
    total, n_active, active_steps, ghz, prologue = 0.0, 0, [], [], []
    for rec in run["records"]:
        rate = (rec["clock"][1] - rec["clock"][0]) / (rec["ns"][1] - rec["ns"][0])  # cycles per ns
        ghz.append(rate)
        prologue.append((rec["loop_start"] - rec["clock"][0]) / rate / 1e3)
        act = [slots for slots in rec["steps"] if slots[1] >= 0]
        active_steps.append(len(act))
        for slots in act:
            for name, x in zip(PHASES, slots):
                if x >= 0:
                    sums[name][0] += x / rate / 1e3
                    sums[name][1] += 1
            total += sum(x for x in slots if x >= 0) / rate / 1e3
            n_active += 1
    span_ns = max(r["ns"][1] for r in run["records"]) - min(r["ns"][0] for r in run["records"])
    return dict(kind=run["kind"], steps=run["steps"], records=len(run["records"]),
                incomplete=run["incomplete"], active_steps=active_steps,
                phases_us={name: (s / n if n else None) for name, (s, n) in sums.items()},
                total_us=total / n_active if n_active else None,
                clock_ghz=sum(ghz) / len(ghz), prologue_us=sum(prologue) / len(prologue),
                kernel_us=span_ns / 1e3)


def _fmt(x, spec=".2f") -> str:
    return "—" if x is None else format(x, spec)


def phases_table(rows: list[dict]) -> str:
    """The measured phase means beside the model, one block per (kernel, batch)."""
    lines = [f"{'kernel':9} {'B':>3}  {'phase':18} {'measured':>9} {'model':>7}   (µs per active step)"]
    for r in rows:
        model = PHASE_MODEL.get((r["kernel"], r["batch"]), {})
        if r.get("reason"):
            lines.append(f"{r['kernel']:9} {r['batch']:>3}  not measured: {r['reason']}")
            continue
        for name in PHASES:
            label = {"gemm": "GEMM" + (" (+ prefetch)" if r["kernel"] == "backward" else ""),
                     "barrier": "barrier wait"}.get(name, name)
            lines.append(f"{r['kernel']:9} {r['batch']:>3}  {label:18} "
                         f"{_fmt(r['phases_us'][name]):>9} {_fmt(model.get(name)):>7}")
        lines.append(f"{r['kernel']:9} {r['batch']:>3}  {'total per step':18} "
                     f"{_fmt(r['total_us']):>9} {_fmt(model.get('total')):>7}")
        lines.append(f"{'':14}  kernel {r['kernel_us'] / 1e3:.3f} ms by its recorded CTAs' timer; "
                     f"op {r['event_ms']:.3f} ms by CUDA events = {r['event_us_per_step']:.2f} µs over "
                     f"{r['steps']} steps{' (incl. the weight GEMMs)' if r['kernel'] == 'backward' else ''}; "
                     f"SM clock {r['clock_ghz']:.2f} GHz; active steps per CTA "
                     f"{sorted(set(r['active_steps']))}")
    return "\n".join(lines)


def _phase_ext():
    """(extension module or None, why not)."""
    try:
        from fused_rnn._build import extension_status, load_extension
    except ImportError as e:
        return None, f"fused_rnn not importable ({e})"
    ext = load_extension()
    if ext is None:
        return None, f"the CUDA extension is unavailable ({extension_status()['reason']})"
    if not getattr(ext, "phase_timing_compiled", False):
        return None, ("the extension was built without per-phase timing; rebuild it with "
                      "FUSED_RNN_PHASE_TIMING=1 (e.g. FUSED_RNN_PHASE_TIMING=1 python setup.py "
                      "build_ext --inplace)")
    return ext, None


def _phase_ops():
    """The extension's ops (registered when it is loaded)."""
    return torch.ops.fused_rnn


def run_phases(ext, batches=PHASE_BATCHES) -> list[dict]:
    """Per (kernel, batch): one warm-up launch without recording, then one recorded launch
    between CUDA events, analysed. Through the extension's ops (_fused_forward inference,
    _fused_backward on a forward's reserve) with a phase buffer set."""
    sh = PHASE_SHAPE
    L, H, I, T = sh["layers"], sh["hidden"], sh["input_size"], sh["seq"]
    dt, dev = torch.bfloat16, PHASE_DEVICE
    ops = _phase_ops()
    rows = []
    for B in batches:
        torch.manual_seed(0)
        lstm = torch.nn.LSTM(I, H, L, device=dev, dtype=dt)
        w = [t.detach() for t in lstm._flat_weights]
        x = torch.randn(T, B, I, device=dev, dtype=dt)
        hx = torch.randn(L, B, H, device=dev, dtype=dt)
        cx = torch.randn(L, B, H, device=dev, dtype=dt)

        def forward(need_reserve):
            return ops._fused_forward(x, w, hx, cx, None, None, "LSTM", L, False, True, 0, 0.0,
                                      need_reserve)

        saved = {}

        def backward():
            out, _, _, reserve = saved["fwd"]
            return ops._fused_backward(saved["gout"], saved["ghy"], saved["gcy"], x, w, hx, cx, None,
                                       None, out, reserve, "LSTM", L, False, True, 0, 0.0)

        for kind in PHASE_KINDS:
            row = dict(kernel=kind, batch=B, **sh)
            planner = ext.plan if kind == "forward" else ext.plan_backward
            ok, why = planner("LSTM", L, False, True, 0, I, H, B, T, dt, torch.cuda.current_device(),
                              kind == "backward", False, 0.0)
            row["plan"] = why
            if not ok:
                rows.append(dict(row, reason=f"not covered by the fused kernel: {why}"))
                continue
            if kind == "forward":
                launch = lambda: forward(False)  # noqa: E731 - inference, no reserve
            else:
                saved["fwd"] = forward(True)
                saved["gout"] = torch.randn_like(saved["fwd"][0])
                saved["ghy"], saved["gcy"] = torch.randn_like(hx), torch.randn_like(cx)
                launch = backward
            n = ext.phase_buffer_size(kind, L, False, T)
            assert n == phase_buffer_elems(kind, L, 1, T), "phase buffer formula out of sync"
            buf = torch.full((n,), -2, dtype=torch.int64, device=dev)
            ext.set_phase_buffer(kind, None)
            launch()  # warm-up: module load, plan cache, allocator; not recorded
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            ext.set_phase_buffer(kind, buf)
            try:
                start.record()
                launch()
                end.record()
                end.synchronize()
            finally:
                ext.set_phase_buffer(kind, None)
            try:
                res = analyze_phase_buffer(buf.cpu())
            except ValueError as e:  # the kernel recorded nothing usable: say so, keep going
                rows.append(dict(row, reason=f"no usable phase records: {e}"))
                continue
            event_ms = start.elapsed_time(end)
            row.update(res, model=PHASE_MODEL.get((kind, B)), event_ms=event_ms,
                       event_us_per_step=1e3 * event_ms / res["steps"])
            rows.append(row)
        saved.clear()
    return rows


def phases_main(out_dir) -> int:
    """floors.py --phases: 0 when every row was measured (or no GPU: nothing to do), 1 when
    the GPU is there but the extension cannot record (built without the flag, or
    unavailable) or a row could not be measured (its reason is printed)."""
    if not torch.cuda.is_available():
        print("floors --phases: no CUDA GPU visible; per-phase timing is a GPU measurement "
              "(nothing to do here).")
        return 0
    ext, why = _phase_ext()
    if ext is None:
        print(f"floors --phases: cannot measure: {why}.")
        return 1
    rows = run_phases(ext)
    sh = PHASE_SHAPE
    print(f"{torch.cuda.get_device_name()}: per-phase timing, {sh['dtype']} {sh['cell']} "
          f"L={sh['layers']} H=I={sh['hidden']} T={sh['seq']} (mean over the recorded CTAs, one "
          f"per layer, and their active steps)\n{phases_table(rows)}")
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "phases.json"), "w") as f:
            json.dump({"meta": common.environment(), "phases": rows}, f, indent=1)
            f.write("\n")
        print(f"wrote {out_dir}/phases.json")
    return 1 if any(r.get("reason") for r in rows) else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="folder for floors.json (phases.json with --phases)")
    ap.add_argument("--phases", action="store_true",
                    help="only the per-phase timing of the fused kernels (needs an extension "
                         "built with FUSED_RNN_PHASE_TIMING=1), beside the model's prediction")
    args = ap.parse_args(argv)
    if args.phases:
        return phases_main(args.out)
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
