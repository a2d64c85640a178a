"""The forward's recurrence in thread-block clusters (FUSED_RNN_SYNC=cluster, opt-in; sm_90,
16-bit, B <= 64, at most 16 CTAs per layer-direction): csrc/kernels/forward_kernel.cuh,
"the recurrence in a cluster". Each CTA pushes its h_t into every peer's shared memory with
st.async, which signals the peer's mbarrier with the bytes; the layers hand off through the
L2 ring and step counters as under flags.

- plans: on an sm_90 GPU a small stack runs in clusters and the speed-target stack (bf16
  LSTM L=4 H=512) is planned -- or refused with the runtime's reason (its 4 clusters of 16
  CTAs at ~200 KB of shared memory each must be co-resident: cudaOccupancyMaxActiveClusters),
  printed; B = 32 falls back to flags and says why;
- every case against the float64 reference with the full tests' accuracy rule (2 x cuDNN's
  error + floor), outputs poisoned first (tests/gpu/test_smoke_gpu.py's check_forward):
  awkward sizes, bidirectional, lengths, dropout (== the reference's masks), clusters of 16;
- the same numbers as the flags kernel (not bit for bit: the unit split differs, so the
  GEMM sums in another order);
- CUDA-graph capture and replay of the cluster launch (cooperative + cluster dimension);
- a training step through the module: the forward in clusters, the backward (flags) on its
  reserve, gradients as under flags.
Without sm_90 every test checks the fallback instead (the plan says why) or skips.
"""

from __future__ import annotations

import pytest
import torch
from gpu_helpers import Case, assert_sync, rel_err
from test_smoke_gpu import check_forward, plan_forward_or_skip

import fused_rnn

pytestmark = pytest.mark.gpu


def _hopper():
    return torch.cuda.get_device_capability()[0] >= 9


def _plan(ext, case: Case):
    return plan_forward_or_skip(ext, case, need_reserve=True)


CASES = [
    Case("LSTM", 2, False, 13, 40, 3, 5, True, "bf16", True),          # clusters of 5
    Case("GRU", 3, False, 7, 37, 1, 6, True, "fp16", False),           # last slice 5 units
    Case("RNN_TANH", 2, True, 5, 20, 9, 3, True, "bf16", True),        # bidirectional, B = 9
    Case("RNN_RELU", 2, False, 9, 200, 2, 4, False, "fp16", False),    # clusters of 13, U = 16
    Case("LSTM", 1, False, 16, 128, 8, 7, True, "bf16", False),        # clusters of 16, U = 8
    Case("LSTM", 2, False, 64, 256, 64, 4, True, "bf16", False),       # B = 64: one full tile
    Case("LSTM", 1, False, 4, 16, 1, 1, True, "bf16", False),          # T = 1: no push
    Case("LSTM", 4, False, 512, 512, 8, 9, True, "bf16", False),       # the speed target
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_cluster_forward_matches_reference(ext, precision, monkeypatch, case):
    precision(case.prec)
    monkeypatch.setenv("FUSED_RNN_SYNC", "cluster")
    why = _plan(ext, case)
    if _hopper() and "recurrence in clusters of" not in why:
        # (only the runtime's count of co-resident clusters may refuse these shapes: the
        # plans fit an H100's shared memory)
        assert "its clusters are not all co-resident" in why, \
            f"{case.id}: sm_90, but no cluster recurrence: {why}"
        pytest.skip(f"not co-resident on this GPU: {why}")
    if not _hopper():
        assert "no cluster recurrence (requested: thread-block clusters need sm_90)" in why
    check_forward(case, torch.ops.fused_rnn._fused_forward, "cuda")


@pytest.mark.parametrize("p", [0.3])
def test_cluster_dropout_equals_reference(ext, precision, monkeypatch, p):
    case = Case("LSTM", 3, False, 13, 64, 4, 6, True, "fp16", True, p)
    precision(case.prec)
    monkeypatch.setenv("FUSED_RNN_SYNC", "cluster")
    why = _plan(ext, case)
    assert not _hopper() or "recurrence in clusters of" in why, why
    check_forward(case, torch.ops.fused_rnn._fused_forward, "cuda")


def test_cluster_plans_and_fallbacks(ext):
    """The plan names what ran: clusters where they fit, else flags with the reason."""
    dev = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(dev)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FUSED_RNN_SYNC", "cluster")
        for B in (1, 8, 32):
            ok, why = ext.plan("LSTM", 4, False, True, 0, 512, 512, B, 512, torch.bfloat16, dev,
                               False, False, 0.0)
            assert ok, why
            print(f"B={B}: {why}")
            if B == 32:  # two X tiles and 256 KB of weights per CTA do not fit at B = 32
                assert "flags sync" in why and "no cluster recurrence (requested: " in why, why
        ok, why = ext.plan("LSTM", 2, False, True, 0, 64, 64, 4, 16, torch.float32, dev, False,
                           False, 0.0)
        assert ok and "no cluster recurrence (requested: 16-bit dtypes only)" in why, why
        if props.major >= 9:
            ok, why = ext.plan("GRU", 2, False, True, 0, 64, 128, 4, 16, torch.bfloat16, dev,
                               False, False, 0.0)
            assert ok and "cluster sync (ring 4)" in why and \
                "recurrence in clusters of 16 CTAs" in why, why


def test_cluster_same_function_as_flags(ext, precision, monkeypatch):
    precision("bf16")
    torch.manual_seed(0)
    m = fused_rnn.LSTM(24, 96, num_layers=3, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(11, 6, 24, device="cuda", dtype=torch.bfloat16)
    outs = {}
    with torch.no_grad():
        for policy in ("flags", "cluster", "cluster"):
            monkeypatch.setenv("FUSED_RNN_SYNC", policy)
            out, (h, c) = m(x)
            assert m.last_backend.startswith("fused"), m.last_backend
            if policy == "cluster" and _hopper():
                assert_sync("LSTM under cluster", m.last_backend, "cluster")
            if policy in outs:  # the same policy again: the same bits
                assert torch.equal(out, outs[policy])
            outs[policy] = out
    assert rel_err(outs["cluster"], outs["flags"]) < 2e-2, rel_err(outs["cluster"], outs["flags"])


def test_cluster_cuda_graph_capture_and_replay(ext, precision, monkeypatch):
    precision("bf16")
    monkeypatch.setenv("FUSED_RNN_SYNC", "cluster")
    torch.manual_seed(1)
    m = fused_rnn.GRU(16, 48, num_layers=2, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(7, 4, 16, device="cuda", dtype=torch.bfloat16)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(2):
            m(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        static_out, static_h = m(x)
    if _hopper():
        assert_sync("GRU captured under cluster", m.last_backend, "cluster")
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    with torch.no_grad():
        eager_out, eager_h = m(x)
    assert torch.equal(static_out, eager_out) and torch.equal(static_h, eager_h)


def test_cluster_training_step(ext, precision, monkeypatch):
    """The forward in clusters saves the reserve the backward (flags) reads: gradients as
    under flags."""
    precision("bf16")
    torch.manual_seed(2)
    m = fused_rnn.LSTM(20, 64, num_layers=2, dropout=0.0, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(9, 5, 20, device="cuda", dtype=torch.bfloat16)
    grads = {}
    for policy in ("flags", "cluster"):
        monkeypatch.setenv("FUSED_RNN_SYNC", policy)
        m.zero_grad(set_to_none=True)
        xx = x.clone().requires_grad_(True)
        out, _ = m(xx)
        if policy == "cluster" and _hopper():
            assert_sync("LSTM training under cluster", m.last_backend, "cluster")
        out.float().square().mean().backward()
        grads[policy] = [xx.grad.float()] + [p.grad.float() for p in m.parameters()]
    for a, b in zip(grads["flags"], grads["cluster"]):
        assert torch.isfinite(b).all()
        assert rel_err(b, a) < 5e-2, rel_err(b, a)
