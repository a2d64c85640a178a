"""fused_rnn.dispatch.decide on CUDA calls, with the extension and the device faked.

Every call the kernel does not cover goes native with the planner's reason; a
covered call goes fused up to the crossover batch (a calibrated table, or the
performance model's default) and native above it; asking for the kernel where
it cannot run raises. No GPU needed: decide() reads only the device, dtype,
shape and options, and asks the (faked) planners.
"""

import json

import pytest
import torch

import fused_rnn
from fused_rnn import dispatch, ops, policy

CUDA = torch.device("cuda", 0)
DEVICE_NAME = "Fake GPU 132SM"


class FakeExt:
    """The planners of fused_rnn._C: yes unless a rule says no."""

    def __init__(self, forward_no=None, backward_no=None, tf32=True):
        self.forward_no, self.backward_no, self.tf32 = forward_no, backward_no, tf32
        self.calls = []

    def _answer(self, which, rule, args):
        self.calls.append((which, args))
        mode, L, bidir, bias, proj, I, H, B, T, dtype = args[:10]
        if proj > 0:
            return False, "proj_size > 0 is not covered by the fused kernel yet"
        why = rule(*args) if rule else None
        if why:
            return False, why
        return True, f"fused{'' if which == 'forward' else ' backward'}: fake {mode} B={B} T={T}"

    def plan(self, *args):
        return self._answer("forward", self.forward_no, args)

    def plan_backward(self, *args):
        return self._answer("backward", self.backward_no, args)

    def fp32_uses_tf32(self):
        return self.tf32


@pytest.fixture
def ext(monkeypatch, tmp_path):
    fake = FakeExt()
    monkeypatch.setattr(ops, "load_extension", lambda: fake)
    monkeypatch.setattr("fused_rnn._build.load_extension", lambda: fake)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: DEVICE_NAME)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(policy, "TABLE_DIR", str(tmp_path / "no-tables"))
    monkeypatch.setattr(dispatch, "_ENV_VALUE", None)
    policy.tables.cache_clear()
    yield fake
    policy.tables.cache_clear()


def decide(mode="LSTM", dtype=torch.bfloat16, T=64, B=8, I=512, H=512, **kw):
    opts = dict(num_layers=4, bidirectional=False, has_biases=True, proj_size=0, dropout=0.0,
                need_grad=False, has_lengths=False)
    opts.update(kw)
    return dispatch.decide(mode, CUDA, dtype, T, B, I, H, **opts)


def test_covered_below_the_default_crossover_runs_fused(ext):
    d = decide(B=8)
    assert d.path == "fused" and d.forward == "fused: fake LSTM B=8 T=64" and d.backward is None
    assert [c[0] for c in ext.calls] == ["forward"]  # no gradient: the backward is not asked


def test_training_asks_both_planners_and_labels_both(ext):
    d = decide(B=4, need_grad=True)
    assert d.path == "fused"
    assert d.backward == "fused backward: fake LSTM B=4 T=64"
    assert [c[0] for c in ext.calls] == ["forward", "backward"]


@pytest.mark.parametrize("case,why", [
    (dict(proj_size=128), "native: proj_size > 0 is not covered"),
    (dict(dtype=torch.float64), "native: torch.float64 is not covered by the fused kernel"),
])
def test_uncovered_calls_go_native_with_the_reason(ext, case, why):
    for need_grad in (False, True):
        d = decide(need_grad=need_grad, **case)
        assert d.path == "native" and d.forward.startswith(why), d.forward
        want_bwd = "native: torch's autograd (cuDNN's backward, as nn.LSTM)"
        assert d.backward == (want_bwd if need_grad else None)


def test_planner_rejections_go_native(ext):
    ext.forward_no = lambda *a: "weights need 300.0 KB of shared memory per CTA"
    d = decide()
    assert d.path == "native" and d.forward == "native: weights need 300.0 KB of shared memory per CTA"
    ext.forward_no = None
    ext.backward_no = lambda *a: "backward weights do not fit"
    assert decide().path == "fused"  # inference needs no backward
    d = decide(need_grad=True)  # training: both directions or neither
    assert d.path == "native"
    assert d.forward == "native: the fused backward cannot run it: backward weights do not fit"


def test_missing_extension_goes_native(monkeypatch, ext):
    monkeypatch.setattr(ops, "load_extension", lambda: None)
    d = decide()
    assert d.path == "native" and d.forward.startswith("native: CUDA extension unavailable")


@pytest.mark.parametrize("dtype,L,H,bidir,fwd,train", [
    (torch.bfloat16, 4, 512, False, 32, 16),
    (torch.float16, 4, 256, False, 32, 16),
    (torch.bfloat16, 3, 512, False, 16, 8),
    (torch.float32, 4, 256, False, 16, 8),  # TF32 (the fake extension says so)
    (torch.bfloat16, 2, 512, False, 0, 0),  # the model gives L=2 no 1.5x margin
    (torch.bfloat16, 4, 128, False, 0, 0),  # H < 256: cuDNN may run persistent kernels
    (torch.bfloat16, 4, 1024, False, 0, 0),  # outside the modelled range
    (torch.bfloat16, 4, 512, True, 0, 0),  # bidirectional: outside the model
])
def test_default_crossover_from_the_model(ext, dtype, L, H, bidir, fwd, train):
    for need_grad, limit in ((False, fwd), (True, train)):
        if limit:
            assert decide(dtype=dtype, num_layers=L, H=H, I=H, bidirectional=bidir, B=limit,
                          need_grad=need_grad).path == "fused"
        d = decide(dtype=dtype, num_layers=L, H=H, I=H, bidirectional=bidir, B=limit + 1,
                   need_grad=need_grad)
        assert d.path == "native", d
        assert d.forward.startswith(f"native: batch {limit + 1} is above {limit}, the largest where")
        assert "performance model's default; no calibrated table for Fake GPU 132SM" in d.forward


def test_exact_fp32_never_goes_fused_by_default(ext):
    ext.tf32 = False
    d = decide(dtype=torch.float32, B=1, H=256, I=256)
    assert d.path == "native" and "above 0" in d.forward


def _write_table(directory, entries):
    directory.mkdir(exist_ok=True)
    table = {"format": 1, "device": DEVICE_NAME, "capability": [9, 0], "sm_count": 132,
             "entries": entries}
    (directory / f"{policy.device_slug(DEVICE_NAME)}.json").write_text(json.dumps(table))
    policy.tables.cache_clear()


def _entry(L, H, fwd, train, dtype="bf16", mode="LSTM"):
    return {"dtype": dtype, "mode": mode, "num_layers": L, "hidden_size": H,
            "bidirectional": False, "forward_max_batch": fwd, "training_max_batch": train}


def test_calibrated_table_and_its_conservative_neighbours(monkeypatch, ext, tmp_path):
    tables = tmp_path / "tables"
    _write_table(tables, [_entry(4, 512, 128, 64), _entry(2, 512, 8, 0), _entry(4, 256, 256, 128)])
    monkeypatch.setattr(policy, "TABLE_DIR", str(tables))
    d = decide(B=128)
    assert d.path == "fused"
    d = decide(B=129)
    assert d.path == "native"
    assert "calibrated on Fake GPU 132SM, bf16 LSTM L=4 H=512" in d.forward
    assert decide(B=64, need_grad=True).path == "fused"
    assert decide(B=65, need_grad=True).path == "native"
    # L=3 takes L=2's numbers (fewer layers: a smaller win), H=384 takes H=512's
    assert decide(num_layers=3, H=384, I=384, B=8).path == "fused"
    assert decide(num_layers=3, H=384, I=384, B=9).path == "native"
    assert decide(num_layers=2, B=1, need_grad=True).path == "native"  # 0: never in training
    # no neighbour (L=1, or H wider than every entry, or another dtype): never fused
    for kw in (dict(num_layers=1), dict(H=1024, I=1024), dict(dtype=torch.float16)):
        d = decide(B=1, **kw)
        assert d.path == "native" and "no entry near this shape" in d.forward, (kw, d)


def test_inside_cuda_graph_capture_the_graphed_crossover_applies(monkeypatch, ext, tmp_path):
    """While the current stream captures a CUDA graph cuDNN pays no launch overhead: auto
    takes the table's graphed crossover; a table without one (format 1 before the graphed
    fields) gives the eager numbers there and says so."""
    tables = tmp_path / "tables"
    graphed = dict(_entry(4, 512, 128, 64), graphed_forward_max_batch=16, graphed_training_max_batch=0)
    _write_table(tables, [graphed, _entry(2, 512, 8, 4)])
    monkeypatch.setattr(policy, "TABLE_DIR", str(tables))
    assert dispatch.capturing() is False  # this torch has no CUDA: never capturing
    assert decide(B=64).path == "fused" and decide(B=32, need_grad=True).path == "fused"
    monkeypatch.setattr(dispatch, "capturing", lambda: True)
    assert decide(B=16).path == "fused" and decide(B=17).path == "native"
    d = decide(B=17)
    assert "calibrated on Fake GPU 132SM, bf16 LSTM L=4 H=512" in d.forward
    assert "against cuDNN in a CUDA graph" in d.forward
    assert decide(B=1, need_grad=True).path == "native"  # graphed training: 0, never fused
    d = decide(num_layers=2, B=8)  # no graphed fields: the eager crossover, said so
    assert d.path == "fused"
    d = decide(num_layers=2, B=9)
    assert d.path == "native" and "measured against eager cuDNN" in d.forward
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="graphed_forward_max_batch"):
            policy.check_table({"format": 1, "device": "x", "entries": [
                dict(_entry(4, 512, 8, 4), graphed_forward_max_batch=bad)]})


def test_malformed_table_is_ignored_with_a_warning(monkeypatch, ext, tmp_path):
    tables = tmp_path / "bad"
    _write_table(tables, [{"dtype": "bf16", "mode": "LSTM"}])
    monkeypatch.setattr(policy, "TABLE_DIR", str(tables))
    with pytest.warns(policy.CrossoverTableWarning, match="entry 0 is malformed"):
        d = decide()
    assert d.path == "fused" and "performance model's default" not in d.forward
    assert decide(B=33).path == "native"  # the model's default limit (32): the table is out
    assert "the performance model's default" in decide(B=33).forward


def test_asking_for_fused_overrides_the_crossover_but_not_coverage(ext):
    with fused_rnn.backend("fused"):
        d = decide(B=4096)
        assert d.path == "fused" and d.forward == "fused: fake LSTM B=4096 T=64"
        with pytest.raises(RuntimeError, match=r"requested \(fused_rnn.backend\('fused'\)\) but "
                                               r"cannot run this call: proj_size > 0"):
            decide(proj_size=16)
        ext.backward_no = lambda *a: "backward weights do not fit"
        with pytest.raises(RuntimeError, match="the fused backward cannot run it"):
            decide(need_grad=True)


@pytest.mark.parametrize("want", ["native", "reference"])
def test_asking_for_native_or_reference_never_asks_the_planner(ext, want):
    with fused_rnn.backend(want):
        d = decide(need_grad=True)
    assert d.path == want and d.forward == f"{want}: requested by fused_rnn.backend('{want}')"
    assert d.backward.startswith(f"{want}: ")
    assert ext.calls == []


def test_decision_traces_under_torch_compile(ext):
    """Inside torch.compile the planners and the table are read once while tracing
    (constants), the batch limit is a guard on the (possibly symbolic) batch."""

    def f(x):
        d = dispatch.decide("LSTM", CUDA, torch.bfloat16, x.shape[0], x.shape[1], 512, 512,
                            num_layers=4)
        return x + (1 if d.path == "fused" else 2)

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, dynamic=True, backend="eager")
    for B, want in ((1, 2.0), (32, 2.0), (33, 3.0), (7, 2.0), (600, 3.0)):
        assert compiled(torch.ones(3, B))[0, 0].item() == want, B
    # the planner was asked with T = B = 1 while tracing: its answer does not depend on them
    assert all(c[1][7:9] == (1, 1) for c in ext.calls), ext.calls


def test_compile_tracing_never_asks_whether_a_capture_is_under_way(ext, monkeypatch):
    """torch.compile decides while tracing, before any capture: the eager crossover, and
    is_current_stream_capturing is never traced."""
    def capturing():
        raise AssertionError("asked while tracing")
    monkeypatch.setattr(dispatch, "capturing", capturing)

    def f(x):
        d = dispatch.decide("LSTM", CUDA, torch.bfloat16, x.shape[0], x.shape[1], 512, 512,
                            num_layers=4)
        return x + (1 if d.path == "fused" else 2)

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="eager")
    assert compiled(torch.ones(3, 8))[0, 0].item() == 2.0


def test_decision_with_a_batch_the_trace_cannot_know(ext):
    """A PackedSequence's batch is batch_sizes[0], a value inside torch.compile: the batch
    limit cannot be a guard on it, so the call takes native (never slower than cuDNN)
    instead of failing the trace on a data-dependent guard."""

    def f(x, batch_sizes):
        d = dispatch.decide("LSTM", CUDA, torch.bfloat16, 5, int(batch_sizes[0]), 512, 512,
                            num_layers=4)
        return x + (1 if d.path == "fused" else 2)

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="eager")
    assert compiled(torch.ones(3), torch.tensor([4, 2]))[0].item() == 3.0


def test_streamed_backward_runs_fused_under_auto_only_where_measured(monkeypatch, ext, tmp_path):
    """A backward plan that streams part of its weights from L2 (fp32 L=4 H=512) is not
    what the performance model prices: auto keeps cuDNN for its training calls until a
    calibrated table measured the shape; asked for, the kernel runs it; inference and
    plans that hold their weights are unchanged."""
    streamed = "fused backward: fake; weights in shared memory (96.0 KB of 256.0 KB, the " \
        "rest, 160.0 KB per CTA per step, streamed from L2)"
    ext.plan_backward = lambda *a: (True, streamed)
    kw = dict(dtype=torch.float32, B=4)
    assert decide(**kw).path == "fused"  # the model's TF32 L=4 default (16) for inference
    d = decide(need_grad=True, **kw)
    assert d.path == "native", d
    assert "the performance model does not price a fused backward that streams" in d.forward
    monkeypatch.setattr(dispatch, "_ENV_VALUE", "fused")
    d = decide(need_grad=True, **kw)
    assert d.path == "fused" and d.backward == streamed
    monkeypatch.setattr(dispatch, "_ENV_VALUE", None)
    # a calibrated table's number stands: it measured the kernel on the device
    tables = tmp_path / "tables"
    _write_table(tables, [_entry(4, 512, 32, 8, dtype="tf32"), _entry(2, 512, 32, 8, dtype="tf32")])
    monkeypatch.setattr(policy, "TABLE_DIR", str(tables))
    policy.tables.cache_clear()
    assert decide(need_grad=True, **kw).path == "fused"
    assert decide(need_grad=True, dtype=torch.float32, B=9).path == "native"
    # ... of this very shape: L=3 would take L=2's entry, H=384 H=512's -- not when streamed
    for other in (dict(num_layers=3), dict(H=384, I=384)):
        assert decide(**other, **kw).path == "fused"  # inference: the neighbour's number
        d = decide(need_grad=True, **other, **kw)
        assert d.path == "native" and "takes no neighbour's number" in d.forward, d
    # without streaming, the model's default as before
    monkeypatch.setattr(policy, "TABLE_DIR", str(tmp_path / "none"))
    policy.tables.cache_clear()
    ext.plan_backward = FakeExt().plan_backward
    assert decide(need_grad=True, **kw).path == "fused"
