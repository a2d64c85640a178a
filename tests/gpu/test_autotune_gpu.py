"""Autotuning on the GPU: the first call of a key measures fused against cuDNN on scratch
tensors (and checks the fused result on a device the GPU tests have not covered), later
calls of the key read the cache; the user's RNG stream and results are untouched.
Prints the first call's cost (scripts/gpu_check.sh keeps the output)."""

import time

import pytest
import torch

import fused_rnn
from fused_rnn import tuning

pytestmark = pytest.mark.gpu


@pytest.fixture
def autotuning(tmp_path):
    previous = fused_rnn.autotune("on", cache_dir=str(tmp_path))
    tuning.clear()
    with fused_rnn.backend("auto"):  # inside the GPU tests' fused block: auto again
        yield tmp_path
    fused_rnn.autotune(**previous)
    tuning.clear()


def _timed(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, 1e3 * (time.perf_counter() - t0)


@pytest.mark.parametrize("verified", [True, False], ids=["as-is", "unverified"])
@pytest.mark.parametrize("train", [False, True])
def test_first_call_measures_then_the_cache_decides(autotuning, train, verified, monkeypatch):
    if not verified:  # the first-use check runs (fused vs cuDNN vs cuDNN in float64)
        monkeypatch.setattr(tuning, "VERIFIED_DEVICES", frozenset())
    torch.manual_seed(0)
    m = fused_rnn.LSTM(256, 256, num_layers=2, device="cuda", dtype=torch.bfloat16).train(train)
    x = torch.randn(64, 8, 256, device="cuda", dtype=torch.bfloat16, requires_grad=train)
    state = torch.cuda.get_rng_state()
    (out, _), first_ms = _timed(lambda: m(x))
    assert torch.equal(torch.cuda.get_rng_state(), state)  # dropout 0: nothing drawn
    assert "autotuned on" in m.last_backend and "measured now" in m.last_backend
    info = fused_rnn.backend_info()["autotune"]
    (key, record), = info["entries"].items()
    assert key == f"LSTM bf16 {'train' if train else 'infer'} L=2 H=256 I=256 uni T<=64 B<=8 eager"
    assert record["check"]["ok"], record["check"]
    if not verified:
        assert "within 2 x native's error" in record["check"]["detail"]
    assert record["fused_ms"] > 0 and record["native_ms"] > 0
    (again, _), second_ms = _timed(lambda: m(x))
    assert "cached" in m.last_backend and len(fused_rnn.backend_info()["autotune"]["entries"]) == 1
    assert torch.equal(out, again)  # the same path, the same answer
    with fused_rnn.backend(record["choice"]):
        assert torch.equal(m(x)[0], out)
    if train:
        out.float().sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
    print(f"\nautotune {key}: first call {first_ms:.1f} ms (measurement included), next "
          f"{second_ms:.2f} ms; fused {record['fused_ms']:.3f} ms vs cuDNN "
          f"{record['native_ms']:.3f} ms at T={record['timed_at']['T']} "
          f"B={record['timed_at']['B']} -> {record['choice']}; check: {record['check']['detail']}")
    # a new process reads the file: no second measurement
    tuning.clear()
    m(x)
    assert "cached" in m.last_backend
