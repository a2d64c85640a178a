"""CPU tests of benchmarks/: the main command on CPU, the FLOP formula, result
files, the README renderer, the GPU sweep logic with CUDA faked, and floors.cu
compiling with bare nvcc. Synthetic results live in tmp dirs only."""

import dataclasses
import os
import shutil
import subprocess
import sys
import time
import types

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "benchmarks")
sys.path.insert(0, BENCH)

import bench  # noqa: E402
import common  # noqa: E402
import floors  # noqa: E402
import report  # noqa: E402


def _listing(root):
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, --quick runs the GPU sweep")
def test_quick_on_cpu_prints_parity_and_writes_nothing():
    results = os.path.join(BENCH, "results")
    before = _listing(results)
    r = subprocess.run([sys.executable, os.path.join(BENCH, "bench.py"), "--quick"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "GPU speed numbers need a GPU" in r.stdout
    assert "parity: 12/12 cases within tolerance" in r.stdout
    assert "FAIL" not in r.stdout
    assert _listing(results) == before


def test_forward_flops_hand_computed():
    # LSTM, I=5, H=3, L=2, B=2, T=7: 2*B*T*((5+3) + (3+3))*4*3 = 28*14*12
    assert bench.forward_flops("LSTM", 2, 3, 2, 7, 5) == 4704
    # GRU, I=H=4, L=1, B=1, T=1: 2*(4+4)*3*4
    assert bench.forward_flops("GRU", 1, 4, 1, 1, 4) == 192
    assert bench.forward_flops("RNN", 1, 4, 1, 1, 4) == 64
    # training counts forward + backward as 3x forward
    c = bench.Case("LSTM", 2, 3, 2, 7, "bf16", "train")
    assert bench.case_flops(c) == 3 * 2 * 2 * 7 * (6 + 6) * 4 * 3
    assert bench.case_flops(dataclasses.replace(c, mode="infer")) == 2 * 2 * 7 * 12 * 12


def test_peak_table_only_for_known_devices():
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989
    assert bench.peak_tflops("NVIDIA H200", "tf32") == 494
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3", "fp32") == 67
    assert bench.peak_tflops("NVIDIA H100 PCIe", "bf16") is None
    assert bench.peak_tflops("NVIDIA A100-SXM4-80GB", "bf16") is None


def test_case_selection():
    args = bench.parse_args(["--quick"])
    quick = bench.select_cases(args)
    for L in (2, 4):
        for H in (256, 512):
            for B in (1, 32, 512):
                for dt in ("tf32", "bf16"):
                    for mode in ("infer", "train"):
                        assert bench.Case("LSTM", L, H, B, 512, dt, mode) in quick
    assert all(c.dropout == 0 for c in quick if c.mode == "infer")
    one = bench.select_cases(bench.parse_args(
        "--cell gru --layers 4 --hidden 512 --batch 32 --seq 512 --dtype bf16 --mode train --dropout 0.2".split()))
    assert one == [bench.Case("GRU", 4, 512, 32, 512, "bf16", "train", 0.2)]
    full = bench.select_cases(bench.parse_args([]))
    assert not any(c.layers == 1 and c.dropout for c in full)
    assert len(full) == len(set(full))
    with pytest.raises(SystemExit):
        bench.parse_args(["--dtype", "fp8"])


def _result(**kw):
    base = dict(cell="LSTM", layers=2, hidden=256, batch=32, seq=512, input_size=256, dtype="bf16",
                mode="train", dropout=0.2)
    base.update(kw)
    return bench.Result(**base)


def test_csv_and_json_round_trip(tmp_path):
    rows = [
        _result(status="ok", fused_backend="fused: wavefront, 1/3 \"quoted\", comma", fused_ms=1 / 3,
                fused_ms_min=0.1, fused_ms_max=1e-9, speedup_vs_cudnn=2.5, host_syncs_fused=0,
                runs=20, buffers=8),
        _result(status="skipped", reason="out of memory", mode="infer", dropout=0.0),
    ]
    common.write_csv(tmp_path / "r.csv", rows)
    assert common.read_csv(tmp_path / "r.csv", bench.Result) == rows
    common.write_json(tmp_path / "r.json", {"device": "x"}, rows, floors=None)
    doc = common.read_json(tmp_path / "r.json")
    assert [bench.Result(**d) for d in doc["cases"]] == rows
    assert doc["meta"] == {"device": "x"} and doc["floors"] is None
    common.write_json(tmp_path / "nan.json", {"x": float("nan")}, [_result(fused_ms=float("inf"))])
    doc = common.read_json(tmp_path / "nan.json")
    assert doc["meta"]["x"] is None and doc["cases"][0]["fused_ms"] is None


def _synthetic_run(tmp_path, date="2026-01-02T03:04:05+00:00"):
    """A made-up results folder (never committed: it lives in tmp_path)."""
    meta = dict(device="FAKE GPU (synthetic test data)", capability="9.0", torch="2.11.0+cu130",
                cuda="13.0", cudnn=91000, git_commit="0123456789abcdef", date=date,
                command="python benchmarks/bench.py --quick", runs=20)
    rows = [
        _result(status="ok", dropout=0.0, fused_backend="fused: test", fused_ms=2.0, cudnn_ms=5.0,
                speedup_vs_cudnn=2.5, us_per_wave_step=3.9, tflops_fused=12.0, peak_share_fused=0.012,
                mem_fused_mib=10.0, mem_cudnn_mib=20.0),
        _result(status="fallback", dropout=0.0, batch=512, fused_backend="reference: not covered",
                reason="fused module fell back: reference: not covered", cudnn_ms=7.0),
    ]
    out = tmp_path / "results" / "fake-gpu"
    os.makedirs(out)
    common.write_json(out / "results.json", meta, rows,
                      floors={"grid_sync": [dict(threads=128, exchange=False, blocks=132, us=0.9)],
                              "cluster_sync": [dict(cluster_size=16, exchange=True, clusters=0, us=None,
                                                    reason="not available: operation not supported")],
                              "cudnn_layer_step": []})
    return out


def test_report_renders_and_updates_readme(tmp_path):
    out = _synthetic_run(tmp_path)
    text = report.render_section(str(out), str(tmp_path))
    assert "FAKE GPU (synthetic test data)" in text and "2026-01-02" in text
    assert "**2.50×**" in text
    assert "— (fallback)" in text and "reference: not covered" in text
    assert "results/fake-gpu/results.md" in text
    assert "not available: operation not supported" in text
    assert report.NO_RESULTS in report.render_section(None)
    assert report.NO_RESULTS in report.render_section(str(tmp_path / "nowhere"))
    assert "per-phase timing" not in text
    # a run on scripts/gpu_check.sh's diagnostics build says so
    meta = dict(device="X", torch="t", date="2026-01-02", fused_rnn={"phase_timing_compiled": True})
    assert "per-phase timing recorder compiled in" in report.header_text(meta)

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{report.START}\nold\n{report.END}\n\ntail\n")
    assert report.main([str(out), "--update-readme", "--readme", str(readme)]) == 0
    once = readme.read_text()
    assert "old" not in once and "**2.50×**" in once and once.endswith(f"{report.END}\n\ntail\n")
    report.main([str(out), "--update-readme", "--readme", str(readme)])
    assert readme.read_text() == once  # idempotent

    newer = _synthetic_run(tmp_path / "b", date="2027-01-01T00:00:00+00:00")
    shutil.move(str(newer), str(tmp_path / "results" / "newer-gpu"))
    assert report.latest_results_dir(str(tmp_path / "results")).endswith("newer-gpu")


# ------------------------------------------------------------ GPU logic, faked


class _FakeEvent:
    def __init__(self, enable_timing=False):
        self.t = None

    def record(self):
        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, end):
        return 1e3 * (end.t - self.t)


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda as the sweep sees it on an H100, with tensors on the CPU."""
    props = types.SimpleNamespace(name="NVIDIA H100 80GB HBM3", major=9, minor=0, multi_processor_count=132,
                                  total_memory=80 << 30, L2_cache_size=50 << 20)
    c = torch.cuda
    for name, value in dict(
        is_available=lambda: True, get_device_name=lambda *a: props.name,
        get_device_properties=lambda *a: props, current_device=lambda: 0, Event=_FakeEvent,
        synchronize=lambda *a: None, reset_peak_memory_stats=lambda *a: None,
        memory_allocated=lambda *a: 0, max_memory_allocated=lambda *a: 3 << 20,
        empty_cache=lambda: None, mem_get_info=lambda *a: (80 << 30, 80 << 30),
        set_sync_debug_mode=lambda *a: None,
    ).items():
        monkeypatch.setattr(c, name, value)
    monkeypatch.setattr(bench, "DEVICE", "cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny shapes: extra threads only spin on a busy machine
    yield
    torch.set_num_threads(threads)


def _fake_fused_rnn():
    """fused_rnn whose LSTM claims the fused kernel ran; its GRU keeps the real CPU label."""
    import fused_rnn

    class LSTM(fused_rnn.LSTM):
        def forward(self, *a, **k):
            out = super().forward(*a, **k)
            self.last_backend = "fused: fake kernel (test)"
            self.last_backward_backend = "fused: fake kernel (test)"
            return out

    class RNN(fused_rnn.RNN):  # a "kernel" with a broken output
        def forward(self, *a, **k):
            out, h = super().forward(*a, **k)
            self.last_backend = "fused: fake broken kernel (test)"
            self.last_backward_backend = "fused: fake broken kernel (test)"
            return out * float("nan"), h

    return types.SimpleNamespace(LSTM=LSTM, GRU=fused_rnn.GRU, RNN=RNN,
                                 reference=fused_rnn.reference, dropout=fused_rnn.dropout,
                                 backend_info=lambda: {"extension_loaded": True, "default_path": "fake"},
                                 __file__=fused_rnn.__file__)


def test_gpu_sweep_logic_with_faked_cuda(fake_cuda, tmp_path, capsys):
    out = tmp_path / "out"
    args = bench.parse_args(["--cell", "LSTM,GRU,RNN", "--layers", "2", "--hidden", "8", "--batch", "2",
                             "--seq", "4", "--dtype", "tf32", "--mode", "infer,train", "--dropout", "0,0.2",
                             "--runs", "3", "--warmup", "1", "--out", str(out)])
    assert bench.gpu_main(args, _fake_fused_rnn()) == 0
    doc = common.read_json(out / "results.json")
    assert doc["meta"]["device"] == "NVIDIA H100 80GB HBM3" and doc["meta"]["runs"] == 3
    rows = {(r["cell"], r["mode"], r["dropout"]): r for r in doc["cases"]}
    assert set(rows) == {(c, m, p) for c in ("LSTM", "GRU", "RNN") for m, p in
                         (("infer", 0.0), ("train", 0.0), ("train", 0.2))}
    ok = rows[("LSTM", "infer", 0.0)]
    assert ok["status"] == "ok", ok["reason"]
    assert ok["speedup_vs_cudnn"] == pytest.approx(ok["cudnn_ms"] / ok["fused_ms"])
    assert ok["us_per_wave_step"] == pytest.approx(1e3 * ok["fused_ms"] / (4 + 2 - 1))
    assert ok["max_abs_diff_vs_cudnn"] < 1e-5  # the same weights in both modules
    assert ok["reference_ms"] is not None and ok["mem_fused_mib"] == 3.0
    assert ok["peak_share_fused"] == pytest.approx(ok["tflops_fused"] / 494)
    assert rows[("LSTM", "train", 0.2)]["status"] == "ok"
    assert rows[("LSTM", "train", 0.2)]["max_abs_diff_vs_cudnn"] is None  # dropout: no value check
    for key in (("GRU", "infer", 0.0), ("GRU", "train", 0.0)):  # the real CPU path: a fallback
        r = rows[key]
        assert r["status"] == "fallback" and r["speedup_vs_cudnn"] is None and r["fused_ms"] is None
        assert r["fused_backend"].startswith("reference") or "backward reference" in r["fused_backend"]
    bad = rows[("RNN", "infer", 0.0)]  # wrong output: labelled, no speedup claimed
    assert bad["status"] == "mismatch" and "nan" in bad["reason"] and bad["speedup_vs_cudnn"] is None
    assert common.read_csv(out / "results.csv", bench.Result)[0].cell == "LSTM"
    assert "fallback" in (out / "results.md").read_text()


# ------------------------------------------------------------------ floors.cu


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_floors_cu_compiles_for_sm90a_with_bare_nvcc(tmp_path):
    src = os.path.join(BENCH, "csrc", "floors.cu")
    assert "torch" not in "".join(l for l in open(src) if l.startswith("#include"))
    lib = tmp_path / "floors.so"
    r = subprocess.run(["nvcc", "-std=c++17", "-O3", "-gencode=arch=compute_90a,code=sm_90a", "-shared",
                        "-Xcompiler", "-fPIC", src, "-o", str(lib)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    so = floors.load_library(str(lib))  # cudart is linked statically: loads without a GPU
    assert so.floors_error_string(0) == b"no error"
    if not torch.cuda.is_available():  # the calls fail cleanly, with CUDA's message
        row = floors.grid_sync(so, 128, False, iters=10, repeats=1, device=0)
        assert row["us"] is None and row["reason"]
        row = floors.cluster_sync(so, 16, True, iters=10, repeats=1, device=0)
        assert row["us"] is None and row["reason"].startswith("not available")


def test_floors_difference_method():
    # 0.05 ms launch overhead + 1.5 µs per barrier: the difference of N and 2N cancels the overhead
    us, count = floors._per_barrier_us(lambda n: (0.05 + 1.5e-3 * n, 132), iters=1000, repeats=3)
    assert us == pytest.approx(1.5) and count == 132


# ------------------------------------------------------------------ floors --phases


def _phase_buffer(kind="forward", L=2, T=3, rates=(1.5, 2.0)):
    """A phase buffer built by hand from the layout in csrc/kernels/phase_timing.h: record
    `ld` runs its phases at rates[ld] cycles per ns; per active step gather 100*(ld+1) ns
    (backward: none), GEMM 1000, epilogue 300, barrier 400 + 100*s ns; idle steps spend
    700 ns in the barrier; the launch's last step has no barrier."""
    S = floors.phase_wave_steps(kind, L, 1, T)
    stride = 8 + 4 * S
    buf = [floors.PHASE_MAGIC, floors.PHASE_KINDS.index(kind), L, S, T, L, 1, stride]
    for ld in range(L):
        rate = rates[ld]
        c0, g0 = 1000 * (ld + 1), 5000
        first = ld if kind == "forward" else L - 1 - ld
        n_active = T if kind == "forward" else T + 1
        buf += [7 * ld, ld, c0, c0 + int(rate * 10000), g0, g0 + 10000, c0 + int(rate * 1000), S]
        for s in range(S):
            barrier = int(rate * (400 + 100 * s)) if s < S - 1 else -1
            if first <= s < first + n_active:
                gather = int(rate * 100 * (ld + 1)) if kind == "forward" else -1
                buf += [gather, int(rate * 1000), int(rate * 300), barrier]
            else:
                buf += [-1, -1, -1, int(rate * 700) if s < S - 1 else -1]
    assert len(buf) == floors.phase_buffer_elems(kind, L, 1, T)
    return buf


def test_phase_analysis_on_a_synthetic_buffer():
    res = floors.analyze_phase_buffer(_phase_buffer())
    assert res["kind"] == "forward" and res["steps"] == 4 and res["records"] == 2
    assert res["active_steps"] == [3, 3] and res["incomplete"] == 0
    ph = res["phases_us"]
    # pooled over (CTA, active step), each CTA at its own clock rate
    assert ph["gather"] == pytest.approx((3 * 0.1 + 3 * 0.2) / 6)
    assert ph["gemm"] == pytest.approx(1.0) and ph["epilogue"] == pytest.approx(0.3)
    # record 0 active at steps 0..2 (barriers 400, 500, 600 ns), record 1 at 1..3 (500, 600, none)
    assert ph["barrier"] == pytest.approx((0.4 + 0.5 + 0.6 + 0.5 + 0.6) / 5)
    assert res["total_us"] == pytest.approx((3 * 1.4 + 1.5 + 3 * 1.5 + 1.1) / 6)
    assert res["clock_ghz"] == pytest.approx(1.75) and res["kernel_us"] == pytest.approx(10.0)
    assert res["prologue_us"] == pytest.approx(1.0)
    # the backward: no gather phase, T + 1 active steps per CTA
    back = floors.analyze_phase_buffer(_phase_buffer("backward"))
    assert back["phases_us"]["gather"] is None and back["active_steps"] == [4, 4]
    assert back["phases_us"]["gemm"] == pytest.approx(1.0)
    # a tensor works as well as a list
    assert floors.analyze_phase_buffer(torch.tensor(_phase_buffer()))["phases_us"] == ph


def test_phase_analysis_rejects_what_is_not_a_complete_run():
    buf = _phase_buffer()
    with pytest.raises(ValueError, match="not a phase buffer"):
        floors.analyze_phase_buffer([0] * len(buf))  # the kernel recorded nothing
    with pytest.raises(ValueError, match="inconsistent"):
        floors.analyze_phase_buffer(buf[:3] + [buf[3] + 1] + buf[4:])  # steps vs T, L
    bad = list(buf)
    bad[8 + 8 + 4 * 1 + 2] = -5  # record 0, step 1, epilogue
    with pytest.raises(ValueError, match="bad slots"):
        floors.analyze_phase_buffer(bad)
    bad = list(buf)
    bad[8 + 8 + 4 * 3 + 0] = 5  # record 0, step 3 is idle: a gather there is corrupt
    with pytest.raises(ValueError, match="bad slots"):
        floors.analyze_phase_buffer(bad)
    # a buffer cut short (capacity): only the complete records count
    stride = 8 + 4 * 4
    res = floors.analyze_phase_buffer(buf[:8 + stride + 5])
    assert res["records"] == 1 and res["incomplete"] == 1 and res["active_steps"] == [3]
    with pytest.raises(ValueError, match="no complete record"):
        floors.analyze_phase_buffer(buf[:8 + 5])


def test_phases_table_shows_measurement_beside_model():
    res = floors.analyze_phase_buffer(_phase_buffer("backward"))
    row = dict(kernel="backward", batch=32, event_ms=1.25, event_us_per_step=1.25e3 / res["steps"],
               **res)
    text = floors.phases_table([row, dict(kernel="forward", batch=1, reason="not covered: x")])
    model = floors.PHASE_MODEL[("backward", 32)]
    assert f"{'GEMM (+ prefetch)':18} {res['phases_us']['gemm']:>9.2f} {model['gemm']:>7.2f}" in text
    assert f"{'total per step':18} {res['total_us']:>9.2f} {model['total']:>7.2f}" in text
    assert "gather" in text and "—" in text  # the backward has no gather phase
    assert "forward     1  not measured: not covered: x" in text


def _readme_phase_model():
    """The "Per-phase model" table of csrc/kernels/README.md as {(kernel, B): {phase: µs}}."""
    text = open(os.path.join(REPO, "csrc", "kernels", "README.md")).read()
    head = "| kernel | B | gather | GEMM | epilogue | barrier wait | total per step |"
    assert text.count(head) == 1
    lines = text.split(head, 1)[1].strip().splitlines()[1:]  # skip the | --- | row
    table = {}
    for line in lines:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        vals = [None if c in ("–", "-", "—") else float(c) for c in cells[2:]]
        table[(cells[0], int(cells[1]))] = dict(zip(("gather", "gemm", "epilogue", "barrier",
                                                     "total"), vals))
    return table


def test_phase_model_readme_table_and_dict_agree():
    assert _readme_phase_model() == floors.PHASE_MODEL
    for key, m in floors.PHASE_MODEL.items():
        parts = sum(v for k, v in m.items() if k != "total" and v is not None)
        assert m["total"] == pytest.approx(parts, abs=0.051), key
    assert set(floors.PHASE_MODEL) == {(k, b) for k in floors.PHASE_KINDS for b in floors.PHASE_BATCHES}


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, --phases measures")
def test_phases_without_gpu_exits_0_and_writes_nothing(tmp_path, capsys):
    assert floors.main(["--phases", "--out", str(tmp_path / "out")]) == 0
    assert "no CUDA GPU" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_phases_with_an_uninstrumented_build_exits_1(tmp_path, capsys, monkeypatch):
    from fused_rnn import _build

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_build, "load_extension",
                        lambda: types.SimpleNamespace(phase_timing_compiled=False))
    assert floors.main(["--phases", "--out", str(tmp_path / "out")]) == 1
    assert "FUSED_RNN_PHASE_TIMING=1" in capsys.readouterr().out
    monkeypatch.setattr(_build, "load_extension", lambda: None)
    assert floors.main(["--phases", "--out", str(tmp_path / "out")]) == 1
    assert "unavailable" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_phases_run_end_to_end_with_cuda_and_the_ops_faked(fake_cuda, monkeypatch, tmp_path, capsys):
    """floors --phases on a made-up instrumented build: the ops (called with their schemas'
    arity) write a hand-built buffer into whatever buffer is set; the rows, the table and
    phases.json come out, and every launch but the recorded one runs without a buffer."""
    from fused_rnn import ops as fops

    monkeypatch.setattr(floors, "PHASE_SHAPE", dict(floors.PHASE_SHAPE, layers=2, hidden=8,
                                                    input_size=8, seq=3))
    monkeypatch.setattr(floors, "PHASE_DEVICE", "cpu")
    L, T, H = 2, 3, 8
    state, calls = {}, []

    def record(kind):
        calls.append((kind, state.get(kind) is not None))
        if state.get(kind) is not None:
            state[kind].copy_(torch.tensor(_phase_buffer(kind, L, T)))

    def fwd(*args):
        assert len(args) == len(torch._C.parse_schema("f" + fops.FORWARD_SCHEMA).arguments)
        record("forward")
        x, need_reserve = args[0], args[-1]
        B = x.shape[1]
        reserve = torch.zeros(L, T, B, 6 * H) if need_reserve else torch.zeros(0)
        return torch.zeros(T, B, H), torch.zeros(L, B, H), torch.zeros(L, B, H), reserve

    def bwd(*args):
        assert len(args) == len(torch._C.parse_schema("f" + fops.BACKWARD_SCHEMA).arguments)
        assert args[10].shape == (L, T, args[3].shape[1], 6 * H)  # the forward's reserve
        record("backward")
        return None

    def set_buf(which, buf):
        state[which] = buf

    ext = types.SimpleNamespace(
        phase_timing_compiled=True, plan=lambda *a: (True, "fused: fake"),
        plan_backward=lambda *a: (True, "fused backward: fake"), set_phase_buffer=set_buf,
        phase_buffer_size=lambda which, layers, bidir, seq: floors.phase_buffer_elems(
            which, layers, 2 if bidir else 1, seq))
    monkeypatch.setattr(floors, "_phase_ext", lambda: (ext, None))
    monkeypatch.setattr(floors, "_phase_ops",
                        lambda: types.SimpleNamespace(_fused_forward=fwd, _fused_backward=bwd))
    assert floors.main(["--phases", "--out", str(tmp_path / "out")]) == 0
    # per batch: forward warm-up, recorded; forward (reserve), backward warm-up, recorded
    assert calls == [("forward", False), ("forward", True), ("forward", False),
                     ("backward", False), ("backward", True)] * 2
    assert all(v is None for v in state.values())  # cleared after the run
    doc = common.read_json(tmp_path / "out" / "phases.json")
    assert "device" in doc["meta"] and len(doc["phases"]) == 4
    want = {k: floors.analyze_phase_buffer(_phase_buffer(k, L, T)) for k in floors.PHASE_KINDS}
    for row in doc["phases"]:
        assert row["phases_us"] == pytest.approx(want[row["kernel"]]["phases_us"])
        assert row["event_ms"] >= 0 and row["steps"] == want[row["kernel"]]["steps"]
    out = capsys.readouterr().out
    assert "total per step" in out and "barrier wait" in out and "phases.json" in out
