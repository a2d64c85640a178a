"""Autotuning (fused_rnn.tuning) on the CPU, with fake timers and fake devices.

The measurement itself runs here for real on CPU tensors (the custom op's CPU kernel, the
reference stack, stands in for the fused kernel, ATen for cuDNN) with a fake clock; the
dispatch's use of it runs with the extension and the CUDA device faked (as in
test_dispatch.py) and the measurement replaced by a recorder.
"""

import json
import multiprocessing
import os
import warnings

import pytest
import torch

import fused_rnn
from fused_rnn import dispatch, policy, tuning

from test_dispatch import CUDA, DEVICE_NAME, FakeExt  # noqa: F401 - the fake extension

FAKE = tuning.Device(DEVICE_NAME, (8, 9), 76)  # never GPU-verified
VERIFIED = tuning.Device("NVIDIA H200", (9, 0), 132)


class FakeClock:
    """tuning.time_ms: runs the step, returns the time set for its label."""

    def __init__(self, **ms):
        self.ms = {"fused": 1.0, "native": 2.0, "graphed_fused": 1.0, "graphed_native": 1.5}
        self.ms.update(ms)
        self.calls = []

    def __call__(self, fn, label, device):
        fn()
        self.calls.append(label)
        return self.ms[label]


@pytest.fixture
def tune(monkeypatch, tmp_path):
    """Autotuning on, its cache in a fresh folder, a fake (unverified) device, a fake clock."""
    monkeypatch.setenv(tuning.ENV, "auto")
    monkeypatch.setenv(tuning.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(policy, "TABLE_DIR", str(tmp_path / "no-tables"))
    monkeypatch.setattr(tuning, "device_facts", lambda index: FAKE)
    clock = FakeClock()
    monkeypatch.setattr(tuning, "time_ms", clock)
    policy.tables.cache_clear()
    tuning.clear()
    yield clock
    policy.tables.cache_clear()


def spec(mode="LSTM", training=False, T=5, B=3, I=6, H=7, L=2, bidirectional=False,
         dropout=0.0, dtype=torch.float32):
    return tuning.Spec(mode, torch.device("cpu"), dtype, T, B, I, H, L, bidirectional, True,
                       dropout, training)


def key_of(s, dtype_key="fp32", graphed=False):
    return tuning.make_key(s.mode, dtype_key, s.training, s.num_layers, s.H, s.I,
                           s.bidirectional, s.T, s.B, graphed)


def test_keys_bucket_T_and_B_to_powers_of_two():
    assert [tuning.bucket(n) for n in (1, 2, 3, 4, 5, 17, 32, 33)] == [1, 2, 4, 4, 8, 32, 32, 64]
    assert tuning.bucket(5000, tuning.T_MAX) == 1024 and tuning.bucket(0) == 1
    k = tuning.make_key("GRU", "bf16", True, 4, 512, 256, True, 300, 17, False)
    assert (k.seq_bucket, k.batch_bucket) == (512, 32)
    assert k.text() == "GRU bf16 train L=4 H=512 I=256 bi T<=512 B<=32 eager"
    assert tuning.make_key("GRU", "bf16", True, 4, 512, 256, True, 4096, 1, True).text() \
        .endswith("T<=1024+ B<=1 graphed")


def test_settings_api_and_environment(monkeypatch):
    monkeypatch.setenv(tuning.ENV, "")
    assert tuning.settings()["mode"] == "auto"
    for raw, mode in (("1", "on"), ("ON", "on"), ("0", "off"), ("off", "off")):
        monkeypatch.setenv(tuning.ENV, raw)
        assert tuning.settings()["mode"] == mode
    monkeypatch.setenv(tuning.ENV, "sometimes")
    with pytest.warns(UserWarning, match="not one of auto, on, off"):
        assert tuning.settings()["mode"] == "auto"
    monkeypatch.setenv(tuning.ENV, "off")
    previous = fused_rnn.autotune(True, graphs=True, cache_dir="off")
    assert previous == {"mode": None, "graphs": None, "cache_dir": None}  # the environment's
    assert tuning.settings() == {"mode": "on", "graphs": True, "cache_dir": None}
    inner = fused_rnn.autotune("auto", cache_dir="/tmp/x")
    assert inner == {"mode": "on", "graphs": True, "cache_dir": "off"}
    fused_rnn.autotune(**inner)
    assert tuning.settings() == {"mode": "on", "graphs": True, "cache_dir": None}  # memory only
    fused_rnn.autotune(**previous)
    assert tuning.settings()["mode"] == "off" and tuning.settings()["graphs"] is False
    with pytest.raises(ValueError, match="mode must be one of"):
        fused_rnn.autotune("always")
    with pytest.raises(TypeError, match="graphs must be a bool"):
        fused_rnn.autotune(graphs="yes")
    fused_rnn.autotune(None)
    monkeypatch.setenv(tuning.CACHE_ENV, "")
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere")
    assert tuning.settings()["cache_dir"] == os.path.join("/somewhere", "fused_rnn")


def test_active_where_no_table_of_its_own(tune, monkeypatch, tmp_path):
    assert tuning.active(FAKE) == (True, f"no calibrated table for {DEVICE_NAME}")
    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / "t.json").write_text(json.dumps({"format": 1, "device": DEVICE_NAME,
                                               "entries": []}))
    monkeypatch.setattr(policy, "TABLE_DIR", str(tables))
    policy.tables.cache_clear()
    on, why = tuning.active(FAKE)
    assert not on and "t.json is calibrated for" in why
    fused_rnn.autotune("on")
    assert tuning.active(FAKE)[0]
    fused_rnn.autotune("off")
    assert not tuning.active(FAKE)[0]


@pytest.mark.parametrize("mode,training,bidirectional", [
    ("LSTM", False, False), ("GRU", True, False), ("RNN_RELU", True, True),
    ("RNN_TANH", False, True)])
def test_measurement_checks_then_times_both_paths(tune, mode, training, bidirectional):
    s = spec(mode, training=training, bidirectional=bidirectional, B=3, T=5)
    k = key_of(s)
    record = tuning.measure(s, k, FAKE, graphs=False)
    assert record["check"]["ok"], record["check"]  # the reference stack against ATen
    assert "within 2 x native's error" in record["check"]["detail"]
    assert record["timed_at"] == {"T": 8, "B": 4}  # the buckets' tops
    assert record["choice"] == "fused" and record["fused_ms"] == 1.0
    assert record["why"] == "fused 1 ms <= 0.95 x native 2 ms"
    assert tune.calls.count("fused") == tune.calls.count("native") >= tuning.RUNS[0]
    tune.ms["fused"] = 1.91  # not a win by the margin
    assert tuning.measure(s, k, FAKE, graphs=False)["choice"] == "native"
    # a GPU-verified device skips the check
    assert tuning.measure(s, k, VERIFIED, graphs=False)["check"]["detail"].startswith("not run")


def test_measurement_leaves_the_rng_and_autograd_alone(tune):
    torch.manual_seed(7)
    before = torch.get_rng_state()
    s = spec("LSTM", training=True, dropout=0.3)
    tuning.measure(s, key_of(s), FAKE, graphs=False)
    assert torch.equal(torch.get_rng_state(), before)
    x = torch.randn(2, requires_grad=True)
    y = (x * 2).sum()
    tuning.measure(spec("GRU", training=True), key_of(spec("GRU", training=True)), FAKE, False)
    y.backward()  # the user's graph is intact
    assert torch.equal(x.grad, torch.full((2,), 2.0))


def test_choose_measures_once_then_reads_the_cache(tune, tmp_path):
    s = spec()
    k = key_of(s)
    path, why = tuning.choose(s, k, may_measure=True)
    assert path == "fused" and "measured now" in why and "LSTM fp32 infer L=2 H=7 I=6" in why
    n = len(tune.calls)
    assert tuning.choose(s, k, may_measure=True)[0] == "fused"
    assert len(tune.calls) == n  # cached in memory
    files = list((tmp_path / "cache" / "autotune").glob("*.json"))
    assert len(files) == 1 and "sm89-76sms-torch" in files[0].name
    data = json.loads(files[0].read_text())
    assert data["device"] == DEVICE_NAME and data["capability"] == [8, 9]
    assert data["torch"] == torch.__version__ and data["csrc"]
    assert data["entries"][k.text()]["choice"] == "fused"
    # a new process (memory forgotten) reads the disk: no measurement
    tuning.clear()
    path, why = tuning.choose(s, k, may_measure=True)
    assert path == "fused" and "cached" in why and len(tune.calls) == n
    # where it may not measure (a capture), a missing key is no answer
    assert tuning.choose(spec(B=100), key_of(spec(B=100)), may_measure=False) is None
    assert len(tune.calls) == n
    info = tuning.info(FAKE)
    assert info["active"] and info["cache_file"] == str(files[0])
    assert list(info["entries"]) == [k.text()] and info["disabled"] == []
    tuning.clear(disk=True)
    assert not files[0].exists()


def test_a_corrupt_cache_is_ignored_with_a_warning_and_rewritten(tune, tmp_path):
    s = spec()
    k = key_of(s)
    path = tuning.cache_path(FAKE, str(tmp_path / "cache"))
    os.makedirs(os.path.dirname(path))
    for bad in ("{not json", json.dumps({"format": 1, "entries": {"x": {"choice": "maybe"}}}),
                json.dumps([1, 2])):
        with open(path, "w") as f:
            f.write(bad)
        tuning.clear()
        tuning._warn_once.__defaults__[0].discard(("corrupt", path))
        with pytest.warns(tuning.AutotuneCacheWarning, match="ignoring the autotune cache"):
            assert tuning.choose(s, k, may_measure=True)[0] == "fused"
        assert json.loads(open(path).read())["entries"][k.text()]["choice"] == "fused"


def test_an_unwritable_cache_keeps_measurements_in_memory(tune, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(tuning.CACHE_ENV, str(blocker))  # a file where the folder should be
    s = spec()
    with pytest.warns(tuning.AutotuneCacheWarning, match="cannot write the autotune cache"):
        assert tuning.choose(s, key_of(s), may_measure=True)[0] == "fused"
    assert tuning.info(FAKE)["disk_error"]
    n = len(tune.calls)
    assert tuning.choose(s, key_of(s), may_measure=True)[0] == "fused" and len(tune.calls) == n


def _writer(path, worker, count):
    device = tuning.Device("Fake GPU", (9, 0), 132)
    cache = tuning.Cache(device, path)
    for i in range(count):
        k = tuning.make_key("LSTM", "bf16", False, 1 + worker, 8, 8, False, 1, 1 << i, False)
        cache.put(k, {"choice": "fused", "why": f"worker {worker}"})


def test_concurrent_writers_lose_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(tuning, "_source_hash", lambda: "0" * 64)
    path = str(tmp_path / "autotune" / "c.json")
    ctx = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 12)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    data = json.loads(open(path).read())
    assert len(data["entries"]) == 4 * 12
    assert not [f for f in os.listdir(os.path.dirname(path)) if f.endswith(".tmp")]


def test_a_mismatch_disables_the_fused_path_for_that_key(tune, monkeypatch):
    real = tuning._make_step

    def broken(spec_, path, tensors, dropout):
        step = real(spec_, path, tensors, dropout)
        if path != "fused":
            return step

        def wrong():
            out, hy, cy, grads = step()
            return out + 0.1, hy, cy, grads
        return wrong
    monkeypatch.setattr(tuning, "_make_step", broken)
    s = spec()
    k = key_of(s)
    with pytest.warns(tuning.FusedMismatchWarning, match="disabled the fused path") as w:
        path, why = tuning.choose(s, k, may_measure=True)
    assert len(w) == 1 and path == "native"
    assert "output: fused error" in why and "> 2 x native's" in why
    assert tune.calls == []  # no timing once the check failed
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: no second warning
        assert tuning.choose(s, k, may_measure=True)[0] == "native"
        tuning.clear()  # from the disk in a new process: still native, no measurement
        assert tuning.choose(s, k, may_measure=True)[0] == "native"
    assert tuning.info(FAKE)["disabled"] == [k.text()]
    # other keys are measured as usual (a gradient only in training: fused runs it wrong too)
    s2 = spec(B=9)
    with pytest.warns(tuning.FusedMismatchWarning):
        assert tuning.choose(s2, key_of(s2), may_measure=True)[0] == "native"
    # a kernel that fails to run here counts as a mismatch
    monkeypatch.setattr(tuning, "_make_step", lambda s_, p, t, d: (
        (lambda: (_ for _ in ()).throw(RuntimeError("no kernel image for this device")))
        if p == "fused" else real(s_, p, t, d)))
    s3 = spec(B=17)
    with pytest.warns(tuning.FusedMismatchWarning, match="no kernel image"):
        assert tuning.choose(s3, key_of(s3), may_measure=True)[0] == "native"


def test_graphed_keys_are_measured_beside_eager_ones_only_when_asked(tune, monkeypatch):
    monkeypatch.setattr(tuning, "graph_step", lambda fn, device: fn)  # a CPU has no graphs
    s = spec()
    k = key_of(s)
    tuning.choose(s, k, may_measure=True)
    assert "graphed_fused" not in tune.calls
    assert tuning.choose(s, key_of(s, graphed=True), may_measure=False) is None
    tuning.clear(disk=True)
    fused_rnn.autotune(graphs=True)
    tune.ms["graphed_fused"] = 1.6  # in a graph cuDNN (1.5) wins
    tuning.choose(s, k, may_measure=True)
    assert "graphed_fused" in tune.calls
    path, why = tuning.choose(s, key_of(s, graphed=True), may_measure=False)
    assert path == "native" and "graphed" in why and "1.6 ms > 0.95 x native 1.5 ms" in why


# ------------------------------------------------------------ through the dispatch


@pytest.fixture
def fake(monkeypatch, tmp_path, tune):
    """The extension and a CUDA device faked (test_dispatch.py's), autotuning on, and the
    measurement replaced by a recorder whose verdict the test sets."""
    ext = FakeExt()
    monkeypatch.setattr(fused_rnn.ops, "load_extension", lambda: ext)
    monkeypatch.setattr("fused_rnn._build.load_extension", lambda: ext)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: DEVICE_NAME)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(dispatch, "_ENV_VALUE", None)
    measured = []
    verdict = {"fused_ms": 1.0, "native_ms": 2.0}

    def measure(spec_, key, device, graphs):
        measured.append(key)
        return dict(tuning._verdict(verdict["fused_ms"], verdict["native_ms"]),
                    timed_at={"T": key.seq_bucket, "B": key.batch_bucket},
                    check={"ok": True, "detail": "fake"}, date="now", margin=tuning.MARGIN)
    monkeypatch.setattr(tuning, "measure", measure)
    return measured, verdict


def decide(B=8, T=64, need_grad=False, **kw):
    opts = dict(num_layers=4, bidirectional=False, has_biases=True, proj_size=0, dropout=0.0,
                need_grad=need_grad, has_lengths=False)
    opts.update(kw)
    return dispatch.decide("LSTM", CUDA, torch.bfloat16, T, B, 512, 512, **opts)


def test_dispatch_measures_the_first_call_of_a_key_and_follows_it(fake):
    measured, verdict = fake
    d = decide(B=8)
    assert d.path == "fused" and "autotuned on Fake GPU 132SM (measured now" in d.forward
    assert [k.text() for k in measured] == ["LSTM bf16 infer L=4 H=512 I=512 uni T<=64 B<=8 "
                                            "eager"]
    assert decide(B=7).path == "fused" and len(measured) == 1  # same bucket: cached
    verdict["fused_ms"] = 3.0
    d = decide(B=9)  # a new bucket, where native wins: above the model's default too
    assert d.path == "native" and "fused 3 ms > 0.95 x native 2 ms" in d.forward
    assert decide(B=8, need_grad=True).path == "native" and len(measured) == 3
    assert measured[-1].training
    # a batch the model would send native (64 > its 32), measured faster fused: fused
    verdict["fused_ms"] = 1.0
    assert decide(B=64).path == "fused"


def test_no_measurement_during_a_capture_the_cache_or_table_decides(fake, monkeypatch):
    measured, _ = fake
    monkeypatch.setattr(dispatch, "capturing", lambda: True)
    d = decide(B=8)
    assert d.path == "fused" and measured == []  # the model's default (32) decided
    assert d.forward == "fused: fake LSTM B=8 T=64"
    d = decide(B=64)
    assert d.path == "native" and "the performance model's default" in d.forward
    # a graphed measurement in the cache is read
    cache = tuning.cache_for(FAKE)
    k = tuning.make_key("LSTM", "bf16", False, 4, 512, 512, False, 64, 64, True)
    cache.put(k, dict(tuning._verdict(1.0, 2.0), timed_at={"T": 64, "B": 64},
                      check={"ok": True}))
    d = decide(B=64)
    assert d.path == "fused" and "graphed" in d.forward and measured == []


def test_autotune_off_and_a_calibrated_table_leave_the_old_rules(fake, monkeypatch, tmp_path):
    measured, _ = fake
    fused_rnn.autotune("off")
    d = decide(B=64)
    assert d.path == "native" and "performance model's default" in d.forward
    assert measured == []
    fused_rnn.autotune(None)
    tables = tmp_path / "tables"
    tables.mkdir()
    entry = {"dtype": "bf16", "mode": "LSTM", "num_layers": 4, "hidden_size": 512,
             "bidirectional": False, "forward_max_batch": 4, "training_max_batch": 2}
    (tables / "t.json").write_text(json.dumps({"format": 1, "device": DEVICE_NAME,
                                               "entries": [entry]}))
    monkeypatch.setattr(policy, "TABLE_DIR", str(tables))
    policy.tables.cache_clear()
    assert decide(B=8).path == "native" and measured == []  # the table, not a measurement
    fused_rnn.autotune("on")
    assert decide(B=8).path == "fused" and len(measured) == 1


def test_torch_compile_reads_the_cache_and_never_measures(fake):
    measured, verdict = fake
    verdict["fused_ms"] = 5.0
    assert decide(B=8).path == "native" and len(measured) == 1  # cached: native at B<=8

    def f(x):
        d = dispatch.decide("LSTM", CUDA, torch.bfloat16, x.shape[0], x.shape[1], 512, 512,
                            num_layers=4)
        return x + (1 if d.path == "fused" else 2)

    for dynamic in (False, True):
        torch._dynamo.reset()
        compiled = torch.compile(f, fullgraph=True, dynamic=dynamic, backend="eager")
        # B=8 (bucket 5..8, T=64 in 33..64): the cache says native; B=4: no entry, the
        # model's default (32) says fused; never a measurement while tracing
        assert compiled(torch.ones(64, 8))[0, 0].item() == 3.0
        assert compiled(torch.ones(64, 4))[0, 0].item() == 2.0
        assert compiled(torch.ones(64, 6))[0, 0].item() == 3.0
        assert len(measured) == 1


def test_backend_info_shows_the_cache(fake, monkeypatch):
    decide(B=8)
    info = fused_rnn.backend_info(load=False)["autotune"]  # no CUDA: the settings
    assert info["mode"] == "auto" and info["graphs"] is False and info["active"] is None
    assert info["recent"][-1]["key"].startswith("LSTM bf16 infer L=4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    full = fused_rnn.backend_info(load=False)
    info = full["autotune"]
    assert info["active"] and info["why"] == f"no calibrated table for {DEVICE_NAME}"
    assert info["verified_device"] is False and info["cache_file"].endswith(".json")
    (key, record), = info["entries"].items()
    assert key.startswith("LSTM bf16 infer L=4") and record["choice"] == "fused"
    assert full["crossover_prior"] is None


def test_a_device_like_a_calibrated_one_takes_its_table_as_a_prior(tmp_path):
    tables = tmp_path / "tables"
    tables.mkdir()
    entry = {"dtype": "bf16", "mode": "LSTM", "num_layers": 4, "hidden_size": 512,
             "bidirectional": False, "forward_max_batch": 64, "training_max_batch": 16}
    (tables / "h200.json").write_text(json.dumps({
        "format": 1, "device": "NVIDIA H200", "capability": [9, 0], "sm_count": 132,
        "entries": [entry]}))
    policy.tables.cache_clear()
    try:
        look = dict(directory=str(tables))
        n, where = policy.max_batch_for("NVIDIA H100 80GB HBM3", "bf16", "LSTM", 4, 512, False,
                                        False, capability=(9, 0), sm_count=132, **look)
        assert n == 64 and "calibrated on NVIDIA H200" in where and "a prior" in where
        assert "same compute capability 9.0 and 132 SMs" in where
        n, where = policy.max_batch_for("NVIDIA H100 PCIe", "bf16", "LSTM", 4, 512, False,
                                        False, capability=(9, 0), sm_count=114, **look)
        assert "performance model's default" in where  # another SM count: no prior
    finally:
        policy.tables.cache_clear()


def test_a_table_with_several_sequence_lengths_takes_the_nearest(tmp_path):
    tables = tmp_path / "tables"
    tables.mkdir()
    base = {"dtype": "bf16", "mode": "GRU", "num_layers": 2, "hidden_size": 256,
            "bidirectional": True, "training_max_batch": 0}
    entries = [dict(base, seq_len=t, forward_max_batch=n) for t, n in ((64, 8), (256, 32),
                                                                        (1024, 128))]
    (tables / "t.json").write_text(json.dumps({"format": 1, "device": "G", "seq_len": 256,
                                               "entries": entries}))
    policy.tables.cache_clear()
    try:
        look = lambda T: policy.max_batch_for("G", "bf16", "GRU", 2, 256, True, False,  # noqa
                                              directory=str(tables), seq_len=T)
        assert [look(T)[0] for T in (1, 64, 100, 128, 200, 600, 5000)] == [8, 8, 8, 32, 32, 128,
                                                                           128]
        assert "T=1024" in look(5000)[1]
        assert look(None)[0] == 32  # no T (a trace): the table's seq_len
        with pytest.raises(ValueError, match="seq_len"):
            policy.check_table({"format": 1, "device": "x", "entries": [dict(entries[0],
                                                                                seq_len=0)]})
    finally:
        policy.tables.cache_clear()


def test_a_measurement_that_fails_never_fails_the_call(tune, monkeypatch):
    """Out of memory at the bucket's top, or a path failing on the scratch tensors: a
    warning, no cache entry, and the table or the model decides (None)."""
    def fails(fn, label, device):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(tuning, "time_ms", fails)
    s = spec()
    with pytest.warns(UserWarning, match="could not measure .* out of memory"):
        assert tuning.choose(s, key_of(s), may_measure=True) is None
    assert tuning.RECENT[-1]["error"].startswith("OutOfMemoryError")
    assert tuning.cache_for(FAKE).get(key_of(s)) is None
    n = len(tuning.RECENT)
    assert tuning.choose(s, key_of(s), may_measure=True) is None  # not again in this process
    assert len(tuning.RECENT) == n and list(tuning.info(FAKE)["failed"]) == [key_of(s).text()]
    # a failure of the native or the float64 run is not the fused kernel's: not a mismatch
    monkeypatch.setattr(tuning, "time_ms", FakeClock())
    real = tuning._make_step
    monkeypatch.setattr(tuning, "_make_step", lambda s_, p, t, d: (
        (lambda: (_ for _ in ()).throw(RuntimeError("cuDNN: double not supported")))
        if p == "native" else real(s_, p, t, d)))
    s2 = spec(B=9)
    with pytest.warns(UserWarning, match="could not measure"):
        assert tuning.choose(s2, key_of(s2), may_measure=True) is None
    assert tuning.info(FAKE)["disabled"] == []
    assert tuning._err(None, torch.ones(1)) == float("inf") and tuning._err(None, None) == 0.0


def test_the_users_saved_tensor_hooks_never_see_the_measurement(tune):
    """A first training call inside torch.utils.checkpoint (non-reentrant: saved-tensor
    hooks) measures under identity hooks of its own: the checkpoint's forward and its
    recomputation save the same tensors, and the backward works."""
    from torch.utils.checkpoint import checkpoint

    s = spec("LSTM", training=True)
    verdicts = []

    def block(x):
        verdicts.append(tuning.choose(s, key_of(s), may_measure=True)[0])
        return (x * 2).sin()
    x = torch.randn(4, requires_grad=True)
    checkpoint(block, x, use_reentrant=False).sum().backward()
    assert verdicts == ["fused", "fused"] and torch.allclose(x.grad, 2 * (2 * x).cos())
    with torch.autograd.graph.save_on_cpu():
        s3 = spec("GRU", training=True)
        assert tuning.choose(s3, key_of(s3), may_measure=True)[0] == "fused"


def test_no_measurement_under_jit_trace_torch_func_or_a_mode(fake, monkeypatch):
    from torch.utils.flop_counter import FlopCounterMode

    measured, _ = fake
    with monkeypatch.context() as m:
        m.setattr(torch.jit, "is_tracing", lambda: True)
        d = decide(B=8)
        assert d.path == "fused" and measured == [] and "autotuned" not in d.forward
    paths = []

    def f(x):
        paths.append(decide(B=8).forward)
        return (x * 2).sum()
    torch.func.grad(f)(torch.ones(2))
    assert measured == [] and "autotuned" not in paths[-1]
    with FlopCounterMode(display=False):
        assert tuning.foreign_modes()
        assert "autotuned" not in decide(B=8).forward and measured == []
    with torch.device("cpu"):  # a device context is no reason not to measure
        assert not tuning.foreign_modes()
    assert not tuning.foreign_modes()
    assert "autotuned" in decide(B=8).forward and len(measured) == 1


def test_scratch_tensors_have_nn_shapes_and_come_from_the_private_generator():
    s = spec("GRU", training=True, bidirectional=True, L=2, I=6, H=7)
    made = []
    for _ in range(2):
        g = torch.Generator()
        g.manual_seed(3)
        made.append(tuning._scratch(s, 5, 3, g))
    ref = torch.nn.GRU(6, 7, 2, bidirectional=True)
    x, weights, h0, c0, gout = made[0]
    assert [w.shape for w in weights] == [w.shape for w in ref._flat_weights]
    assert all(torch.equal(a, b) for a, b in zip(weights, made[1][1]))  # the generator's
    assert all(w.abs().max() <= 7 ** -0.5 for w in weights)
    assert x.shape == (5, 3, 6) and h0.shape == (4, 3, 7) and c0 is None
    assert gout.shape == (5, 3, 14) and not any(w.requires_grad for w in weights)
