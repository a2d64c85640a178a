"""The examples run: each script's `main(argv)` on its smallest config, a few steps, on the CPU."""

import importlib.util
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


char_lm = load_example("char_lm")
streaming = load_example("streaming")

# The smallest char_lm config: a few seconds on two CPU cores.
TINY_LM = ["--device", "cpu", "--embed", "16", "--hidden", "32", "--layers", "2", "--batch", "8",
           "--seq-len", "32", "--lr", "1e-2", "--val-frac", "0.01", "--log-every", "5"]


def is_backend_string(s):
    return isinstance(s, str) and s.startswith(("fused: ", "native: ", "reference: "))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_char_lm_loss_decreases(cell):
    r = char_lm.main(TINY_LM + ["--cell", cell, "--steps", "30"])
    first, last = sum(r["losses"][:5]) / 5, sum(r["losses"][-5:]) / 5
    assert len(r["losses"]) == 30 and r["step"] == 30
    assert last < first - 0.5, r["losses"]
    assert 1 < r["val_ppl"] < len(r["vocab"])  # better than uniform over the vocabulary
    assert r["tokens_per_s"] > 0
    assert is_backend_string(r["backend"])


def test_char_lm_seed_is_deterministic():
    a = char_lm.main(TINY_LM + ["--steps", "3", "--seed", "7"])
    b = char_lm.main(TINY_LM + ["--steps", "3", "--seed", "7"])
    assert a["losses"] == b["losses"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("char_lm") / "ck.pt"
    r = char_lm.main(TINY_LM + ["--steps", "6", "--save", str(path)])
    return path, r


def test_char_lm_checkpoint_round_trip(checkpoint):
    path, trained = checkpoint
    resumed = char_lm.main(["--resume", str(path), "--steps", "0", "--device", "cpu"])
    assert resumed["step"] == trained["step"] == 6
    assert resumed["vocab"] == trained["vocab"] and resumed["config"] == trained["config"]
    a, b = trained["model"].state_dict(), resumed["model"].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    more = char_lm.main(TINY_LM + ["--resume", str(path), "--steps", "2"])
    assert more["step"] == 8


def test_char_lm_generates_from_checkpoint(checkpoint):
    path, _ = checkpoint
    argv = ["--resume", str(path), "--steps", "0", "--device", "cpu", "--generate", "def ",
            "--length", "40"]
    r = char_lm.main(argv)
    assert len(r["generated"]) == 40 and set(r["generated"]) <= set(r["vocab"])
    assert char_lm.main(argv)["generated"] == r["generated"]  # same --seed, same text
    greedy = char_lm.main(argv[:-2] + ["--length", "5", "--temperature", "0"])
    assert len(greedy["generated"]) == 5


def test_char_lm_compare_nn():
    r = char_lm.main(TINY_LM + ["--steps", "3", "--compare-nn"])
    assert r["tokens_per_s"] > 0 and r["nn_tokens_per_s"] > 0


@pytest.mark.parametrize("cell,chunk,dtype", [
    ("lstm", 1, "float32"),
    ("lstm", 7, "float32"),
    ("gru", 5, "float64"),
    ("rnn", 16, "float32"),
])
def test_streaming_chunked_equals_whole(cell, chunk, dtype):
    r = streaming.main(["--device", "cpu", "--cell", cell, "--chunk", str(chunk), "--dtype", dtype,
                        "--input-size", "8", "--hidden", "32", "--seq-len", "40",
                        "--warmup", "2", "--repeats", "1", "--compare-nn"])
    assert r["max_diff"] <= r["tol"] and r["state_diff"] <= r["tol"]
    assert r["tol"] <= (1e-9 if dtype == "float64" else 1e-5)
    assert 0 < r["median_ms"] <= r["p90_ms"] and r["nn_median_ms"] > 0
    assert is_backend_string(r["backend"])
