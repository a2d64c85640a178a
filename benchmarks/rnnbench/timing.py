"""Timing on the GPU (CUDA events: common.cuda_time) and on the CPU (interleaved rounds),
host-sync counting, how many input buffers to rotate, and CUDA-graph capture."""

from __future__ import annotations

import math
import time
import warnings

import torch

import common


def median(times: list[float]) -> float:
    return common.stats(times)[0]


def interleaved_ms(fns, runs: int, budget_s: float | None = None) -> list[list[float]]:
    """Milliseconds of each of `fns` over `runs` rounds, a round calling each once in turn
    (fns[0], fns[1], ..., fns[0], ...: a shared machine's drift falls on all of them alike),
    after one untimed round. With budget_s, the rounds stop once that many seconds have
    passed (after at least one)."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    start = time.perf_counter()
    for _ in range(runs):
        for fn, t in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            t.append(1e3 * (time.perf_counter() - t0))
        if budget_s is not None and time.perf_counter() - start > budget_s:
            break
    return times


def count_host_syncs(step, x) -> int:
    """How many synchronising CUDA calls torch sees during one step(x)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def buffer_count(x_bytes: int) -> int:
    """Input buffers to rotate: enough that two L2s' worth of inputs cycle, 2 to 8."""
    l2 = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 0) or 2**26
    return max(2, min(8, math.ceil(2 * l2 / max(x_bytes, 1))))


def grad_dropper(params, xs):
    """prepare() for common.cuda_time: drop the previous run's gradients, on the host."""
    def prepare():
        for t in (*params, *xs):
            t.grad = None
    return prepare


# ------------------------------------------------------------------ CUDA graphs


class CudaGraphs:
    """Capture with torch.cuda.CUDAGraph, as a user who graphs a model does: warm-up calls
    on a side stream, then one capture. tests/test_bench.py swaps in a fake with the same
    method (the CPU has no graphs)."""

    warmup = 3

    def capture(self, fn, pool=None):
        """(graph, outputs): the graph of one fn() call and the tensors it returned, which
        every graph.replay() rewrites in place. `pool`: another graph's pool() to share
        memory with (graphs replayed one at a time on one stream)."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = fn()
        return graph, out


GRAPHS = CudaGraphs()


class GraphedSteps:
    """One CUDA graph per input buffer (no copy into a static input on the timed path), all
    sharing one memory pool: step(x) replays x's graph; outputs(x) replays it and returns
    (clones of) what it wrote."""

    def __init__(self, make_fn, xs):
        """make_fn(x) -> a no-argument function computing what one call computes on x."""
        self.graphs, self.outs = {}, {}
        pool = None
        for x in xs:
            graph, out = GRAPHS.capture(make_fn(x), pool)
            self.graphs[id(x)], self.outs[id(x)] = graph, out
            if pool is None and hasattr(graph, "pool"):
                pool = graph.pool()

    def step(self, x) -> None:
        self.graphs[id(x)].replay()

    def outputs(self, x):
        self.graphs[id(x)].replay()
        return _clone(self.outs[id(x)])

    def close(self) -> None:
        self.graphs.clear()
        self.outs.clear()


def _clone(t):
    if isinstance(t, torch.Tensor):
        return t.clone()
    if isinstance(t, (tuple, list)):
        return type(t)(_clone(v) for v in t)
    if isinstance(t, dict):
        return {k: _clone(v) for k, v in t.items()}
    return t
