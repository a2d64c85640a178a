"""fused_rnn.ops' choice of backward path, with the extension faked (no GPU needed).

The CUDA kernel of rnn_backward calls fused_rnn::_fused_backward exactly when
the extension's plan_backward says yes AND the forward saved a reserve;
ops.plan(..., which=...) asks the forward or the backward planner.
"""

from types import SimpleNamespace

import pytest
import torch

from fused_rnn import ops


class FakeExt:
    def __init__(self, fwd_ok=True, bwd_ok=True):
        self.calls = []
        self.fwd_ok, self.bwd_ok = fwd_ok, bwd_ok

    def plan(self, *args):
        self.calls.append(("forward", args))
        return (True, "fused: fake") if self.fwd_ok else (False, "fake forward no")

    def plan_backward(self, *args):
        self.calls.append(("backward", args))
        return (True, "fused backward: fake") if self.bwd_ok else (False, "fake backward no")


def _cuda_like_input(T=5, B=3, I=4):
    # plan() only reads device, dtype and shape
    return SimpleNamespace(device=torch.device("cuda", 0), dtype=torch.float32, shape=(T, B, I))


def _args(inp, mode="LSTM", H=6):
    w = [torch.zeros(4 * H, inp.shape[2]), torch.zeros(4 * H, H)]
    return (inp, w, None, None, None, None, mode, 1, False, False, 0, 0.0, True)


@pytest.mark.parametrize("which", ["forward", "backward"])
def test_plan_asks_the_selected_planner(monkeypatch, which):
    ext = FakeExt()
    monkeypatch.setattr(ops, "load_extension", lambda: ext)
    ok, why = ops.plan(*_args(_cuda_like_input()), which=which)
    assert ok
    assert why == ("fused: fake" if which == "forward" else "fused backward: fake")
    assert [c[0] for c in ext.calls] == [which]
    # same argument list for both planners: mode, L, bidir, bias, proj, I, H, B, T, dtype, ...
    assert ext.calls[0][1][:10] == ("LSTM", 1, False, False, 0, 4, 6, 3, 5, torch.float32)


def test_plan_backward_rejection_gives_the_planners_reason(monkeypatch):
    monkeypatch.setattr(ops, "load_extension", lambda: FakeExt(bwd_ok=False))
    ok, why = ops.plan(*_args(_cuda_like_input()), which="backward")
    assert not ok and why == "fake backward no"


def test_plan_without_plan_backward_in_the_extension(monkeypatch):
    monkeypatch.setattr(ops, "load_extension", lambda: SimpleNamespace(plan=FakeExt().plan))
    ok, why = ops.plan(*_args(_cuda_like_input()), which="backward")
    assert not ok and "no fused backward" in why


def test_plan_rejects_unknown_which():
    with pytest.raises(ValueError, match="which"):
        ops.plan(*_args(_cuda_like_input()), which="sideways")


def _backward_args(reserve):
    x = torch.randn(5, 3, 4)
    w = [torch.randn(24, 4), torch.randn(24, 6)]
    h = torch.zeros(1, 3, 6)
    return (torch.zeros(5, 3, 6), torch.zeros(1, 3, 6), torch.zeros(1, 3, 6), x, w, h, h, None,
            None, torch.zeros(5, 3, 6), reserve, "LSTM", 1, False, False, 0, 0.0)


def test_backward_without_reserve_never_asks_the_planner(monkeypatch):
    called = []
    monkeypatch.setattr(ops, "plan", lambda *a, **k: called.append(k) or (True, "fused backward"))
    monkeypatch.setattr(ops, "_reference_backward", lambda *a: "reference")
    assert ops._rnn_backward_cuda(*_backward_args(torch.empty(0))) == "reference"
    assert called == []


def test_backward_asks_the_backward_planner_and_falls_back(monkeypatch):
    called = []
    monkeypatch.setattr(ops, "plan",
                        lambda *a, **k: called.append(k) or (False, "reference: no"))
    monkeypatch.setattr(ops, "_reference_backward", lambda *a: "reference")
    assert ops._rnn_backward_cuda(*_backward_args(torch.zeros(1, 5, 3, 36))) == "reference"
    assert called == [{"which": "backward"}]
