"""The modules are torch.nn's: constructor, parameters, state_dict, repr, errors, extras."""

import copy
import os
import io
import pickle

import pytest
import torch
from torch import nn

import fused_rnn
from helpers import make_pair, state_for

MODES = ("LSTM", "GRU", "RNN_TANH")


@pytest.mark.parametrize("mode", MODES)
def test_is_the_torch_class(mode):
    ref, fused = make_pair(mode, 3, 5, num_layers=2, bidirectional=True, dropout=0.1)
    assert isinstance(fused, type(ref))
    assert repr(fused) == repr(ref)
    assert list(fused.state_dict()) == list(ref.state_dict())
    assert [p.shape for p in fused.parameters()] == [p.shape for p in ref.parameters()]
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in ref.named_parameters()]


def test_constructor_checks_and_init_are_torchs():
    with pytest.raises(ValueError, match="hidden_size must be greater than zero"):
        fused_rnn.LSTM(3, 0)
    with pytest.raises(ValueError, match="proj_size has to be smaller than hidden_size"):
        fused_rnn.LSTM(3, 4, proj_size=4)
    with pytest.raises(ValueError, match="Unknown nonlinearity"):
        fused_rnn.RNN(3, 4, nonlinearity="gelu")
    torch.manual_seed(0)
    a = nn.GRU(3, 4, 2)
    torch.manual_seed(0)
    b = fused_rnn.GRU(3, 4, 2)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert fused_rnn.RNN(3, 4, nonlinearity="relu").mode == "RNN_RELU"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_input(mode, batch_first):
    ref, fused = make_pair(mode, 3, 5, num_layers=2, batch_first=batch_first)
    x = torch.randn(4, 3, dtype=torch.float64)
    for state in (None, state_for(ref, 1, batched=False)):
        o_r, h_r = ref(x, state)
        o_f, h_f = fused(x, state)
        torch.testing.assert_close(o_f, o_r, rtol=0, atol=1e-12)
        for a, b in zip(h_r if mode == "LSTM" else (h_r,), h_f if mode == "LSTM" else (h_f,)):
            assert a.shape == b.shape
            torch.testing.assert_close(b, a, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_batch_size_zero(mode):
    ref, fused = make_pair(mode, 3, 5, num_layers=2)
    x = torch.randn(4, 0, 3, dtype=torch.float64)
    o_r, h_r = ref(x)
    o_f, h_f = fused(x)
    assert o_f.shape == o_r.shape
    assert (h_f[0] if mode == "LSTM" else h_f).shape == (h_r[0] if mode == "LSTM" else h_r).shape


def _error(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - comparing torch's exception with ours
        return type(e), str(e)
    return None, None


BAD_INPUTS = {
    "rank4": lambda m, s: m(torch.randn(2, 3, 4, 1, dtype=torch.float64)),
    "rank1": lambda m, s: m(torch.randn(3, dtype=torch.float64)),
    "input_size": lambda m, s: m(torch.randn(5, 2, 4, dtype=torch.float64)),
    "seq_len_0": lambda m, s: m(torch.randn(0, 2, 3, dtype=torch.float64)),
    "dtype": lambda m, s: m(torch.randn(5, 2, 3, dtype=torch.float32)),
    "hidden_batch": lambda m, s: m(torch.randn(5, 2, 3, dtype=torch.float64), s(3)),
    "hidden_rank": lambda m, s: m(torch.randn(5, 2, 3, dtype=torch.float64), s(2, unbatch=True)),
    "unbatched_hidden_rank": lambda m, s: m(torch.randn(5, 3, dtype=torch.float64), s(1)),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_torchs_error(mode, case):
    ref, fused = make_pair(mode, 3, 5, num_layers=2)

    def state(batch, unbatch=False):
        return state_for(ref, batch, batched=not unbatch)

    want = _error(lambda: BAD_INPUTS[case](ref, state))
    got = _error(lambda: BAD_INPUTS[case](fused, state))
    assert want[0] is not None, "torch accepted the input; the case is wrong"
    assert got == want


def test_bad_hidden_size_lstm_cell_state():
    ref, fused = make_pair("LSTM", 3, 5)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    bad = (torch.zeros(1, 2, 5, dtype=torch.float64), torch.zeros(1, 2, 4, dtype=torch.float64))
    assert _error(lambda: fused(x, bad)) == _error(lambda: ref(x, bad))


def test_hidden_dtype_and_device_mismatch_is_torchs_error_or_a_clear_one():
    ref, fused = make_pair("GRU", 3, 5)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    bad = (torch.zeros(1, 2, 5, dtype=torch.float32),
           torch.zeros(1, 2, 5, dtype=torch.float64, device="meta"))
    for h in bad:  # native (the default here): whatever nn.GRU itself raises
        assert _error(lambda: fused(x, h)) == _error(lambda: ref(x, h))
        assert _error(lambda: ref(x, h))[0] is not None
    with fused_rnn.backend("reference"):
        with pytest.raises(RuntimeError, match="Input and hidden tensors are not the same dtype"):
            fused(x, bad[0])
        with pytest.raises(RuntimeError, match="not at the same device"):
            fused(x, bad[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
def test_lower_precision_dtypes(mode, dtype):
    """float32/16/bf16 run and stay close to the float64 result (fp32 accumulation)."""
    ref, fused = make_pair(mode, 6, 9, num_layers=2, bidirectional=True)
    fused = fused.to(dtype)
    x = torch.randn(7, 4, 6, dtype=torch.float64)
    o_ref, _ = ref(x)
    o, h = fused(x.to(dtype))
    assert o.dtype == dtype
    tol = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(o.double(), o_ref, rtol=0, atol=tol)
    o.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == dtype for p in fused.parameters())


@pytest.mark.parametrize("mode", MODES)
def test_last_backend_is_recorded(mode):
    _, fused = make_pair(mode, 3, 4)
    assert fused.last_backend is None and fused.last_backward_backend is None
    with torch.no_grad():
        fused(torch.randn(2, 1, 3, dtype=torch.float64))
    assert fused.last_backend.startswith("native: ")
    assert "CUDA" in fused.last_backend or "cuda" in fused.last_backend
    assert fused.last_backward_backend is None  # no gradient needed
    fused(torch.randn(2, 1, 3, dtype=torch.float64))
    assert fused.last_backward_backend.startswith("native: ")
    with fused_rnn.backend("reference"):
        fused(torch.randn(2, 1, 3, dtype=torch.float64))
    assert fused.last_backend == "reference: requested by fused_rnn.backend('reference')"
    assert fused.last_backward_backend.startswith("reference: ")


def _paths(module, x):
    """The path word of the module's forward label after one call."""
    module(x)
    return module.last_backend.split(":")[0]


def test_backend_context_module_setting_and_precedence(monkeypatch):
    from fused_rnn import dispatch

    _, m = make_pair("LSTM", 3, 4, num_layers=2)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    assert m.backend is None and _paths(m, x) == "native"
    m.backend = "reference"
    assert _paths(m, x) == "reference"
    assert "the module's backend='reference'" in m.last_backend
    with fused_rnn.backend("native"):  # the context wins over the module
        assert _paths(m, x) == "native"
        with fused_rnn.backend("reference"):  # innermost first
            assert _paths(m, x) == "reference"
        assert _paths(m, x) == "native"
    m.backend = None
    monkeypatch.setattr(dispatch, "_ENV_VALUE", "reference")  # FUSED_RNN_BACKEND=reference
    assert _paths(m, x) == "reference" and "FUSED_RNN_BACKEND=reference" in m.last_backend
    m.backend = "native"  # the module wins over the environment
    assert _paths(m, x) == "native"
    with fused_rnn.backend("auto"):  # an explicit auto: the CPU default
        assert _paths(m, x) == "native" and "CUDA-only" in m.last_backend
    with pytest.raises(RuntimeError):  # a context left by an exception is popped
        with fused_rnn.backend("reference"):
            raise RuntimeError("inside")
    assert dispatch.active() == ()


def test_backend_names_are_checked(monkeypatch):
    from fused_rnn import dispatch

    with pytest.raises(ValueError, match="backend must be one of 'auto', 'fused', 'native', "
                                         "'reference'; got 'cudnn'"):
        with fused_rnn.backend("cudnn"):
            pass
    _, m = make_pair("GRU", 3, 4)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="module.backend: backend must be one of"):
        m.backend = "fast"  # checked when set, whatever is active
    with fused_rnn.backend("native"), pytest.raises(ValueError, match="module.backend"):
        m.backend = "bogus"
    assert m.backend is None
    m.backend = None
    monkeypatch.setenv("FUSED_RNN_BACKEND", "kernel")
    with pytest.warns(UserWarning, match="FUSED_RNN_BACKEND: backend must be one of"):
        value, error = dispatch._read_env()  # what import reads
    monkeypatch.setattr(dispatch, "_ENV_VALUE", value)
    monkeypatch.setattr(dispatch, "_ENV_ERROR", error)
    with pytest.raises(ValueError, match="FUSED_RNN_BACKEND: backend must be one of"):
        m(x)


def test_environment_variable_is_read_at_import():
    import subprocess
    import sys

    code = ("import torch, fused_rnn; m = fused_rnn.GRU(3, 4); m(torch.randn(2, 1, 3)); "
            "print(m.last_backend)")
    env = dict(os.environ, FUSED_RNN_BACKEND="reference")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "reference: requested by FUSED_RNN_BACKEND=reference"


@pytest.mark.parametrize("how", ["context", "module", "functional"])
def test_asking_for_the_kernel_where_it_cannot_run_raises(how):
    """Never a silent fallback when the user asked for the fused kernel: the reason."""
    ref, m = make_pair("LSTM", 3, 4, num_layers=2)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    msg = r"fused_rnn: the fused kernel was requested \(.*\) but cannot run this call: " \
          r"input on cpu, the fused kernel is CUDA-only"
    with pytest.raises(RuntimeError, match=msg):
        if how == "context":
            with fused_rnn.backend("fused"):
                m(x)
        elif how == "module":
            m.backend = "fused"
            m(x)
        else:
            h = torch.zeros(2, 2, 4, dtype=torch.float64)
            fused_rnn.functional.lstm(x, (h, h), ref._flat_weights, True, 2, backend="fused")


def test_functional_paths_and_lengths_on_the_native_path():
    """functional.* takes the same decision; native with lengths packs as nn's modules do
    (zeros past each length, state at each length), equal to the reference's masking."""
    ref, _ = make_pair("LSTM", 3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    h = torch.randn(4, 3, 4, dtype=torch.float64)
    c = torch.randn(4, 3, 4, dtype=torch.float64)
    lengths = torch.tensor([4, 6, 1])
    w = ref._flat_weights
    native = fused_rnn.functional.lstm(x, (h, c), w, True, 2, bidirectional=True, lengths=lengths)
    refd = fused_rnn.functional.lstm(x, (h, c), w, True, 2, bidirectional=True, lengths=lengths,
                                     backend="reference")
    for a, b in zip(native, refd):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert native[0][4:, 0].abs().max() == 0 and native[0][1:, 2].abs().max() == 0
    plain = torch._VF.lstm(x, (h, c), w, True, 2, 0.0, False, True, False)
    for a, b in zip(fused_rnn.functional.lstm(x, (h, c), w, True, 2, bidirectional=True), plain):
        assert torch.equal(a, b)
    xb = x.transpose(0, 1)
    for a, b in zip(fused_rnn.functional.lstm(xb, (h, c), w, True, 2, bidirectional=True,
                                              batch_first=True, lengths=lengths),
                    fused_rnn.functional.lstm(xb, (h, c), w, True, 2, bidirectional=True,
                                              batch_first=True, lengths=lengths,
                                              backend="reference")):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_backend_info(monkeypatch):
    monkeypatch.delenv("FUSED_RNN_SYNC", raising=False)
    info = fused_rnn.backend_info()
    for key in ("cuda_available", "extension_loaded", "compiled_archs", "reason", "default_path",
                "sync"):
        assert key in info
    if not torch.cuda.is_available():
        assert info["extension_loaded"] is False
        assert info["reason"]
    # the forward kernel's synchronisation policy asked for now (read at every call)
    assert info["sync"] == "auto"
    for value, want in (("grid", "grid"), ("flags", "flags"), ("auto", "auto"), ("", "auto")):
        monkeypatch.setenv("FUSED_RNN_SYNC", value)
        assert fused_rnn.backend_info(load=False)["sync"] == want
    # the backward's thread-block cluster size asked for now
    monkeypatch.delenv("FUSED_RNN_CLUSTER", raising=False)
    assert fused_rnn.backend_info(load=False)["cluster"] == "auto"
    for value, want in (("4", "4"), ("1", "1"), ("", "auto")):
        monkeypatch.setenv("FUSED_RNN_CLUSTER", value)
        assert fused_rnn.backend_info(load=False)["cluster"] == want


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.LSTM(3, 5, num_layers=2, batch_first=True)
        self.blocks = nn.ModuleList([nn.GRU(5, 4), nn.RNN(4, 4, nonlinearity="relu")])
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        y, _ = self.enc(x)
        y, _ = self.blocks[0](y.transpose(0, 1))
        y, _ = self.blocks[1](y)
        return self.head(y)


def test_convert_swaps_in_place_and_keeps_weights():
    net = _Net().double()
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    expected = net(x)
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    ids = [id(m) for m in net.modules()]
    assert fused_rnn.convert(net) is net
    assert [id(m) for m in net.modules()] == ids
    assert type(net.enc) is fused_rnn.LSTM and isinstance(net.enc, nn.LSTM)
    assert type(net.blocks[0]) is fused_rnn.GRU and type(net.blocks[1]) is fused_rnn.RNN
    assert all(torch.equal(v, sd[k]) for k, v in net.state_dict().items())
    assert next(net.enc.parameters()).dtype == torch.float64
    torch.testing.assert_close(net(x), expected, rtol=0, atol=1e-12)
    assert net.enc.last_backend is not None
    # the top-level module itself is converted too
    solo = fused_rnn.convert(nn.LSTM(2, 3))
    assert type(solo) is fused_rnn.LSTM


def test_pickle_deepcopy_and_to():
    _, fused = make_pair("LSTM", 3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    expected = fused(x)[0]
    buf = io.BytesIO()
    torch.save(fused, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    for clone in (loaded, pickle.loads(pickle.dumps(fused)), copy.deepcopy(fused)):
        assert type(clone) is fused_rnn.LSTM
        torch.testing.assert_close(clone(x)[0], expected, rtol=0, atol=0)
    moved = copy.deepcopy(fused).to(torch.float32)
    assert moved(x.float())[0].dtype == torch.float32
    assert moved._flat_weights[0].dtype == torch.float32


def test_functional_api_matches_module():
    ref, _ = make_pair("LSTM", 3, 4, num_layers=2)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    h0 = state_for(ref, 2)
    out, hy, cy = fused_rnn.functional.lstm(x, h0, ref._flat_weights, True, 2)
    o_r, (h_r, c_r) = ref(x, h0)
    torch.testing.assert_close(out, o_r, rtol=0, atol=1e-12)
    torch.testing.assert_close(cy, c_r, rtol=0, atol=1e-12)
    g, _ = make_pair("GRU", 3, 4)
    out, hy = fused_rnn.functional.gru(x, torch.zeros(1, 2, 4, dtype=torch.float64),
                                       g._flat_weights)
    torch.testing.assert_close(out, g(x)[0], rtol=0, atol=1e-12)


def test_functional_lengths_mask_each_sequence():
    """Sequence b with length n: output rows past n are zero, h_n is the state at n-1."""
    g, _ = make_pair("GRU", 3, 4, bidirectional=True)
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 4])
    out, hy = fused_rnn.functional.gru(x, torch.zeros(2, 3, 4, dtype=torch.float64),
                                       g._flat_weights, bidirectional=True, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        o_b, h_b = g(x[:n, b:b + 1])
        torch.testing.assert_close(out[:n, b:b + 1], o_b, rtol=0, atol=1e-12)
        assert out[n:, b].abs().max() == 0 if n < 6 else True
        torch.testing.assert_close(hy[:, b:b + 1], h_b, rtol=0, atol=1e-12)


def test_autocast_cpu_follows_torch_policy():
    ref, fused = make_pair("LSTM", 3, 4, dtype=torch.float32)
    x = torch.randn(5, 2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o_r, _ = ref(x)
        o_f, _ = fused(x)
    assert o_f.dtype == o_r.dtype == torch.bfloat16
    torch.testing.assert_close(o_f.float(), o_r.float(), rtol=0, atol=3e-2)
    g_ref, g_fused = make_pair("GRU", 3, 4, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert g_fused(x)[0].dtype == g_ref(x)[0].dtype == torch.float32


@pytest.mark.parametrize("mode", MODES)
def test_packed_sorted_and_unsorted(mode):
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    ref, fused = make_pair(mode, 3, 5, num_layers=2, bidirectional=True)
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    for lengths, enforce in (([6, 4, 4, 1], True), ([2, 6, 1, 6], False)):
        packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce)
        (p_r, h_r), (p_f, h_f) = ref(packed), fused(packed)
        torch.testing.assert_close(pad_packed_sequence(p_f)[0], pad_packed_sequence(p_r)[0],
                                   rtol=0, atol=1e-12)
        torch.testing.assert_close(h_f, h_r, rtol=0, atol=1e-12)
