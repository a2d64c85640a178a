#!/usr/bin/env python
"""Streaming (online) inference with fused_rnn, one chunk at a time.

A stream arrives a few timesteps at a time (`--chunk`; `--chunk 1` is one
timestep per call, as in real-time audio or token-by-token decoding). Each
call gets the new chunk and the state the previous call returned, (h, c) for
an LSTM. This script checks that the chunked outputs equal one call on the
whole sequence, and reports the latency of one call (median and p90). On a
GPU it also times torch.nn.LSTM (cuDNN) with the same weights, using CUDA
events after a warm-up.

    python examples/streaming.py                    # chunks of 16 timesteps
    python examples/streaming.py --chunk 1          # one timestep per call
    python examples/streaming.py --cell gru --layers 3 --hidden 512
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

try:
    import fused_rnn
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import fused_rnn

CLASSES = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}
DTYPES = {"float32": torch.float32, "float64": torch.float64,
          "float16": torch.float16, "bfloat16": torch.bfloat16}


def default_tolerance(dtype, device):
    """How far chunked may be from whole-sequence: rounding only, never a different answer."""
    if dtype == torch.float64:
        return 1e-9
    if dtype == torch.float32:
        # CUDA: the input projection of a chunk and of the whole sequence are
        # different GEMM shapes, which may take differently-rounding algorithms.
        return 1e-5 if device.type == "cpu" else 1e-4
    return 5e-2  # 16-bit: the carried state is rounded to 16 bits between calls


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


class Timer:
    """Milliseconds per call: CUDA events on a GPU (no host sync per call), else wall clock."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.spans = []

    def start(self):
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def stop(self):
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.spans.append((self._start, end))
        else:
            self.spans.append((time.perf_counter() - self._start) * 1e3)

    def ms(self):
        if self.cuda:
            torch.cuda.synchronize()
            return [s.elapsed_time(e) for s, e in self.spans]
        return list(self.spans)


def stream(rnn, x, chunk, timer=None):
    """Feed x (T, B, input) to `rnn` `chunk` timesteps per call, carrying the state."""
    outputs, state = [], None
    for t in range(0, x.size(0), chunk):
        if timer:
            timer.start()
        out, state = rnn(x[t:t + chunk], state)
        if timer:
            timer.stop()
        outputs.append(out)
    return torch.cat(outputs), state


def latency(rnn, x, chunk, warmup, repeats, device):
    """Per-call latency in ms (median, p90) over `repeats` passes, after `warmup` calls."""
    stream(rnn, x[:warmup * chunk], chunk)
    timer = Timer(device)
    for _ in range(repeats):
        stream(rnn, x, chunk, timer)
    ms = torch.tensor(timer.ms())
    return ms.median().item(), ms.quantile(0.9).item()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cell", choices=list(CLASSES), default="lstm", help="default: %(default)s")
    p.add_argument("--input-size", type=int, default=64, help="features per timestep (%(default)s)")
    p.add_argument("--hidden", type=int, default=256, help="hidden size (%(default)s)")
    p.add_argument("--layers", type=int, default=2, help="stacked layers (%(default)s)")
    p.add_argument("--batch", type=int, default=1, help="parallel streams (%(default)s)")
    p.add_argument("--seq-len", type=int, default=256, help="timesteps in all (%(default)s)")
    p.add_argument("--chunk", type=int, default=16, help="timesteps per call (%(default)s)")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32", help="default: %(default)s")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="default: %(default)s")
    p.add_argument("--tol", type=float, help="max allowed |chunked - whole| (default: by dtype)")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls first (%(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes (%(default)s)")
    p.add_argument("--compare-nn", action=argparse.BooleanOptionalAction, default=None,
                   help="also time torch.nn with the same weights (default: on with CUDA)")
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    return p.parse_args(argv)


@torch.inference_mode()
def main(argv=None):
    args = parse_args(argv)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    compare_nn = device.type == "cuda" if args.compare_nn is None else args.compare_nn
    tol = default_tolerance(dtype, device) if args.tol is None else args.tol
    torch.manual_seed(args.seed)

    name = CLASSES[args.cell]
    rnn = getattr(fused_rnn, name)(args.input_size, args.hidden, num_layers=args.layers)
    rnn = rnn.to(device, dtype).eval()
    x = torch.randn(args.seq_len, args.batch, args.input_size, device=device, dtype=dtype)
    calls = -(-args.seq_len // args.chunk)
    print(f"fused_rnn.{name}: {args.layers} layers, hidden {args.hidden}, batch {args.batch}, "
          f"{args.seq_len} timesteps in {calls} calls of {args.chunk}; {device} {args.dtype}")

    whole_out, whole_state = rnn(x)
    chunk_out, chunk_state = stream(rnn, x, args.chunk)
    diff = (chunk_out - whole_out).abs().max().item()
    state_diff = max((a - b).abs().max().item()
                     for a, b in zip(as_tuple(chunk_state), as_tuple(whole_state)))
    ok = max(diff, state_diff) <= tol
    print(f"chunked vs whole sequence: max |diff| output {diff:.2e}, final state {state_diff:.2e} "
          f"(tolerance {tol:.0e}) {'OK' if ok else 'FAILED'}")
    if not ok:
        raise SystemExit("chunked outputs differ from the whole-sequence outputs")

    med, p90 = latency(rnn, x, args.chunk, args.warmup, args.repeats, device)
    print(f"fused_rnn latency per call: median {med:.3f} ms, p90 {p90:.3f} ms "
          f"({med * 1e3 / args.chunk:.1f} us per timestep)")
    result = dict(max_diff=diff, state_diff=state_diff, tol=tol, median_ms=med, p90_ms=p90,
                  nn_median_ms=None, nn_p90_ms=None, backend=rnn.last_backend)

    if compare_nn:
        ref = getattr(torch.nn, name)(args.input_size, args.hidden, num_layers=args.layers)
        ref = ref.to(device, dtype).eval()
        ref.load_state_dict(rnn.state_dict())  # same weights
        ref_out, _ = stream(ref, x, args.chunk)
        nn_med, nn_p90 = latency(ref, x, args.chunk, args.warmup, args.repeats, device)
        print(f"torch.nn latency per call:  median {nn_med:.3f} ms, p90 {nn_p90:.3f} ms "
              f"(fused_rnn speed-up {nn_med / med:.2f}x at the median); "
              f"max |fused - nn| {(ref_out - chunk_out).abs().max().item():.2e}")
        result.update(nn_median_ms=nn_med, nn_p90_ms=nn_p90)

    print(f"fused_rnn backend: {rnn.last_backend}")
    return result


if __name__ == "__main__":
    main()
