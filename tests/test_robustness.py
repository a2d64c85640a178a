"""The Python surface under adversarial use: bad arguments, threads, broken tables, tracing
and scripting tools, conversion of unusual modules, padding, torch.func.

Each test names the defect it guards against; on the CPU the paths are `native` (torch's
own) and `reference` (the custom op), and both must give torch's error or the same answer.
"""

import copy
import io
import json
import os
import pickle
import subprocess
import sys
import threading
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fused_rnn
from fused_rnn import dispatch, functional, policy
from helpers import make_pair, state_for

F64 = torch.float64
PATHS = ("native", "reference")


def _error(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the exception is what is compared
        return type(e), str(e)
    return None, None


# ------------------------------------------------------------- 1. functional arguments


def test_mismatched_cell_state_is_an_error_not_a_crash():
    """c0 of batch 1 beside h0 of batch 3 made torch._VF.lstm return a wrong c_n and then abort
    the process (free(): invalid next size); the reference broadcast c0. In a subprocess, so
    that a regression fails this test rather than killing the suite."""
    code = """
import torch, fused_rnn
m = torch.nn.LSTM(4, 6)
x, h, c = torch.randn(5, 3, 4), torch.randn(1, 3, 6), torch.randn(1, 1, 6)
for backend in (None, "native", "reference"):
    try:
        fused_rnn.functional.lstm(x, (h, c), m._flat_weights, True, 1, backend=backend)
        print("accepted", backend)
    except RuntimeError as e:
        print(e)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["Expected hidden[1] size (1, 3, 6), got [1, 1, 6]"] * 3


def _lstm_call(**change):
    """A valid functional.lstm call (L=2, bidirectional, biases), with `change` applied."""
    ref = nn.LSTM(4, 6, num_layers=2, bidirectional=True, dtype=F64)
    args = dict(input=torch.randn(5, 3, 4, dtype=F64),
                hx=(torch.randn(4, 3, 6, dtype=F64), torch.randn(4, 3, 6, dtype=F64)),
                weights=list(ref._flat_weights), has_biases=True, num_layers=2, dropout=0.0,
                train=False, bidirectional=True, batch_first=False)
    for key, value in change.items():
        args[key] = value(args) if callable(value) else value
    return args


BAD_CALLS = {
    # torch.nn's own messages (its forward's checks and its constructor's)
    "hidden batch": (dict(hx=lambda a: (a["hx"][0][:, :2], a["hx"][1][:, :2])),
                     RuntimeError, r"^Expected hidden\[0\] size \(4, 3, 6\), got \[4, 2, 6\]$"),
    "cell layers": (dict(hx=lambda a: (a["hx"][0], a["hx"][1][:2])),
                    RuntimeError, r"^Expected hidden\[1\] size \(4, 3, 6\), got \[2, 3, 6\]$"),
    "hidden rank": (dict(hx=lambda a: (a["hx"][0][0], a["hx"][1])),
                    RuntimeError, r"^Expected hidden\[0\] size \(4, 3, 6\), got \[3, 6\]$"),
    "one state": (dict(hx=lambda a: (a["hx"][0],)), RuntimeError, "lstm expects two hidden"),
    "input rank": (dict(input=lambda a: a["input"][0]), RuntimeError,
                   "^input must have 3 dimensions, got 2$"),
    "input size": (dict(input=lambda a: torch.randn(5, 3, 5, dtype=F64)), RuntimeError,
                   r"^input.size\(-1\) must be equal to input_size. Expected 4, got 5$"),
    "dropout 2": (dict(dropout=2.0, train=True), ValueError, r"dropout should be a number in "
                  r"range \[0, 1\]"),
    "dropout < 0": (dict(dropout=-0.1), ValueError, r"range \[0, 1\]"),
    "dropout bool": (dict(dropout=True), ValueError, r"range \[0, 1\]"),
    "layers 0": (dict(num_layers=0), ValueError, "^num_layers must be greater than zero$"),
    "proj for GRU": (None, ValueError, "proj_size argument is only supported for LSTM"),
    "proj too big": (dict(proj_size=6), ValueError, "proj_size has to be smaller than hidden"),
    "bias flag": (dict(has_biases=1), TypeError, "has_biases should be of type bool, got: int"),
    # ours, naming the argument (torch._VF reads out of bounds or gives cryptic errors)
    "one weight short": (dict(weights=lambda a: a["weights"][:-1]), ValueError,
                         r"expected 16 weights \(w_ih, w_hh, b_ih, b_hh per layer and "
                         r"direction, .*\), got 15"),
    "biases claimed missing": (dict(has_biases=False), ValueError, "expected 8 weights"),
    "too many layers": (dict(num_layers=3, hx=lambda a: tuple(torch.zeros(6, 3, 6, dtype=F64)
                                                               for _ in range(2))),
                        ValueError, "expected 24 weights"),
    "not bidirectional": (dict(bidirectional=False), ValueError, "expected 8 weights"),
    "w_ih columns": (dict(weights=lambda a: [a["weights"][0][:, :3]] + a["weights"][1:]),
                     ValueError, r"input_size|weight_ih_l0"),
    "w_hh shape": (dict(weights=lambda a: a["weights"][:1] + [a["weights"][1][:, :5]]
                        + a["weights"][2:]), ValueError,
                   r"weights\[1\] \(weight_hh_l0\) must have shape \(24, 6\), got \(24, 5\)"),
    "bias shape": (dict(weights=lambda a: a["weights"][:6] + [a["weights"][6][:-1]]
                        + a["weights"][7:]), ValueError,
                   r"weights\[6\] \(bias_ih_l0_reverse\) must have shape \(24,\), got \(23,\)"),
    "layer 1 input": (dict(weights=lambda a: a["weights"][:8] + [a["weights"][8][:, :6]]
                           + a["weights"][9:]), ValueError,
                      r"weights\[8\] \(weight_ih_l1\) must have shape \(24, 12\)"),
    "proj weights missing": (dict(proj_size=3), ValueError, r"expected 20 weights \(w_ih, w_hh, "
                             r"b_ih, b_hh, w_hr per layer"),
    "weights not tensors": (dict(weights=lambda a: a["weights"][:-1] + [None]), TypeError,
                            "weights must be a list of Tensors"),
    "backend name": (dict(backend="cudnn"), ValueError, r"^fused_rnn.functional.lstm: backend "
                     r"must be one of 'auto', 'fused', 'native', 'reference'; got 'cudnn'$"),
}


@pytest.mark.parametrize("backend", (None, *PATHS))
@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_functional_checks_every_argument_once(case, backend):
    change, exc, match = BAD_CALLS[case]
    if change is None:  # proj_size for a GRU
        ref = nn.GRU(4, 6, dtype=F64)
        with pytest.raises(exc, match=match):
            fused_rnn.functional.gru(torch.randn(5, 3, 4, dtype=F64),
                                     torch.zeros(1, 3, 6, dtype=F64), ref._flat_weights,
                                     proj_size=2, backend=backend)
        return
    args = _lstm_call(**change)
    args.setdefault("backend", backend)
    with pytest.raises(exc, match=match):
        fused_rnn.functional.lstm(**args)


def test_functional_hidden_errors_are_the_modules():
    """Where the module and the function take the same bad state, the same exception."""
    for mode in ("LSTM", "GRU", "RNN_TANH"):
        ref, _ = make_pair(mode, 4, 6, num_layers=2)
        x = torch.randn(5, 3, 4, dtype=F64)
        bad = state_for(ref, 2)
        fn = {"LSTM": functional.lstm, "GRU": functional.gru,
              "RNN_TANH": functional.rnn_tanh}[mode]
        want = _error(lambda: ref(x, bad))
        assert want[0] is RuntimeError
        for backend in (None, *PATHS):
            assert _error(lambda: fn(x, bad, ref._flat_weights, True, 2, backend=backend)) == want


@pytest.mark.parametrize("backend", (None, *PATHS))
def test_functional_hx_none_is_zeros(backend):
    ref, _ = make_pair("LSTM", 4, 6, num_layers=2, proj_size=3)
    x = torch.randn(5, 3, 4, dtype=F64)
    zeros = (torch.zeros(2, 3, 3, dtype=F64), torch.zeros(2, 3, 6, dtype=F64))
    got = functional.lstm(x, None, ref._flat_weights, True, 2, proj_size=3, backend=backend)
    want = functional.lstm(x, zeros, ref._flat_weights, True, 2, proj_size=3, backend=backend)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


# ----------------------------------------------------------------- 2. per-thread blocks


def test_backend_blocks_are_per_thread():
    """Thread A leaving its block popped thread B's entry (one process-wide stack)."""
    a_inside, b_inside, a_left = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def thread_a():
        with fused_rnn.backend("reference"):
            a_inside.set()
            b_inside.wait(10)
            seen["a"] = dispatch.requested()[0]
        a_left.set()

    def thread_b():
        a_inside.wait(10)
        with fused_rnn.backend("native"):
            b_inside.set()
            a_left.wait(10)
            seen["b"] = dispatch.requested()[0]
            seen["b_stack"] = dispatch.active()
        seen["b_after"] = dispatch.requested()[0]

    threads = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen == {"a": "reference", "b": "native", "b_stack": ("native",), "b_after": "auto"}
    assert dispatch.active() == ()


def test_a_block_does_not_reach_threads_it_starts():
    _, m = make_pair("GRU", 3, 4)
    x = torch.randn(5, 2, 3, dtype=F64)
    labels = []
    with fused_rnn.backend("reference"):
        m(x)
        labels.append(m.last_backend)
        t = threading.Thread(target=lambda: (m(x), labels.append(m.last_backend)))
        t.start()
        t.join(20)
    assert labels[0].startswith("reference: requested by fused_rnn.backend('reference')")
    assert labels[1].startswith("native: ")


# ------------------------------------------------------------- 3. crossover tables


def _valid_table(device):
    return {"format": 1, "device": device, "entries": [
        {"dtype": "bf16", "mode": "LSTM", "num_layers": 4, "hidden_size": 512,
         "bidirectional": False, "forward_max_batch": 7, "training_max_batch": 3}]}


def _entry_with(**change):
    e = dict(_valid_table("x")["entries"][0])
    for k, v in change.items():
        if v is KeyError:
            del e[k]
        else:
            e[k] = v
    return e


BAD_TABLES = {
    "bad json": "{not json",
    "not utf-8": b"\xff\xfe{",
    "a list": "[1, 2]",
    "format 2": json.dumps(dict(_valid_table("Fake GPU"), format=2)),
    "format true": json.dumps(dict(_valid_table("Fake GPU"), format=True)),
    "no device": json.dumps({"format": 1, "entries": []}),
    "negative batch": json.dumps(dict(_valid_table("Fake GPU"),
                                      entries=[_entry_with(forward_max_batch=-1)])),
    "boolean batch": json.dumps(dict(_valid_table("Fake GPU"),
                                     entries=[_entry_with(training_max_batch=True)])),
    "missing key": json.dumps(dict(_valid_table("Fake GPU"),
                                   entries=[_entry_with(hidden_size=KeyError)])),
    "zero layers": json.dumps(dict(_valid_table("Fake GPU"), entries=[_entry_with(num_layers=0)])),
    "nested too deep": "[" * 100000 + "]" * 100000,  # json.load: RecursionError
}


@pytest.mark.parametrize("case", list(BAD_TABLES))
def test_a_malformed_table_warns_once_and_is_ignored(tmp_path, case):
    content = BAD_TABLES[case]
    bad = tmp_path / "a-broken.json"
    (bad.write_bytes if isinstance(content, bytes) else bad.write_text)(content)
    (tmp_path / "other-gpu.json").write_text(json.dumps(_valid_table("Other GPU")))
    policy.tables.cache_clear()
    try:
        with pytest.warns(policy.CrossoverTableWarning, match="a-broken.json") as record:
            found = policy.tables(str(tmp_path))
        assert len(record) == 1
        assert sorted(found) == ["Other GPU"]  # the valid table beside it still counts
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # read once: no second warning, however it is named
            n, where = policy.max_batch_for("Fake GPU", "bf16", "LSTM", 4, 512, False, False,
                                            directory=str(tmp_path / "." / ""))
        assert (n, where) == (32, "the performance model's default; no calibrated table for "
                                  "Fake GPU")
    finally:
        policy.tables.cache_clear()


def test_a_second_table_for_a_device_is_ignored(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(_valid_table("Fake GPU")))
    second = _valid_table("Fake GPU")
    second["entries"][0]["forward_max_batch"] = 999
    (tmp_path / "b.json").write_text(json.dumps(second))
    policy.tables.cache_clear()
    try:
        with pytest.warns(policy.CrossoverTableWarning, match=r"b.json: .*a.json already covers "
                                                              r"'Fake GPU'"):
            found = policy.tables(str(tmp_path))
        assert found["Fake GPU"][1].endswith("a.json")
        assert policy.max_batch_for("Fake GPU", "bf16", "LSTM", 4, 512, False, False,
                                    directory=str(tmp_path))[0] == 7
    finally:
        policy.tables.cache_clear()


# --------------------------------------------- 4. torch.compile of a PackedSequence


@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("with_state", [False, True])
def test_compile_fullgraph_packed_input(mode, enforce_sorted, with_state):
    """fullgraph failed on a data-dependent guard (batch_sizes[0] against the state's batch)."""
    ref, m = make_pair(mode, 3, 4, dtype=torch.float32, num_layers=2, bidirectional=True)
    m.eval()
    lengths = [5, 3, 1] if enforce_sorted else [2, 5, 4]
    packed = pack_padded_sequence(torch.randn(5, 3, 3), lengths, enforce_sorted=enforce_sorted)
    hx = state_for(m, 3, dtype=torch.float32) if with_state else None
    torch._dynamo.reset()
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    out, h = compiled(packed, hx)
    assert m.last_backend.startswith("reference: ")
    out_ref, h_ref = ref.eval()(packed, hx)
    torch.testing.assert_close(pad_packed_sequence(out)[0], pad_packed_sequence(out_ref)[0])
    torch.testing.assert_close(h, h_ref)


def test_compile_fullgraph_packed_training_gradients():
    ref, m = make_pair("LSTM", 3, 4, dtype=torch.float32, num_layers=2)
    packed = pack_padded_sequence(torch.randn(6, 3, 3), [2, 6, 4], enforce_sorted=False)
    torch._dynamo.reset()
    out, (h, c) = torch.compile(m, fullgraph=True, backend="aot_eager")(packed)
    (out.data.sum() + h.sum() + c.sum()).backward()
    out_r, (h_r, c_r) = ref(packed)
    (out_r.data.sum() + h_r.sum() + c_r.sum()).backward()
    for p, q in zip(m.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


@pytest.mark.parametrize("known", ["sorted_indices", "state"])
def test_compiled_packed_batch_is_a_size_the_trace_knows(known):
    """Where the packed batch is also a size (the permutation's or the state's), that size is
    used: the batch limit of the dispatch (a CUDA call) is then an ordinary guard, not a
    batch the trace cannot know (which would take native)."""
    from fused_rnn.modules import _packed_batch

    enforce = known == "state"
    packed = pack_padded_sequence(torch.randn(5, 3, 2), [5, 3, 1] if enforce else [3, 5, 1],
                                  enforce_sorted=enforce)
    hx = torch.zeros(1, 3, 4) if known == "state" else None

    def f(x, packed, hx):
        return x + (1 if _packed_batch(packed, hx) > 2 else 2)  # a guard on the batch

    torch._dynamo.reset()
    assert torch.compile(f, fullgraph=True, backend="eager")(torch.zeros(1), packed, hx) == 1
    bad = torch.zeros(1, 2, 4)
    if known == "state":  # the two must agree when the graph runs
        torch._dynamo.reset()
        with pytest.raises(RuntimeError):
            torch.compile(f, fullgraph=True, backend="eager")(torch.zeros(1), packed, bad)


def test_compiled_module_recompiles_when_its_backend_is_set():
    """module.backend is checked when set (a property), and torch.compile still guards on it:
    a compiled call after a change takes the new path, not the traced one."""
    _, m = make_pair("GRU", 3, 4, dtype=torch.float32)
    x = torch.randn(5, 2, 3)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: m(x)[0], backend="eager")
    compiled(x)
    assert m.last_backend.startswith("reference: ")
    m.backend = "native"
    compiled(x)
    assert m.last_backend == "native: requested by the module's backend='native'"
    m.backend = None
    compiled(x)
    assert m.last_backend.startswith("reference: ")


def test_a_module_pickled_with_backend_in_its_dict_loads():
    """Before backend was a property, it lived in the instance's __dict__."""
    _, m = make_pair("GRU", 3, 4)
    state = dict(m.__getstate__() if hasattr(m, "__getstate__") else vars(m))
    state.pop("_backend", None)
    state["backend"] = "reference"
    old = fused_rnn.GRU.__new__(fused_rnn.GRU)
    old.__setstate__(state)
    assert old.backend == "reference"
    old(torch.randn(5, 2, 3, dtype=F64))
    assert old.last_backend.startswith("reference: requested by the module's backend")


# ------------------------------------------- 5. TorchScript, torch.fx, quantization


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(3, 5, num_layers=2)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        y, (h, c) = self.rnn(x)
        return self.head(y + h[-1] + c[-1])


def test_jit_script_scripts_torchs_module_with_the_same_parameters():
    """It failed (TorchScript read the fused class's annotations); it scripts what
    torch.jit.script(nn.LSTM) gives, on the same parameters."""
    ref, m = make_pair("LSTM", 3, 4, num_layers=2, bidirectional=True)
    scripted = torch.jit.script(m)
    assert scripted.original_name == "LSTM"
    assert scripted._c._method_names() == torch.jit.script(ref)._c._method_names()
    assert type(m) is fused_rnn.LSTM  # m itself keeps its class
    for (name, p), (name_s, q) in zip(m.named_parameters(), scripted.named_parameters()):
        assert name == name_s and p is q  # shared: training one trains the other


def test_jit_script_of_a_model_holding_a_fused_module():
    net = fused_rnn.convert(_Net().double())
    x = torch.randn(5, 2, 3, dtype=F64)
    want = net(x)
    scripted = torch.jit.script(net)
    torch.testing.assert_close(scripted(x), want, rtol=0, atol=0)
    # torch puts what __prepare_scriptable__ returned into the model itself: torch's module,
    # on the same parameters; the eager model still runs, and convert() makes it fused again
    assert type(net.rnn) is nn.LSTM
    torch.testing.assert_close(net(x), want, rtol=0, atol=0)
    assert type(fused_rnn.convert(net).rnn) is fused_rnn.LSTM


def test_fx_symbolic_trace_keeps_the_fused_module_a_leaf():
    net = fused_rnn.convert(_Net().double())
    gm = torch.fx.symbolic_trace(net)
    calls = [n for n in gm.graph.nodes if n.op == "call_module"]
    assert [n.target for n in calls] == ["rnn", "head"]
    x = torch.randn(5, 2, 3, dtype=F64)
    torch.testing.assert_close(gm(x), net(x), rtol=0, atol=0)
    assert gm.rnn is net.rnn and net.rnn.last_backend.startswith("native: ")
    with pytest.raises(torch.fx.proxy.TraceError, match="cannot be the root of torch.fx"):
        torch.fx.symbolic_trace(fused_rnn.GRU(3, 4))


def test_unconvert_for_quantize_dynamic():
    """quantize_dynamic matches exact types and silently skipped the fused modules: unconvert
    gives torch's classes back (same parameters), which it quantizes."""
    quantize_dynamic = pytest.importorskip("torch.ao.quantization").quantize_dynamic
    net = fused_rnn.convert(_Net())
    x = torch.randn(5, 2, 3)
    want = net(x)
    assert fused_rnn.unconvert(net) is net
    assert type(net.rnn) is nn.LSTM and "last_backend" not in vars(net.rnn)
    torch.testing.assert_close(net(x), want, rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        q = quantize_dynamic(net, {nn.LSTM}, dtype=torch.qint8)
    assert type(q.rnn).__module__.startswith("torch.ao.nn.quantized.dynamic")
    torch.testing.assert_close(q(x), want, rtol=0, atol=0.1)


# ---------------------------------------------------------------- 6. convert()


def test_convert_keeps_parametrizations():
    from torch.nn.utils import parametrize
    from torch.nn.utils.parametrizations import weight_norm

    class Drop(nn.Module):  # weight drop as a parametrization (identity in eval)
        def forward(self, w):
            return nn.functional.dropout(w, 0.3, self.training)

    net = _Net().double()
    weight_norm(net.rnn, "weight_ih_l0")
    parametrize.register_parametrization(net.rnn, "weight_hh_l0", Drop())
    net.eval()
    x = torch.randn(5, 2, 3, dtype=F64)
    want = net(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fused_rnn.ConversionWarning)
        fused_rnn.convert(net)
    assert isinstance(net.rnn, fused_rnn.LSTM) and parametrize.is_parametrized(net.rnn)
    assert parametrize.type_before_parametrizations(net.rnn) is fused_rnn.LSTM
    torch.testing.assert_close(net(x), want, rtol=0, atol=1e-12)
    with fused_rnn.backend("reference"):
        net.train()
        net(x).sum().backward()
    assert net.rnn.last_backend.startswith("reference: ")
    assert net.rnn.parametrizations.weight_ih_l0.original0.grad is not None
    assert net.rnn.parametrizations.weight_hh_l0.original.grad.abs().sum() > 0
    fused_rnn.unconvert(net)
    assert parametrize.type_before_parametrizations(net.rnn) is nn.LSTM
    parametrize.remove_parametrizations(net.rnn, "weight_hh_l0")
    parametrize.remove_parametrizations(net.rnn, "weight_ih_l0")
    assert type(net.rnn) is nn.LSTM


class UserLSTM(nn.LSTM):
    """A user's subclass: its own init and a forward that calls torch's through super()."""

    def reset_parameters(self):
        for p in self.parameters():
            nn.init.uniform_(p, -0.1, 0.1)

    def forward(self, x, hx=None):
        out, state = super().forward(x, hx)
        return out * 2, state


class InitGRU(nn.GRU):
    """A user's subclass that changes only the initialisation."""

    def reset_parameters(self):
        for p in self.parameters():
            nn.init.constant_(p, 0.05)


class _Holder(nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        return self.rnn(x)[0]


class _OtherHolder(_Holder):  # TorchScript compiles a class once: one per script call
    def forward(self, x):
        return self.rnn(x)[0]


def test_converted_subclass_scripts_as_the_users_class():
    """TorchScript is given the user's own class back: whatever it does with that class
    (torch 2.13 cannot script a subclass of nn.GRU at all), it does with the converted one."""
    plain = _Holder(InitGRU(3, 4)).double()
    net = fused_rnn.convert(_OtherHolder(InitGRU(3, 4)).double())
    assert isinstance(net.rnn, fused_rnn.GRU) and isinstance(net.rnn, InitGRU)
    want = _error(lambda: torch.jit.script(plain))
    got = _error(lambda: torch.jit.script(net))
    assert got == want
    if want[0] is None:
        x = torch.randn(5, 2, 3, dtype=F64)
        torch.testing.assert_close(torch.jit.script(net)(x), plain(x), rtol=0, atol=0)


class ClashingGRU(nn.GRU):
    backend = "mine"  # a name fused_rnn's modules use


class InstanceClashLSTM(nn.LSTM):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = "cudnn"  # its own attribute, of a name fused_rnn's modules use


class ReducingGRU(nn.GRU):
    def __reduce__(self):
        return (ReducingGRU, (3, 4))


def test_convert_user_subclasses_and_report_what_it_skips():
    net = nn.ModuleDict({"a": UserLSTM(3, 4, num_layers=2), "b": ClashingGRU(3, 4),
                         "c": nn.RNNBase("RNN_TANH", 3, 4), "d": nn.GRU(3, 4),
                         "e": InstanceClashLSTM(3, 4), "f": ReducingGRU(3, 4)}).double()
    x = torch.randn(5, 2, 3, dtype=F64)
    want = net["a"](x)[0]
    with pytest.warns(fused_rnn.ConversionWarning) as record:
        fused_rnn.convert(net)
    msg = str(record[0].message)
    assert "b: ClashingGRU defines backend" in msg and "c: RNNBase subclasses nn.RNNBase" in msg
    assert "e: InstanceClashLSTM has attributes backend" in msg
    assert "f: ReducingGRU defines __reduce__" in msg
    assert "a:" not in msg and "d:" not in msg
    assert type(net["e"]) is InstanceClashLSTM and type(net["f"]) is ReducingGRU
    net["e"](x)  # left as it was: it runs
    a = net["a"]
    assert isinstance(a, UserLSTM) and isinstance(a, fused_rnn.LSTM)
    assert type(a).__name__ == "UserLSTM" and type(net["d"]) is fused_rnn.GRU
    assert type(net["b"]) is ClashingGRU
    torch.testing.assert_close(a(x)[0], want, rtol=0, atol=1e-12)  # its forward, doubled
    with fused_rnn.backend("reference"):
        torch.testing.assert_close(a(x)[0], want, rtol=0, atol=1e-12)
    assert a.last_backend.startswith("reference: ")  # super().forward() is the fused one
    for clone in (pickle.loads(pickle.dumps(a)), copy.deepcopy(a)):
        assert type(clone) is type(a)
        torch.testing.assert_close(clone(x)[0], want, rtol=0, atol=1e-12)
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    assert type(torch.load(buf, weights_only=False)["a"]) is type(a)
    fused_rnn.unconvert(net)
    assert type(net["a"]) is UserLSTM and type(net["d"]) is nn.GRU


# ------------------------------------------------------------------- 7. lengths


BAD_LENGTHS = {
    "zero": ([5, 0, 2], RuntimeError, "Length of all samples has to be greater than 0"),
    "negative": ([5, -1, 2], RuntimeError, "Length of all samples has to be greater than 0"),
    "too long": ([6, 1, 2], RuntimeError, "at most the sequence length 5, but found an element "
                                          "in 'lengths' that is 6"),
    "count": ([5, 2], RuntimeError, r"Expected `len\(lengths\)` to be equal to batch_size, but "
                                    r"got 2 \(batch_size=3\)"),
    "2-D": ([[5], [2], [1]], ValueError, "lengths must be a 1-D tensor of integers, got a 2-D"),
    "float": ([5.0, 2.0, 1.0], ValueError, "lengths must be a 1-D tensor of integers"),
}


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("backend", (None, *PATHS))
@pytest.mark.parametrize("case", list(BAD_LENGTHS))
def test_bad_lengths_one_clear_error(case, backend, batch_first):
    values, exc, match = BAD_LENGTHS[case]
    ref, _ = make_pair("GRU", 2, 4)
    x = torch.randn(3, 5, 2, dtype=F64) if batch_first else torch.randn(5, 3, 2, dtype=F64)
    with pytest.raises(exc, match=match):
        functional.gru(x, torch.zeros(1, 3, 4, dtype=F64), ref._flat_weights,
                       batch_first=batch_first, lengths=torch.tensor(values), backend=backend)


# --------------------------------------------------------- 8. padding never reaches grads


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_nan_padding_never_reaches_gradients(mode, batch_first):
    ref, _ = make_pair(mode, 3, 4, num_layers=2, bidirectional=True)
    lengths = torch.tensor([2, 5, 4])
    x = torch.randn(5, 3, 3, dtype=F64)
    for b, n in enumerate(lengths.tolist()):
        x[n:, b] = float("nan")
    if batch_first:
        x = x.transpose(0, 1).contiguous()
    state = state_for(ref, 3)
    fn = {"LSTM": functional.lstm, "GRU": functional.gru, "RNN_TANH": functional.rnn_tanh}[mode]
    grads = {}
    for backend in PATHS:
        w = [p.detach().clone().requires_grad_() for p in ref._flat_weights]
        xi = x.clone().requires_grad_()
        out = fn(xi, state, w, True, 2, bidirectional=True, batch_first=batch_first,
                 lengths=lengths, backend=backend)
        sum(o.sum() for o in out).backward()
        grads[backend] = [xi.grad] + [p.grad for p in w]
        assert all(torch.isfinite(g).all() for g in grads[backend]), backend
        assert all(torch.isfinite(o).all() for o in out), backend
    for a, b in zip(*grads.values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_the_op_itself_ignores_nan_padding():
    """The custom op's contract: rows past a length never reach the weight gradients."""
    ref, _ = make_pair("LSTM", 3, 4)
    lengths = torch.tensor([2, 4])
    x = torch.randn(4, 2, 3, dtype=F64)
    x[2:, 0] = float("nan")
    w = [p.detach().clone().requires_grad_() for p in ref._flat_weights]
    h = torch.zeros(1, 2, 4, dtype=F64)
    out, hy, cy, _ = torch.ops.fused_rnn.rnn_forward(x, w, h, h, lengths, None, "LSTM", 1,
                                                     False, True, 0, 0.0, True)
    (out.sum() + hy.sum() + cy.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in w)


# ------------------------------------------------------------------ 9. torch.func


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_torch_func_grad_through_the_custom_op(mode):
    ref, m = make_pair(mode, 3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3, dtype=F64)
    params = {k: v.detach() for k, v in m.named_parameters()}

    def loss(p, x):
        out, _ = torch.func.functional_call(m, p, (x,))
        return (out * out).sum()

    with fused_rnn.backend("reference"):
        g, gx = torch.func.grad(loss, argnums=(0, 1))(params, x)
    assert m.last_backend.startswith("reference: ")
    xr = x.clone().requires_grad_()
    out, _ = ref(xr)
    (out * out).sum().backward()
    for name, p in ref.named_parameters():
        torch.testing.assert_close(g[name], p.grad, rtol=0, atol=1e-10)
    torch.testing.assert_close(gx, xr.grad, rtol=0, atol=1e-10)
    with fused_rnn.backend("reference"), pytest.raises(RuntimeError, match="double backward"):
        torch.func.grad(lambda x: torch.func.grad(loss, argnums=1)(params, x).sum())(x)
    f = lambda x: torch.func.functional_call(m, params, (x,))[0]  # noqa: E731
    t = torch.randn(5, 2, 8, dtype=F64)
    with fused_rnn.backend("reference"):
        (gx_vjp,) = torch.func.vjp(f, x)[1](t)
    (gx_ref,) = torch.autograd.grad(ref(xr)[0], xr, t)
    torch.testing.assert_close(gx_vjp, gx_ref, rtol=0, atol=1e-10)


def test_torch_func_forward_mode_through_the_custom_op_is_refused_not_wrong():
    """torch.func.jvp treated the op as a constant: a zero tangent, silently."""
    _, m = make_pair("GRU", 3, 4, num_layers=2)
    x = torch.randn(5, 2, 3, dtype=F64)
    params = {k: v.detach() for k, v in m.named_parameters()}
    f = lambda x: torch.func.functional_call(m, params, (x,))[0]  # noqa: E731
    with fused_rnn.backend("reference"):
        with pytest.raises(NotImplementedError, match="jvp"):
            torch.func.jvp(f, (x,), (torch.ones_like(x),))
        with pytest.raises(RuntimeError, match="vmap"):
            torch.func.vmap(f, in_dims=1, out_dims=1)(x.unsqueeze(1).repeat(1, 3, 1, 1))


# --------------------------------------------------- 10. FUSED_RNN_BACKEND, module.backend


def test_invalid_environment_value_is_reported_not_raised_by_backend_info():
    code = """
import warnings, torch
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    import fused_rnn
print(len([x for x in w if "FUSED_RNN_BACKEND" in str(x.message)]))
info = fused_rnn.backend_info(load=False)
print(info["backend"], "|", info["backend_error"])
m = fused_rnn.GRU(3, 4)
try:
    m(torch.randn(2, 1, 3))
except ValueError as e:
    print("raised:", e)
m.backend = "native"
m(torch.randn(2, 1, 3))
print(m.last_backend)
"""
    env = dict(os.environ, FUSED_RNN_BACKEND="garbage")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    bad = ("FUSED_RNN_BACKEND: backend must be one of 'auto', 'fused', 'native', 'reference'; "
           "got 'garbage'")
    assert lines == ["1", f"None | {bad}", f"raised: {bad}",
                     "native: requested by the module's backend='native'"]


# ---------------------------------------------------------- 11. messages, real reasons


def test_functional_request_names_the_function():
    ref, _ = make_pair("GRU", 3, 4)
    x = torch.randn(5, 2, 3, dtype=F64)
    with pytest.raises(RuntimeError, match=r"requested \(backend='fused' of "
                                           r"fused_rnn.functional.gru\) but cannot run"):
        functional.gru(x, torch.zeros(1, 2, 4, dtype=F64), ref._flat_weights, backend="fused")
    _, hy = functional.gru(x, torch.zeros(1, 2, 4, dtype=F64), ref._flat_weights,
                           backend="reference")
    out = functional.run("GRU", x, ref._flat_weights, torch.zeros(1, 2, 4, dtype=F64),
                         num_layers=1, backend="reference", caller="fused_rnn.functional.gru")
    assert out[3] == "reference: requested by backend='reference' of fused_rnn.functional.gru"


@pytest.mark.parametrize("how", ["module", "functional"])
def test_compile_fullgraph_names_why_the_call_left_the_graph(how):
    ref, m = make_pair("GRU", 3, 4, dtype=torch.float32)
    x = torch.randn(5, 2, 3)
    h = torch.zeros(1, 2, 4)
    w = list(ref._flat_weights)
    fn = m if how == "module" else (lambda x: functional.gru(x, h, w)[0])
    torch._dynamo.reset()
    with fused_rnn.backend("native"), pytest.raises(Exception) as info:
        torch.compile(fn, fullgraph=True, backend="eager")(x)
    msg = str(info.value)
    assert "fused_rnn: this call runs torch's own RNN implementation (native: requested by " \
           "fused_rnn.backend('native'))" in msg, msg
    assert "file an issue" not in msg.lower()
    torch._dynamo.reset()
    with fused_rnn.backend("native"):  # without fullgraph: a graph break, the same answer
        got = torch.compile(fn, backend="eager")(x)
    torch.testing.assert_close(got[0] if how == "module" else got,
                               (m(x)[0] if how == "module" else fn(x)))


# ------------------------------------------------------------------ 12. jit.trace


@pytest.mark.parametrize("backend", PATHS)
def test_jit_trace_passes_its_check_on_every_path(backend):
    ref, m = make_pair("LSTM", 3, 4, num_layers=2)
    x = torch.randn(5, 2, 3, dtype=F64)
    with fused_rnn.backend(backend), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(m, x)  # check_trace=True: traced twice, compared
    with torch.no_grad():
        torch.testing.assert_close(traced(x)[0], ref(x)[0], rtol=0, atol=1e-12)
    traced(x)[0].sum().backward()
    ref(x)[0].sum().backward()
    for p, q in zip(m.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-12)
