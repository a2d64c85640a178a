"""Dropout masks: Philox bit-exactness (PyTorch vs C++), torch's semantics, reproducibility.

The module tests here are about the Philox masks, which the fused kernel and the
reference stack draw: they run on the reference path (a CPU's default, native, draws
torch's own masks; tests/test_parity.py checks those against nn bit for bit).
"""

import os
import shutil
import subprocess

import pytest
import torch
from torch import nn

import fused_rnn
from fused_rnn import dropout as drop
from helpers import make_pair

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _reference_path():
    with fused_rnn.backend("reference"):
        yield


def test_philox_known_answers():
    """Random123's published known-answer vectors for philox4x32-10."""
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ]
    for ctr, key, want in cases:
        t = [torch.tensor(v, dtype=torch.int64) for v in ctr + key]
        assert tuple(int(w) for w in drop.philox4x32_10(*t)) == want


_HOST_PROGRAM = r"""
#include "kernels/philox.cuh"
#include <cstdio>
#include <cstdlib>
int main(int argc, char** argv) {
  // seed layer p T B H D: print one line of 0/1 per (d, t, b), j = 0..H-1
  unsigned long long seed = strtoull(argv[1], nullptr, 10);
  int layer = atoi(argv[2]); double p = atof(argv[3]);
  int T = atoi(argv[4]), B = atoi(argv[5]), H = atoi(argv[6]), D = atoi(argv[7]);
  unsigned long long thr = fused_rnn::dropout_threshold(p);
  printf("%llu\n", thr);
  for (int t = 0; t < T; ++t) for (int b = 0; b < B; ++b) for (int d = 0; d < D; ++d) {
    for (int j = 0; j < H; ++j)
      putchar(fused_rnn::dropout_keep(seed, thr, layer, d, t, b, j) ? '1' : '0');
    putchar('\n');
  }
  return 0;
}
"""


@pytest.fixture(scope="module")
def host_philox(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    d = tmp_path_factory.mktemp("philox")
    src, exe = d / "philox_host.cpp", d / "philox_host"
    src.write_text(_HOST_PROGRAM)
    subprocess.run([cxx, "-std=c++17", "-O2", "-Wall", "-Werror", f"-I{ROOT}/csrc", str(src),
                    "-o", str(exe)], check=True)
    return exe


@pytest.mark.parametrize("seed,layer,p,T,B,H,D", [
    (0, 0, 0.5, 3, 2, 13, 1),
    (2**62 - 1, 2, 0.2, 4, 3, 7, 2),
    (123456789012345, 1, 0.9, 2, 5, 33, 2),
    (-1, 0, 0.3, 2, 2, 5, 1),  # negative seeds use the same 64-bit pattern
    (77, 3, 0.0, 2, 2, 6, 1),
    (77, 3, 1.0, 2, 2, 6, 1),
])
def test_philox_pytorch_equals_cpp(host_philox, seed, layer, p, T, B, H, D):
    out = subprocess.run([str(host_philox), str(seed % 2**64), str(layer), repr(p), str(T),
                          str(B), str(H), str(D)], check=True, capture_output=True,
                         text=True).stdout.split()
    assert int(out[0]) == drop.dropout_threshold(p)
    cpp = torch.tensor([[c == "1" for c in line] for line in out[1:]])
    mask = drop.keep_mask(torch.tensor(seed, dtype=torch.int64), layer, p, T, B, H, D)
    assert torch.equal(mask.reshape(T * B * D, H), cpp)


def test_mask_statistics_and_independence():
    seed = torch.tensor(42)
    m = drop.keep_mask(seed, 0, 0.25, 64, 16, 100, 2).double()
    assert abs(m.mean().item() - 0.75) < 0.01
    other = drop.keep_mask(seed, 1, 0.25, 64, 16, 100, 2).double()
    assert (m != other).double().mean() > 0.3  # layers get different masks
    # directions and timesteps differ too
    assert not torch.equal(m[..., :100], m[..., 100:])
    assert not torch.equal(m[0], m[1])


def _dropped_stack(ref_layers, x, seed, p, D):
    """Expected stack: torch.nn single layers with our mask between them."""
    y = x
    for i, layer in enumerate(ref_layers):
        y, _ = layer(y)
        if i < len(ref_layers) - 1:
            y = drop.apply_dropout(y, seed, i, p, D)
    return y


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
@pytest.mark.parametrize("bidir", [False, True])
def test_dropout_semantics_match_torch(mode, bidir):
    """Output of every layer but the last, scaled by 1/(1-p), training only, h_n untouched."""
    L, p, D = 3, 0.4, 2 if bidir else 1
    ref, fused = make_pair(mode, 4, 5, num_layers=L, dropout=p, bidirectional=bidir)
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    layers = []
    for i in range(L):
        _, single = make_pair(mode, 4 if i == 0 else 5 * D, 5, bidirectional=bidir)
        single.load_state_dict({k.replace(f"_l{i}", "_l0"): v for k, v in ref.state_dict().items()
                                if k.endswith(f"_l{i}") or k.endswith(f"_l{i}_reverse")})
        layers.append(single)
    fused.train()
    torch.manual_seed(7)
    out, hidden = fused(x)
    torch.manual_seed(7)
    seed = drop.draw_seed(x.device)
    torch.testing.assert_close(out, _dropped_stack(layers, x, seed, p, D), rtol=0, atol=1e-12)
    # h_n of the last layer is its last output (never dropped); lower layers' h_n too
    h = hidden[0] if mode == "LSTM" else hidden
    last = out[-1, :, :5]
    torch.testing.assert_close(h[(L - 1) * D], last, rtol=0, atol=1e-12)
    # eval: no dropout, equals torch.nn exactly
    fused.eval()
    ref.eval()
    torch.testing.assert_close(fused(x)[0], ref(x)[0], rtol=0, atol=1e-12)


def test_dropout_changes_output_and_reproduces_under_manual_seed():
    _, fused = make_pair("LSTM", 4, 6, num_layers=3, dropout=0.5)
    fused.train()
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    torch.manual_seed(3)
    a = fused(x)[0]
    b = fused(x)[0]
    torch.manual_seed(3)
    c = fused(x)[0]
    assert not torch.equal(a, b)
    assert torch.equal(a, c)


def test_dropout_p1_gives_zero_input_to_upper_layers():
    _, fused = make_pair("GRU", 4, 6, num_layers=2, dropout=1.0)
    fused.train()
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    out = fused(x)[0]
    # the top layer sees zeros: same as running it on a zero input
    top = nn.GRU(6, 6, dtype=torch.float64)
    top.load_state_dict({k.replace("_l1", "_l0"): v for k, v in fused.state_dict().items()
                         if k.endswith("_l1")})
    torch.testing.assert_close(out, top(torch.zeros(5, 2, 6, dtype=torch.float64))[0])
    assert torch.isfinite(out).all()


def test_dropout_gradients_use_the_same_mask():
    """Backward regenerates the mask from the saved seed: gradients match the explicit stack."""
    L, p = 2, 0.3
    ref, fused = make_pair("LSTM", 3, 4, num_layers=L, dropout=p)
    l0, l1 = nn.LSTM(3, 4, dtype=torch.float64), nn.LSTM(4, 4, dtype=torch.float64)
    l0.load_state_dict({k[:-1] + "0": v for k, v in ref.state_dict().items() if k.endswith("l0")})
    l1.load_state_dict({k[:-1] + "0": v for k, v in ref.state_dict().items() if k.endswith("l1")})
    fused.train()
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(11)
    out = fused(x)[0]
    torch.manual_seed(11)
    seed = drop.draw_seed(x.device)
    expect = _dropped_stack([l0, l1], x, seed, p, 1)
    cot = torch.randn_like(out)
    g1 = torch.autograd.grad(out, [x, *fused.parameters()], cot)
    g2 = torch.autograd.grad(expect, [x, *l0.parameters(), *l1.parameters()], cot)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_seed_is_drawn_on_the_input_device_without_host_sync():
    s = drop.draw_seed(torch.device("cpu"))
    assert s.dtype == torch.int64 and s.dim() == 0 and 0 <= int(s) < 2**62


def test_single_layer_ignores_dropout():
    ref, fused = make_pair("GRU", 3, 4, num_layers=1)
    fused.dropout = 0.5
    fused.train()
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(fused(x)[0], ref(x)[0], rtol=0, atol=1e-12)


def test_module_dropout_zero_in_eval_even_if_set():
    fused = fused_rnn.LSTM(3, 4, num_layers=2, dropout=0.5).double().eval()
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    assert torch.equal(fused(x)[0], fused(x)[0])
