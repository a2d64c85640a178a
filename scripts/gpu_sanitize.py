"""The compute-sanitizer target of scripts/gpu_check.sh: one tiny bf16 forward and backward
through the fused kernels, small enough to run under memcheck, racecheck and synccheck in
seconds.

    compute-sanitizer --tool memcheck python3 scripts/gpu_sanitize.py

LSTM, 2 layers, H=24, T=3, B=3 with lengths and dropout: the grid barrier, the dropout ring,
length masking, the reserve and the backward's cp.async stream all run. Exits 0 when both
fused kernels were planned, ran, and returned finite values; 1 (with the reason) otherwise,
so that a sanitizer run that checked nothing can not pass as clean.

Options change the problem, for bisecting a sanitizer report (defaults: the problem above):

    compute-sanitizer --tool racecheck python3 scripts/gpu_sanitize.py --dtype fp32 --hidden 200

--dtype bf16 | fp16 | tf32 | fp32 (float32 with TF32 off: the exact FMA path), --hidden,
--layers, --dropout.

--cublas-only: the control of a racecheck report -- the weight-gradient GEMMs that follow the
backward kernel (csrc/torch/backward_grads.h: the same mm / addmm / cat / sum calls on views
of the same shapes, strides and dtype) on random gate gradients, without loading the
extension. Whatever a sanitizer reports over it belongs to torch and cuBLAS.
"""

from __future__ import annotations

import argparse
import sys

import torch

MODE, L, I, H, B, T, P = "LSTM", 2, 10, 24, 3, 3, 0.25
DTYPE = torch.bfloat16
CUBLAS_ONLY = False
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32,
          "fp32": torch.float32}


def run(forward, backward, device) -> dict:
    """One forward (with reserve) and its backward through `forward` / `backward` (the ops'
    argument lists); every output and gradient by name. tests/test_gpu_check.py runs this
    on the CPU with the public ops (reference path)."""
    g = torch.Generator().manual_seed(0)

    def rnd(*shape, scale=1.0):
        return (torch.randn(shape, generator=g) * scale).to(DTYPE).to(device)

    w = []
    for layer in range(L):
        w += [rnd(4 * H, I if layer == 0 else H, scale=0.2), rnd(4 * H, H, scale=0.2),
              rnd(4 * H, scale=0.2), rnd(4 * H, scale=0.2)]
    x, hx, cx = rnd(T, B, I), rnd(L, B, H, scale=0.5), rnd(L, B, H, scale=0.5)
    lengths = torch.tensor([3, 1, 2], dtype=torch.int64, device=device)
    seed = torch.tensor(1234, dtype=torch.int64, device=device)
    out, hy, cy, reserve = forward(x, w, hx, cx, lengths, seed, MODE, L, False, True, 0, P, True)
    grads = backward(rnd(T, B, H), rnd(L, B, H), rnd(L, B, H), x, w, hx, cx, lengths, seed, out,
                     reserve, MODE, L, False, True, 0, P)
    named = {"output": out, "h_n": hy, "c_n": cy, "reserve": reserve, "grad_input": grads[0],
             "grad_hx": grads[2], "grad_cx": grads[3]}
    named.update({f"grad_w{i}": gw for i, gw in enumerate(grads[1])})
    return named


def cublas_control(device) -> dict:
    """csrc/torch/backward_grads.h's ATen calls, line for line, on random tensors of the
    problem's shapes (LSTM: G = 4; the gate gradients' rows padded to GHp as the kernel's
    workspace holds them; xdrop when dropout is on): grad_input and every weight gradient."""
    g = torch.Generator().manual_seed(1)

    def rnd(*shape):
        return torch.randn(shape, generator=g).to(DTYPE).to(device)

    G, D = 4, 1
    GH = G * H
    GHp = (GH + 15) // 16 * 16
    S = 6 * H
    dg = rnd(L * D, T, B, GHp)
    reserve, inp, hx = rnd(L * D, T, B, S), rnd(T, B, I), rnd(L * D, B, H)
    xdrop = rnd(L - 1, T, B, D * H) if P > 0 and L > 1 else None
    w_ih0 = rnd(GH, I)

    def gates_of(ld, t0, n):
        return dg.select(0, ld).narrow(0, t0, n).narrow(2, 0, GH).reshape(n * B, GH)

    def h_of(ld, t0, n):
        return reserve.select(0, ld).narrow(0, t0, n).narrow(2, S - H, H).reshape(n * B, H)

    named = {"grad_input": torch.mm(gates_of(0, 0, T), w_ih0).view(T, B, I)}
    for layer in range(L):
        ld = layer * D
        gi = gates_of(ld, 0, T)
        git = gi.t()
        if layer == 0:
            named[f"grad_w_ih_l{layer}"] = torch.mm(git, inp.reshape(T * B, I))
        elif xdrop is not None:
            named[f"grad_w_ih_l{layer}"] = torch.mm(git, xdrop.select(0, layer - 1).reshape(T * B, D * H))
        else:
            named[f"grad_w_ih_l{layer}"] = torch.mm(git, h_of(layer - 1, 0, T))
        h0 = hx.select(0, ld)
        h_prev = torch.cat([h0, h_of(ld, 0, T - 1)], 0) if T > 1 else h0
        named[f"grad_w_hh_l{layer}"] = torch.mm(gi.t(), h_prev)
        named[f"grad_b_ih_l{layer}"] = gi.sum(0)
        named[f"grad_b_hh_l{layer}"] = gi.sum(0)
    return named


def configure(argv=None) -> None:
    """Set the problem from the command line (module globals, read by run() and main())."""
    global DTYPE, H, L, P, CUBLAS_ONLY
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--hidden", type=int, default=H)
    ap.add_argument("--layers", type=int, default=L)
    ap.add_argument("--dropout", type=float, default=P)
    ap.add_argument("--cublas-only", action="store_true",
                    help="the control: backward_grads.h's GEMMs alone, no extension")
    a = ap.parse_args(argv)
    if a.hidden < 1 or a.layers < 1 or not 0.0 <= a.dropout < 1.0:
        ap.error("--hidden and --layers must be >= 1, --dropout in [0, 1)")
    DTYPE, H, L, P, CUBLAS_ONLY = DTYPES[a.dtype], a.hidden, a.layers, a.dropout, a.cublas_only
    # float32 runs TF32 tensor cores when cuDNN's RNN setting allows it (as in torch.nn)
    torch.backends.cudnn.allow_tf32 = a.dtype == "tf32"


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_sanitize: no CUDA device visible")
        return 1
    if CUBLAS_ONLY:
        named = cublas_control("cuda")
        torch.cuda.synchronize()
        bad = [k for k, v in named.items() if not torch.isfinite(v).all()]
        if bad:
            print(f"gpu_sanitize: non-finite values in {', '.join(bad)}")
            return 1
        print(f"gpu_sanitize: cuBLAS control ({len(named)} results, {DTYPE}) ran, all finite")
        return 0
    from fused_rnn._build import extension_status, load_extension

    ext = load_extension()
    if ext is None:
        print(f"gpu_sanitize: the extension did not load: {extension_status()}")
        return 1
    dev = torch.cuda.current_device()
    for name, plan in (("forward", ext.plan), ("backward", ext.plan_backward)):
        ok, why = plan(MODE, L, False, True, 0, I, H, B, T, DTYPE, dev, True, True, P)
        print(f"{name} plan: {why}")
        if not ok:
            return 1
    named = run(torch.ops.fused_rnn._fused_forward, torch.ops.fused_rnn._fused_backward, "cuda")
    torch.cuda.synchronize()
    bad = [k for k, v in named.items() if not torch.isfinite(v).all()]
    if bad:
        print(f"gpu_sanitize: non-finite values in {', '.join(bad)}")
        return 1
    print("gpu_sanitize: fused forward + backward ran, all outputs finite")
    return 0


if __name__ == "__main__":
    configure()
    sys.exit(main())
