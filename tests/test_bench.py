"""CPU tests of benchmarks/: the main command on CPU, the FLOP formula, result
files, the README renderer, the GPU sweep logic with CUDA faked, and floors.cu
compiling with bare nvcc. Synthetic results live in tmp dirs only."""

import contextlib
import dataclasses
import functools
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
from rnnbench import baselines, calibrate, cases, cli, cpu, sweep, timing  # noqa: E402
import common  # noqa: E402
import floors  # noqa: E402
import report  # noqa: E402


def _listing(root):
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, --quick runs the GPU sweep")
def test_quick_on_cpu_prints_parity_and_writes_nothing():
    results = os.path.join(BENCH, "results")
    before = _listing(results)
    # --acceptance-runs 2: the command as CI runs it, with the speed measurement kept short
    r = subprocess.run([sys.executable, os.path.join(BENCH, "bench.py"), "--quick", "--acceptance-runs", "2"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "GPU speed numbers need a GPU" in r.stdout
    assert "parity: 12/12 cases ok" in r.stdout
    # every parity row and both acceptance rows: native, bit-identical to nn
    assert r.stdout.count("| native | yes |") == 14
    assert "speed target fused_rnn / nn ≤ 1.05: " in r.stdout and "not the exit status" in r.stdout
    assert _listing(results) == before


def test_bench_py_is_the_entry_point_of_the_package():
    assert bench.main is cli.main
    r = subprocess.run([sys.executable, os.path.join(BENCH, "bench.py"), "--help"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "cudnn_graph" in r.stdout and "--skip-baselines" in r.stdout
    assert cli.parse_args(["--skip-baselines", "flashrnn,fused_graph"]).skip_baselines == ["flashrnn", "fused_graph"]
    for bad in (["--skip-baselines", "cudnn"], ["--no-graphed"], ["--calibrate", "--skip-baselines", "flashrnn"]):
        with pytest.raises(SystemExit):
            cli.parse_args(bad)


# ------------------------------------------------------------------ CPU mode


@pytest.fixture
def one_thread():
    """Tiny shapes: a second thread only spins on a busy 2-core machine (10x slower)."""
    with cpu.cpu_threads(1):
        yield


def _broken_fused_rnn(native_ulp=False, reference_offset=0.0, monkeypatch=None):
    """fused_rnn whose LSTM's native path is off by one ulp (labelled native all the same),
    or whose reference path is off by reference_offset."""
    import fused_rnn

    if reference_offset:
        real = fused_rnn.reference.rnn_forward

        def off(*a, **k):
            out, *rest = real(*a, **k)
            return (out + reference_offset, *rest)
        monkeypatch.setattr(fused_rnn.reference, "rnn_forward", off)

    class LSTM(fused_rnn.LSTM):
        def forward(self, *a, **k):
            out, state = super().forward(*a, **k)
            if native_ulp and self.last_backend.startswith("native"):
                out = torch.nextafter(out, torch.full_like(out, float("inf")))
            return out, state

    return types.SimpleNamespace(LSTM=LSTM, GRU=fused_rnn.GRU, RNN=fused_rnn.RNN,
                                 backend=fused_rnn.backend, backend_info=fused_rnn.backend_info)


def test_cpu_parity_row_native_bit_identical_and_reference_within_tolerance(one_thread):
    import fused_rnn

    for mode in ("infer", "train"):
        r = cpu.cpu_parity(fused_rnn, "LSTM", 2, 8, 2, 3, "fp32", mode, runs=2)
        assert r.ok and r.identical and r.path == "native"
        assert r.backend.startswith("native" if mode == "infer" else "forward native")
        assert r.fused_rnn_vs_torch == pytest.approx(r.fused_rnn_ms / r.torch_ms)
        assert r.reference_max_abs_diff_output < 1e-4
        assert (r.reference_max_abs_diff_grads is None) == (mode == "infer")


def test_cpu_parity_fails_on_one_ulp_on_the_native_path_and_on_the_reference(monkeypatch, one_thread):
    r = cpu.cpu_parity(_broken_fused_rnn(native_ulp=True), "LSTM", 2, 8, 2, 3, "fp32", "train", 1)
    assert r.path == "native" and not r.identical and not r.ok  # within 1e-4, but not the same bits
    assert r.reference_max_abs_diff_output < 1e-4
    r = cpu.cpu_parity(_broken_fused_rnn(reference_offset=1e-3, monkeypatch=monkeypatch),
                         "LSTM", 2, 8, 2, 3, "fp32", "infer", 1)
    assert r.identical and not r.ok and r.reference_max_abs_diff_output == pytest.approx(1e-3, rel=1e-2)


def test_interleaved_runs_alternate_and_stop_at_the_budget():
    calls = []
    times = timing.interleaved_ms([lambda: calls.append("nn"), lambda: calls.append("fused")], 3)
    assert calls == ["nn", "fused"] * 4  # one untimed round, then three timed
    assert [len(t) for t in times] == [3, 3]
    times = timing.interleaved_ms([lambda: time.sleep(0.01)], 50, budget_s=0.0)
    assert len(times[0]) == 1  # the budget ends the rounds after the first


SMALL = dict(cell="LSTM", layers=2, hidden=8, batch=2, seq=3)


def test_cpu_acceptance_rows():
    import fused_rnn

    rows = cpu.cpu_acceptance(fused_rnn, 4, SMALL, reference_budget_s=60)
    assert [r.mode for r in rows] == ["infer", "train"]
    for r in rows:
        assert r.path == "native" and r.identical and r.runs == 4 and r.reference_runs == 1
        assert r.fused_rnn_vs_torch == pytest.approx(r.fused_rnn_ms / r.torch_ms)
        assert r.meets_target == (r.fused_rnn_vs_torch <= 1.05) and r.target == 1.05
        assert r.reference_vs_torch == pytest.approx(r.reference_ms / r.reference_torch_ms)
    assert "forward native" in rows[1].backend and "backward native" in rows[1].backend
    assert not any(r.identical for r in cpu.cpu_acceptance(_broken_fused_rnn(native_ulp=True), 1, SMALL))


def test_cpu_main_writes_acceptance_and_fails_on_parity(tmp_path, monkeypatch, capsys):
    import fused_rnn

    monkeypatch.setattr(cpu, "ACCEPT_SHAPE", SMALL)
    argv = ["--cell", "LSTM", "--hidden", "8", "--batch", "2", "--seq", "3", "--cpu-runs", "1",
            "--acceptance-runs", "2"]
    threads = torch.get_num_threads()
    assert cpu.cpu_main(cli.parse_args(argv + ["--out", str(tmp_path)]), fused_rnn) == 0
    assert torch.get_num_threads() == threads  # one thread while it measured, restored after
    doc = common.read_json(tmp_path / "parity.json")
    assert len(doc["cases"]) == 4 and all(c["ok"] and c["path"] == "native" for c in doc["cases"])
    assert [a["mode"] for a in doc["acceptance"]] == ["infer", "train"]
    assert common.read_csv(tmp_path / "acceptance.csv", cpu.Acceptance)[1].mode == "train"
    md = (tmp_path / "parity.md").read_text()
    assert "CPU speed target" in md and "fused_rnn / nn" in md
    out = capsys.readouterr().out
    assert "parity: 4/4 cases ok" in out and "not the exit status" in out
    assert cpu.cpu_main(cli.parse_args(argv), _broken_fused_rnn(native_ulp=True)) == 1
    out = capsys.readouterr().out
    assert "parity: 0/4 cases ok" in out and "FAIL: fused_rnn's native path differs" in out


def test_forward_flops_hand_computed():
    # LSTM, I=5, H=3, L=2, B=2, T=7: 2*B*T*((5+3) + (3+3))*4*3 = 28*14*12
    assert cases.forward_flops("LSTM", 2, 3, 2, 7, 5) == 4704
    # GRU, I=H=4, L=1, B=1, T=1: 2*(4+4)*3*4
    assert cases.forward_flops("GRU", 1, 4, 1, 1, 4) == 192
    assert cases.forward_flops("RNN", 1, 4, 1, 1, 4) == 64
    # training counts forward + backward as 3x forward
    c = cases.Case("LSTM", 2, 3, 2, 7, "bf16", "train")
    assert cases.case_flops(c) == 3 * 2 * 2 * 7 * (6 + 6) * 4 * 3
    assert cases.case_flops(dataclasses.replace(c, mode="infer")) == 2 * 2 * 7 * 12 * 12


def test_peak_table_only_for_known_devices():
    assert cases.peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989
    assert cases.peak_tflops("NVIDIA H200", "tf32") == 494
    assert cases.peak_tflops("NVIDIA H100 80GB HBM3", "fp32") == 67
    assert cases.peak_tflops("NVIDIA H100 PCIe", "bf16") is None
    assert cases.peak_tflops("NVIDIA A100-SXM4-80GB", "bf16") is None


def test_case_selection():
    args = cli.parse_args(["--quick"])
    quick = cases.select_cases(args)
    for L in (2, 4):
        for H in (256, 512):
            for B in (1, 32, 512):
                for dt in ("tf32", "bf16"):
                    for mode in ("infer", "train"):
                        assert cases.Case("LSTM", L, H, B, 512, dt, mode) in quick
    assert all(c.dropout == 0 for c in quick if c.mode == "infer")
    # one layer (FlashRNN's own shape, H=512 at small batch), fp16, streaming T=1 calls
    for dt in ("bf16", "fp16"):
        for mode in ("infer", "train"):
            assert cases.Case("LSTM", 1, 768, 16, 1024, dt, mode) in quick
        assert {c.batch for c in quick if (c.layers, c.hidden, c.seq, c.dtype) == (1, 512, 512, dt)} == {1, 8, 32}
    assert {(c.batch, c.mode) for c in quick if c.dtype == "fp16" and c.layers == 4} == {
        (1, "infer"), (32, "infer"), (1, "train"), (32, "train")}
    stream = [c for c in quick if c.stream]
    assert {(c.layers, c.hidden, c.seq, c.mode) for c in stream} == {(4, 512, 1, "infer")}
    assert {c.batch for c in stream} == {1, 8} and "stream" in stream[0].label()
    assert cases.normalize(cases.Case("LSTM", 4, 512, 1, 1, "bf16", "train", stream=True)) is None
    one = cases.select_cases(cli.parse_args(
        "--cell gru --layers 4 --hidden 512 --batch 32 --seq 512 --dtype bf16 --mode train --dropout 0.2".split()))
    assert one == [cases.Case("GRU", 4, 512, 32, 512, "bf16", "train", 0.2)]
    full = cases.select_cases(cli.parse_args([]))
    assert not any(c.layers == 1 and c.dropout for c in full)
    assert len(full) == len(set(full))
    with pytest.raises(SystemExit):
        cli.parse_args(["--dtype", "fp8"])


def _result(**kw):
    base = dict(cell="LSTM", layers=2, hidden=256, batch=32, seq=512, input_size=256, dtype="bf16",
                mode="train", dropout=0.2)
    base.update(kw)
    return cases.Result(**base)


def test_csv_and_json_round_trip(tmp_path):
    rows = [
        _result(status="ok", fused_backend="fused: wavefront, 1/3 \"quoted\", comma", fused_ms=1 / 3,
                fused_ms_min=0.1, fused_ms_max=1e-9, speedup_vs_cudnn=2.5, host_syncs_fused=0,
                runs=20, buffers=8, default_sync="flags", fused_flags_ms=1 / 3, fused_grid_ms=0.5,
                fused_grid_vs_cudnn=0.25),
        _result(status="skipped", reason="out of memory", mode="infer", dropout=0.0),
    ]
    common.write_csv(tmp_path / "r.csv", rows)
    assert common.read_csv(tmp_path / "r.csv", cases.Result) == rows
    common.write_json(tmp_path / "r.json", {"device": "x"}, rows, floors=None)
    doc = common.read_json(tmp_path / "r.json")
    assert [cases.Result(**d) for d in doc["cases"]] == rows
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
                mem_fused_mib=10.0, mem_cudnn_mib=20.0, auto_backend="forward fused: test; backward fused: t",
                auto_ms=2.0, auto_vs_cudnn=0.4),
        _result(status="uncovered", dropout=0.0, batch=512, reason="the fused kernel cannot run it: H=1024",
                cudnn_ms=7.0, auto_backend="forward native: above 32; backward native: autograd",
                auto_ms=7.7, auto_vs_cudnn=1.1),
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
    # a run without the baselines beyond eager cuDNN says its ratios are against eager cuDNN
    assert report.EAGER_ONLY in text and "| 2.50× |" in text and "**2.50×**" not in text
    assert "— (uncovered)" in text and "uncovered: the fused kernel cannot run it: H=1024" in text
    assert "| 2 | 0.40 | fused |" in text and "| 7.7 | 1.10 (> 1.05) | native |" in text
    assert "auto / cuDNN ≤ 1.05" in text
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
    assert "old" not in once and "| 2.50× |" in once and once.endswith(f"{report.END}\n\ntail\n")
    assert "| 0.40 | fused |" in once
    report.main([str(out), "--update-readme", "--readme", str(readme)])
    assert readme.read_text() == once  # idempotent

    newer = _synthetic_run(tmp_path / "b", date="2027-01-01T00:00:00+00:00")
    shutil.move(str(newer), str(tmp_path / "results" / "newer-gpu"))
    assert report.latest_results_dir(str(tmp_path / "results")).endswith("newer-gpu")


def test_report_renders_rows_of_runs_before_the_auto_columns():
    old = {k: v for k, v in dataclasses.asdict(_result(status="fallback", reason="reference: x")).items()
           if not k.startswith("auto")}
    line = report.results_table([old]).splitlines()[-1]
    assert "| — | — | — |" in line and "fallback: reference: x" in line


def test_path_of_labels():
    assert report.path_of("fused: wavefront L=2") == "fused"
    assert report.path_of("native: batch 64 is above 32") == "native"
    assert report.path_of("forward fused: a; backward fused: b") == "fused"
    assert report.path_of("forward native: a; backward native: b") == "native"
    assert report.path_of("forward fused: a; backward reference: b") == "fused/reference"
    assert report.path_of("") == "—"


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
    monkeypatch.setattr(cases, "DEVICE", "cpu")
    monkeypatch.setattr(timing, "GRAPHS", _FakeGraphs())
    with cpu.cpu_threads(1):  # tiny shapes: extra threads only spin on a busy machine
        yield


def _copy_into(dst, src):
    if isinstance(dst, torch.Tensor):
        dst.copy_(src)
    elif isinstance(dst, (tuple, list)):
        for d, s_ in zip(dst, src):
            _copy_into(d, s_)


class _FakeGraph:
    """A 'CUDA graph' on the CPU: replay() runs the captured function again and writes its
    results into the tensors the capture returned, as a real replay rewrites them."""

    def __init__(self, fn, out):
        self.fn, self.out, self.replays = fn, out, 0

    def replay(self):
        self.replays += 1
        _copy_into(self.out, self.fn())

    def pool(self):
        return ("fake pool", id(self))


class _FakeGraphs:
    def __init__(self):
        self.graphs, self.pools = [], []

    def capture(self, fn, pool=None):
        self.pools.append(pool)
        out = fn()
        self.graphs.append(_FakeGraph(fn, out))
        return self.graphs[-1], out


def _fake_fused_rnn(fails_under=None, ignores_sync=False, backward_ignores_sync=False):
    """fused_rnn on the CPU with a fake "kernel" (torch's path underneath, labelled fused):
    LSTM's covers every call and is the default policy's choice in inference (native in
    training); RNN's covers every call and returns NaN (the default policy runs native); GRU
    is the real module (forcing "fused" on a CPU raises, as where the kernel cannot run).
    The fake kernel reads FUSED_RNN_SYNC at every call as the extension does (an invalid
    value raises; unset or auto runs flags) and names the policy in its label (with
    ignores_sync: always flags), and so does its backward's label (with
    backward_ignores_sync: always flags); under the policy `fails_under` it raises.
    `sync_calls` records the FUSED_RNN_SYNC value (None: unset) of each fake-kernel call."""
    import fused_rnn

    calls = []

    def sync_now():
        asked = os.environ.get("FUSED_RNN_SYNC")
        calls.append(asked)
        if (asked or "auto") not in ("grid", "flags", "auto"):
            raise RuntimeError(f"FUSED_RNN_SYNC must be 'grid', 'flags' or 'auto', got '{asked}'")
        if fails_under is not None and asked == fails_under:
            raise RuntimeError(f"fake kernel: launch failed under {asked} sync")
        return "grid" if asked == "grid" and not ignores_sync else "flags"

    def faked(cls, broken: bool, auto_picks_it_in_inference: bool):
        class Fake(cls):
            def forward(self, *a, **k):
                want = fused_rnn.dispatch.requested(self.backend)[0]
                if not (want == "fused" or (want == "auto" and auto_picks_it_in_inference
                                            and not self.training)):
                    return super().forward(*a, **k)
                sync = sync_now()
                with fused_rnn.backend("native"):
                    out, h = super().forward(*a, **k)
                self.last_backend = (f"fused: fake kernel (test), 5 wave steps, {sync} sync "
                                     f"(ring {2 if sync == 'grid' else 4}), state in shared memory")
                bsync = "flags" if backward_ignores_sync else sync
                self.last_backward_backend = (f"fused backward: fake (test), 5 wave steps, {bsync} sync"
                                              if torch.is_grad_enabled() else None)
                return (out * float("nan") if broken else out), h
        return Fake

    return types.SimpleNamespace(LSTM=faked(fused_rnn.LSTM, False, True), GRU=fused_rnn.GRU,
                                 RNN=faked(fused_rnn.RNN, True, False), backend=fused_rnn.backend,
                                 reference=fused_rnn.reference, dropout=fused_rnn.dropout,
                                 policy=fused_rnn.policy,
                                 backend_info=lambda: {"extension_loaded": True, "default_path": "fake"},
                                 __file__=fused_rnn.__file__, sync_calls=calls)


def test_gpu_sweep_logic_with_faked_cuda(fake_cuda, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FUSED_RNN_SYNC", raising=False)
    out = tmp_path / "out"
    args = cli.parse_args(["--cell", "LSTM,GRU,RNN", "--layers", "2", "--hidden", "8", "--batch", "2",
                             "--seq", "4", "--dtype", "tf32", "--mode", "infer,train", "--dropout", "0,0.2",
                             "--runs", "3", "--warmup", "1", "--out", str(out)])
    fr = _fake_fused_rnn()
    flash = _fake_flashrnn()
    monkeypatch.setattr(baselines, "load_flashrnn", lambda: (flash, None))
    assert sweep.gpu_main(args, fr) == 0
    assert "FUSED_RNN_SYNC" not in os.environ  # set around the grid calls only
    doc = common.read_json(out / "results.json")
    assert doc["meta"]["device"] == "NVIDIA H100 80GB HBM3" and doc["meta"]["runs"] == 3
    assert doc["meta"]["auto_target"] == 1.05
    rows = {(r["cell"], r["mode"], r["dropout"]): r for r in doc["cases"]}
    assert set(rows) == {(c, m, p) for c in ("LSTM", "GRU", "RNN") for m, p in
                         (("infer", 0.0), ("train", 0.0), ("train", 0.2))}
    for r in doc["cases"]:  # what users get is timed in every case, against cuDNN
        assert r["auto_ms"] > 0 and r["auto_vs_cudnn"] == pytest.approx(r["auto_ms"] / r["cudnn_ms"])
    ok = rows[("LSTM", "infer", 0.0)]
    assert ok["status"] == "ok", ok["reason"]
    assert ok["speedup_vs_cudnn"] == pytest.approx(ok["cudnn_ms"] / ok["fused_ms"])
    assert ok["us_per_wave_step"] == pytest.approx(1e3 * ok["fused_ms"] / (4 + 2 - 1))
    assert ok["max_abs_diff_vs_cudnn"] < 1e-5  # the same weights in both modules
    assert ok["reference_ms"] is not None and ok["mem_fused_mib"] == 3.0
    assert ok["peak_share_fused"] == pytest.approx(ok["tflops_fused"] / 494)
    # the default policy chose the kernel: the forced-fused timing is that very call's
    assert ok["auto_backend"] == ("fused: fake kernel (test), 5 wave steps, flags sync (ring 4), "
                                  "state in shared memory")
    assert (ok["auto_ms"], ok["auto_ms_min"], ok["auto_ms_max"]) == (
        ok["fused_ms"], ok["fused_ms_min"], ok["fused_ms_max"])
    # both synchronisation policies, the default's (unset: auto = flags) being fused_ms itself;
    # the full sweep's default times grid in training too (--sync-compare all)
    assert args.sync_compare == "all" and doc["meta"]["sync_compare"] == "all"
    assert doc["meta"]["sync_requested"] == "auto"
    for key in (("LSTM", "infer", 0.0), ("LSTM", "train", 0.0), ("LSTM", "train", 0.2)):
        r = rows[key]
        assert r["default_sync"] == "flags" and "flags sync" in r["fused_backend"]
        assert (r["fused_flags_ms"], r["fused_flags_ms_min"], r["fused_flags_ms_max"]) == (
            r["fused_ms"], r["fused_ms_min"], r["fused_ms_max"])
        assert r["fused_grid_ms_min"] <= r["fused_grid_ms"] <= r["fused_grid_ms_max"]
        for policy in ("flags", "grid"):
            assert r[f"fused_{policy}_vs_cudnn"] == pytest.approx(r[f"fused_{policy}_ms"] / r["cudnn_ms"])
        assert "fused_grid" not in r["reason"]
    # the grid calls ran with FUSED_RNN_SYNC=grid; every other fake-kernel call with it unset
    assert set(fr.sync_calls) == {None, "grid"} and fr.sync_calls.count("grid") >= 3 * (1 + 3)
    for key in (("GRU", "infer", 0.0), ("RNN", "infer", 0.0)):  # refused, or wrong: no ratios
        r = rows[key]
        assert r["fused_grid_ms"] is None and r["fused_grid_vs_cudnn"] is None
        assert r["fused_flags_vs_cudnn"] is None
    train = rows[("LSTM", "train", 0.0)]  # the kernel ran forced; the default policy ran native
    assert train["status"] == "ok" and train["fused_backend"].startswith("forward fused")
    assert train["auto_backend"].startswith("forward native") and "backward native" in train["auto_backend"]
    assert train["auto_ms"] != train["fused_ms"]  # timed, not copied
    assert rows[("LSTM", "train", 0.2)]["status"] == "ok"
    assert rows[("LSTM", "train", 0.2)]["max_abs_diff_vs_cudnn"] is None  # dropout: no value check
    for key in (("GRU", "infer", 0.0), ("GRU", "train", 0.0)):  # forcing the kernel raised
        r = rows[key]
        assert r["status"] == "uncovered" and r["speedup_vs_cudnn"] is None and r["fused_ms"] is None
        assert r["reason"].startswith("the fused kernel cannot run it: ") and "CUDA-only" in r["reason"]
        assert report.path_of(r["auto_backend"]) == "native"
    # every baseline on the same weights and inputs, each checked against the float64 reference
    assert doc["meta"]["baselines"] == ["cudnn", "cudnn_graph", "cudnn_persist", "flashrnn"]
    for r in (ok, train):
        for name in ("cudnn_graph", "flashrnn", "fused_graph"):
            assert r[f"{name}_ms"] > 0 and r[f"{name}_parity"] == "ok" and r[f"{name}_err"] < 1e-4, name
        assert r["fused_parity"] == "ok" and r["cudnn_err"] < 1e-4 and r["flashrnn_build_s"] >= 0
        assert r["cudnn_persist_ms"] is None and "cudnn_persist: H=8: cuDNN's persistent small-H " \
            "algorithm" in r["baseline_notes"]
        # the headline: the fastest baseline against the faster of ours
        base = {n: r[f"{n}_ms"] for n in ("cudnn", "cudnn_graph", "flashrnn")}
        assert r["best_baseline"] == min(base, key=base.get) and r["best_baseline_ms"] == min(base.values())
        assert r["fused_best_ms"] == min(r["fused_ms"], r["fused_graph_ms"])
        assert r["speedup_vs_best"] == pytest.approx(r["best_baseline_ms"] / r["fused_best_ms"])
    drop = rows[("LSTM", "train", 0.2)]  # dropout: values differ by design, parity not checked
    assert drop["fused_parity"] == "" and drop["cudnn_graph_parity"] == "" and drop["cudnn_graph_ms"] > 0
    assert {c[0][0] for c in flash.calls} == {2}  # B = 2: FlashRNN got the case's shape
    gru = rows[("GRU", "infer", 0.0)]
    assert "flashrnn: FlashRNN's fused kernel is compared for LSTM only" in gru["baseline_notes"]
    assert gru["cudnn_graph_ms"] > 0 and gru["fused_graph_ms"] is None  # the kernel refused it
    assert gru["best_baseline"] in ("cudnn", "cudnn_graph") and gru["speedup_vs_best"] is None
    # with dropout the values are not compared, but NaN is still caught
    assert rows[("RNN", "train", 0.2)]["status"] == "mismatch"
    assert rows[("RNN", "train", 0.2)]["fused_parity"] == "FAIL: output is not finite"
    bad = rows[("RNN", "infer", 0.0)]  # wrong output: labelled, no speedup claimed
    assert bad["status"] == "mismatch" and "nan" in bad["reason"] and bad["speedup_vs_cudnn"] is None
    assert bad["fused_parity"] == "FAIL: output is not finite" and bad["speedup_vs_best"] is None
    assert "fused kernel against the float64 reference: FAIL" in bad["reason"]
    assert bad["auto_backend"].startswith("native")
    assert common.read_csv(out / "results.csv", cases.Result)[0].cell == "LSTM"
    md = (out / "results.md").read_text()
    assert "uncovered" in md and "auto / cuDNN" in md and "| native |" in md
    assert "kernel ms flags / grid (default)" in md and " (flags) |" in md
    assert "FUSED_RNN_SYNC=auto (the default)" in md and "in every case" in md
    printed = capsys.readouterr().out
    assert "auto (fused)" in printed and "auto (native)" in printed
    assert "flags sync; grid " in printed and "the other policy's, timed in one process" in printed
    assert "fused_rnn as users get it (auto) within 1.05x cuDNN's time: " in printed
    assert "/9 timed cases" in printed


# ------------------------------------------------- the two synchronisation policies


def test_env_var_is_set_inside_and_restored_after_even_on_errors(monkeypatch):
    monkeypatch.delenv("FUSED_RNN_SYNC", raising=False)
    assert common.requested_sync() == "auto"
    with common.sync_policy("grid"):
        assert os.environ["FUSED_RNN_SYNC"] == "grid" and common.requested_sync() == "grid"
    assert "FUSED_RNN_SYNC" not in os.environ  # absent before: absent after, not ""
    monkeypatch.setenv("FUSED_RNN_SYNC", "flags")
    with pytest.raises(ZeroDivisionError):
        with common.sync_policy("grid"):
            1 / 0
    assert os.environ["FUSED_RNN_SYNC"] == "flags"
    with pytest.raises(KeyboardInterrupt):
        with common.sync_policy(None):  # None: unset inside
            assert "FUSED_RNN_SYNC" not in os.environ and common.requested_sync() == "auto"
            raise KeyboardInterrupt
    assert os.environ["FUSED_RNN_SYNC"] == "flags"
    monkeypatch.setenv("FUSED_RNN_SYNC", "")
    assert common.requested_sync() == "auto"  # empty means unset, as in the extension
    with common.sync_policy("flags"):
        pass
    assert os.environ["FUSED_RNN_SYNC"] == ""


def test_sync_of_labels():
    plan = ("fused: LSTM bf16 L=2 D=1 H=512 I=512 B=32 T=512; 64 CTAs (32 per layer-direction, 16 "
            "units each), batch tile 32, K chunk 64 (1+1 splits), smem 200 KiB/CTA, 1 CTA/SM, bf16 "
            "tensor cores, 514 wave steps, {} sync (ring {}), state in shared memory")
    assert sweep.sync_of(plan.format("flags", 4)) == "flags"
    assert sweep.sync_of(plan.format("grid", 2)) == "grid"
    assert sweep.sync_of(f"forward {plan.format('grid', 2)}; backward fused backward: 33 wave steps, flags sync") == "grid"
    assert sweep.sync_of(f"forward {plan.format('grid', 2)}; backward fused backward: 33 wave steps, flags sync", "backward") == "flags"
    assert sweep.sync_of(f"forward {plan.format('grid', 2)}; backward native: autograd", "backward") is None
    assert sweep.sync_of(plan.format("flags", 4), "backward") is None
    assert sweep.sync_of("forward native: batch 64 is above 32; backward native: autograd") is None
    assert sweep.sync_of("fused: an older plan, 514 wave steps, state in shared memory") is None
    assert sweep.sync_of("") is None


def test_sync_compare_defaults_and_clash():
    assert cli.parse_args(["--quick"]).sync_compare == "infer"  # scripts/gpu_check.sh's budget
    assert cli.parse_args([]).sync_compare == "all"
    assert cli.parse_args(["--quick", "--sync-compare", "all"]).sync_compare == "all"
    assert cli.parse_args(["--calibrate"]).sync_compare == "none"
    for bad in (["--sync-compare", "both"], ["--calibrate", "--sync-compare", "all"]):
        with pytest.raises(SystemExit):
            cli.parse_args(bad)


def _run_one(fr, *flags, mode="infer", dropout=0.0):
    """One faked-CUDA case (LSTM L=2 H=8 B=2 T=4 tf32) through the Runner: its Result."""
    args = cli.parse_args(["--runs", "2", "--reference", "off", "--no-flashrnn", *flags])
    return sweep.Runner(args, fr).run_case(cases.Case("LSTM", 2, 8, 2, 4, "tf32", mode, dropout))


def test_sync_compare_infer_times_grid_in_inference_only(fake_cuda, monkeypatch):
    monkeypatch.delenv("FUSED_RNN_SYNC", raising=False)
    fr = _fake_fused_rnn()
    infer = _run_one(fr, "--sync-compare", "infer")
    assert infer.status == "ok" and infer.default_sync == "flags"
    assert infer.fused_grid_ms > 0 and infer.fused_flags_ms == infer.fused_ms
    assert infer.fused_grid_vs_cudnn == pytest.approx(infer.fused_grid_ms / infer.cudnn_ms)
    assert "grid" in fr.sync_calls
    del fr.sync_calls[:]
    train = _run_one(fr, "--sync-compare", "infer", mode="train")
    assert train.status == "ok" and train.default_sync == "flags"
    assert train.fused_flags_ms == train.fused_ms and train.fused_flags_vs_cudnn is not None
    assert train.fused_grid_ms is None and train.fused_grid_vs_cudnn is None
    assert set(fr.sync_calls) == {None}  # nothing ran under grid
    none = _run_one(fr, "--sync-compare", "none")
    assert none.fused_grid_ms is None and none.fused_flags_ms == none.fused_ms
    assert "FUSED_RNN_SYNC" not in os.environ


def test_training_checks_the_backwards_policy_too(fake_cuda, monkeypatch):
    """In training both kernels follow FUSED_RNN_SYNC: a backward that ran another policy
    than the one asked for drops the times, as a forward's would."""
    monkeypatch.delenv("FUSED_RNN_SYNC", raising=False)
    good = _run_one(_fake_fused_rnn(), "--sync-compare", "all", mode="train")
    assert good.status == "ok" and good.fused_grid_ms > 0 and good.fused_flags_ms == good.fused_ms
    r = _run_one(_fake_fused_rnn(backward_ignores_sync=True), "--sync-compare", "all", mode="train")
    assert r.status == "ok" and r.fused_grid_ms is None and r.fused_grid_ms_min is None
    assert "FUSED_RNN_SYNC=grid, but the kernel ran flags sync (backward: forward fused:" in r.reason
    assert "FUSED_RNN_SYNC" not in os.environ


def test_sync_policy_set_by_the_user_is_the_default_and_restored(fake_cuda, monkeypatch):
    """FUSED_RNN_SYNC=grid in the environment: fused_ms is grid's; flags is the other policy,
    set around its calls only; grid again afterwards."""
    monkeypatch.setenv("FUSED_RNN_SYNC", "grid")
    fr = _fake_fused_rnn()
    r = _run_one(fr)
    assert r.status == "ok" and r.default_sync == "grid" and r.fused_grid_ms == r.fused_ms
    assert r.fused_flags_ms > 0 and "flags sync" not in r.fused_backend
    assert os.environ["FUSED_RNN_SYNC"] == "grid"
    assert set(fr.sync_calls) == {"grid", "flags"}


def test_other_policy_failing_is_a_note_and_the_environment_is_restored(fake_cuda, monkeypatch):
    monkeypatch.delenv("FUSED_RNN_SYNC", raising=False)
    r = _run_one(_fake_fused_rnn(fails_under="grid"))
    assert r.status == "ok" and r.speedup_vs_cudnn is not None  # the default ran: the case is ok
    assert r.fused_grid_ms is None and r.fused_grid_vs_cudnn is None
    assert "fused_grid: RuntimeError: fake kernel: launch failed under grid sync" in r.reason
    assert "FUSED_RNN_SYNC" not in os.environ
    # an extension that ignores the variable: its "grid" times are not reported as grid's
    r = _run_one(_fake_fused_rnn(ignores_sync=True))
    assert r.status == "ok" and r.fused_grid_ms is None and r.fused_grid_ms_min is None
    assert "FUSED_RNN_SYNC=grid, but the kernel ran flags sync" in r.reason
    assert "FUSED_RNN_SYNC" not in os.environ


def test_invalid_sync_policy_stops_the_gpu_sweep(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("FUSED_RNN_SYNC", "barrier")
    assert cli.main(["--quick"]) == 2
    assert "FUSED_RNN_SYNC='barrier'" in capsys.readouterr().err


def test_results_table_sync_column_and_note():
    row = dataclasses.asdict(_result(status="ok", dropout=0.0, fused_ms=2.0, fused_flags_ms=2.0,
                                     fused_grid_ms=2.5, default_sync="flags", cudnn_ms=4.0))
    assert "| 2 / 2.5 (flags) |" in report.results_table([row])
    row.update(fused_grid_ms=None)
    assert "| 2 / — (flags) |" in report.results_table([row])
    old = {k: v for k, v in row.items() if "sync" not in k and "flags" not in k and "grid" not in k}
    assert report.sync_cell(old) == "—" and report.sync_note({}) == ""
    note = report.sync_note({"sync_compare": "infer", "sync_requested": "auto"})
    assert "FUSED_RNN_SYNC=auto (the default)" in note and "inference cases only" in note
    note = report.sync_note({"sync_compare": "none", "sync_requested": "grid"})
    assert "FUSED_RNN_SYNC=grid, set in the environment: not the default" in note
    assert "not timed (--sync-compare none)" in note


# ------------------------------------------------------------------ --calibrate


def test_calibrate_needs_a_gpu(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["--calibrate"]) == 2
    assert "--calibrate needs a CUDA GPU" in capsys.readouterr().err
    for clash in (["--quick"], ["--mode", "train"], ["--margin", "1.2"], ["--direction", "up"]):
        with pytest.raises(SystemExit):
            cli.parse_args(["--calibrate"] + clash)
    assert cli.parse_args(["--calibrate"]).runs == 10 and cli.parse_args([]).runs == 20
    with pytest.raises(SystemExit):
        cli.parse_args(["--direction", "bi"])  # the sweep's cases are unidirectional
    assert cli.parse_args(["--calibrate", "--seq", "64,1024", "--direction", "bi"]).seq == [64, 1024]


def _timings(table):
    """point(B) from {B: (fused_ms, cudnn_ms)}; a missing B fails the test if asked for."""
    asked = []

    def point(B):
        asked.append(B)
        return table[B]
    return point, asked


def test_calibration_series_stops_at_the_first_loss():
    never = lambda: False  # noqa: E731
    point, asked = _timings({1: (0.5, 1.0), 2: (0.9, 1.0), 4: (0.95, 1.0), 8: (0.96, 1.0), 16: (0.1, 1.0)})
    s = calibrate.walk_series([16, 8, 4, 2, 1], point, 0.95, never)
    assert s.max_batch == 4 and s.complete and asked == [1, 2, 4, 8]  # 16 never measured
    assert s.points == [[1, 0.5, 1.0], [2, 0.9, 1.0], [4, 0.95, 1.0], [8, 0.96, 1.0]]
    assert s.stop.startswith("B=8: fused 0.96 ms > 0.95 x cuDNN 1 ms")
    point, asked = _timings({1: (1.0, 1.0), 2: (0.1, 1.0)})
    s = calibrate.walk_series([1, 2], point, 0.95, never)  # B=1 lost: never fused
    assert s.max_batch == 0 and asked == [1] and s.complete
    point, _ = _timings({1: (0.1, 1.0), 2: (0.1, 1.0)})
    s = calibrate.walk_series([1, 2], point, 0.95, never)
    assert s.max_batch == 2 and "won at every batch" in s.stop

    def refused(B):
        if B > 1:
            raise RuntimeError(f"fused_rnn: the fused kernel was requested (x) but cannot run this call: B={B}")
        return 0.1, 1.0
    s = calibrate.walk_series([1, 2, 4], refused, 0.95, never)
    assert s.max_batch == 1 and s.stop == "B=2: the fused kernel cannot run it: B=2" and s.complete


def test_calibration_leaves_out_a_shape_cut_short_by_the_time_budget(capsys):
    shapes = [calibrate.Shape("bf16", "LSTM", 2, 256), calibrate.Shape("bf16", "GRU", 2, 256)]
    calls = []

    def point(shape, train, B, graphed):
        calls.append((shape.cell, train, B, graphed))
        # eager: wins up to B = 8 of 1, 2, 4, 8, 16; in a CUDA graph up to B = 4
        return (0.2 if graphed else 0.1) * B, 1.0
    entries, incomplete = calibrate.calibrate(shapes, [1, 2, 4, 8, 16], point, 0.95, lambda: len(calls) >= 21)
    assert [e["mode"] for e in entries] == ["LSTM"] and incomplete.startswith("the time budget ran out")
    e = entries[0]
    assert (e["forward_max_batch"], e["training_max_batch"]) == (8, 8)
    assert (e["graphed_forward_max_batch"], e["graphed_training_max_batch"]) == (4, 4)
    assert e["measured"]["forward"][-1] == [16, 1.6, 1.0] and e["bidirectional"] is False
    assert e["measured"]["graphed_forward"][-1] == [8, 1.6, 1.0]
    assert "graphed_training_stop" in e["measured"]
    # eager inference, training, then both in a graph: 5 + 5 + 4 + 4 points
    assert [c[3] for c in calls[:18]] == [False] * 10 + [True] * 8
    # GRU's inference walk measured B = 1, 2, 4 (calls 19 to 21), then time ran out
    out = capsys.readouterr().out
    assert "GRU L=2 H=256 infer: incomplete, left out (out of time before B=8)" in out
    assert "LSTM L=2 H=256 train in a CUDA graph: max batch 4" in out
    # --no-graphed: the eager series only, and no graphed fields
    calls.clear()
    entries, incomplete = calibrate.calibrate(shapes[:1], [1, 2], point, 0.95, lambda: False, graphed=False)
    assert incomplete is None and "graphed_forward_max_batch" not in entries[0]
    assert {c[3] for c in calls} == {False}


def _fake_point(shape, train, B, graphed=False):
    """bf16 LSTM: fused wins inference up to B=8, training up to B=2; in a CUDA graph up to
    B=4 and B=1; GRU: never."""
    if shape.cell == "GRU":
        return 2.0, 1.0
    return (0.3 if train else 0.1) * B * (2 if graphed else 1), 1.0


def test_calibrate_writes_a_table_the_policy_reads(fake_cuda, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("FUSED_RNN_SYNC", raising=False)
    monkeypatch.setattr(calibrate.Calibrator, "point", lambda self, *a, **k: _fake_point(*a, **k))
    fr = _fake_fused_rnn()
    args = cli.parse_args(["--calibrate", "--dtype", "bf16", "--cell", "LSTM,GRU", "--layers", "2",
                             "--hidden", "256", "--seq", "256", "--direction", "uni", "--out", str(tmp_path)])
    assert calibrate.calibrate_main(args, fr) == 0
    path = tmp_path / "nvidia-h100-80gb-hbm3.json"
    table = common.read_json(path)
    fr.policy.check_table(table)
    assert table["device"] == "NVIDIA H100 80GB HBM3" and table["capability"] == [9, 0]
    assert table["sm_count"] == 132 and table["seq_len"] == 256 and table["margin"] == 0.95
    assert table["runs"] == 10 and "incomplete" not in table
    assert all(table[k] is not None for k in ("date", "commit", "torch", "command"))
    lookup = functools.partial(fr.policy.max_batch_for, "NVIDIA H100 80GB HBM3", directory=str(tmp_path))
    fr.policy.tables.cache_clear()
    try:
        assert lookup("bf16", "LSTM", 2, 256, False, False)[0] == 8
        assert lookup("bf16", "LSTM", 2, 256, False, True)[0] == 2
        assert lookup("bf16", "LSTM", 4, 256, False, False)[0] == 8  # nearest: fewer layers
        assert lookup("bf16", "GRU", 2, 256, False, False)[0] == 0
        assert lookup("bf16", "LSTM", 2, 512, False, False)[0] == 0  # nothing measured that wide
        # inside a CUDA-graph capture: the graphed crossover
        assert lookup("bf16", "LSTM", 2, 256, False, False, graphed=True)[0] == 4
        n, where = lookup("bf16", "LSTM", 2, 256, False, True, graphed=True)
        assert n == 1 and "against cuDNN in a CUDA graph" in where
        n, where = lookup("bf16", "LSTM", 2, 256, False, True)
        assert "calibrated on NVIDIA H100 80GB HBM3" in where
    finally:
        fr.policy.tables.cache_clear()
    out = capsys.readouterr().out
    assert "| bf16 | LSTM | 2 | 256 | uni | 256 | 8 | 2 | 4 | 1 |" in out and "wrote " in out
    assert "eagerly and with both captured in CUDA graphs" in out
    assert "under FUSED_RNN_SYNC=auto (the default policy)" in out


def test_calibrate_default_grid_covers_layers_directions_cells_and_lengths(fake_cuda, tmp_path, monkeypatch):
    """The default grid: L = 1..4, uni- and bidirectional, LSTM, GRU, RNN (tanh) and RNN_RELU,
    H up to 1024, T in {64, 256, 1024}; each entry names its direction and seq_len, and the
    policy reads the nearest T."""
    g = calibrate.CALIBRATE
    assert g["layers"] == [1, 2, 3, 4] and g["direction"] == ["uni", "bi"] and max(g["hidden"]) == 1024
    assert set(g["cell"]) == {"LSTM", "GRU", "RNN", "RNN_RELU"} and g["seq"] == [64, 256, 1024]
    seen = []

    def point(self, shape, train, B, graphed=False):
        seen.append(shape)
        # fused wins up to B = 2 at T = 64, up to B = 8 at T >= 256; bidirectional never
        return (2.0 if shape.bidirectional else (0.4 if shape.seq == 64 else 0.1) * B), 1.0
    monkeypatch.setattr(calibrate.Calibrator, "point", point)
    fr = _fake_fused_rnn()
    args = cli.parse_args(["--calibrate", "--dtype", "bf16", "--cell", "RNN_RELU", "--layers", "1",
                             "--hidden", "256", "--no-graphed", "--out", str(tmp_path)])
    assert calibrate.calibrate_main(args, fr) == 0
    table = common.read_json(tmp_path / "nvidia-h100-80gb-hbm3.json")
    fr.policy.check_table(table)
    got = {(e["bidirectional"], e["seq_len"]): e["forward_max_batch"] for e in table["entries"]}
    assert got == {(False, 64): 2, (False, 256): 8, (False, 1024): 8, (True, 64): 0, (True, 256): 0,
                   (True, 1024): 0}
    assert {e["mode"] for e in table["entries"]} == {"RNN_RELU"} and table["seq_len"] == 256
    assert {(s.bidirectional, s.seq) for s in seen} == set(got)
    fr.policy.tables.cache_clear()
    try:
        look = functools.partial(fr.policy.max_batch_for, "NVIDIA H100 80GB HBM3", "bf16", "RNN_RELU", 1,
                                 256, False, False, directory=str(tmp_path))
        assert look(seq_len=50)[0] == 2 and look(seq_len=300)[0] == 8 and look()[0] == 8
    finally:
        fr.policy.tables.cache_clear()
    # the modules: RNN_RELU is nn.RNN with relu, bidirectional where asked
    ref, fused = sweep.make_modules(fr, "RNN_RELU", 1, 8, 8, 0.0, "cpu", torch.float32, bidirectional=True)
    assert ref.nonlinearity == fused.nonlinearity == "relu" and ref.bidirectional and fused.bidirectional


def test_calibrate_out_of_time_writes_an_incomplete_table(fake_cuda, tmp_path, monkeypatch, capsys):
    clock = [0.0]

    def point(self, *a, **k):
        clock[0] += 1.0  # each point takes a second
        return _fake_point(*a, **k)
    monkeypatch.setattr(calibrate.Calibrator, "point", point)
    monkeypatch.setattr(calibrate, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    fr = _fake_fused_rnn()
    args = cli.parse_args(["--calibrate", "--dtype", "bf16", "--cell", "GRU,LSTM", "--layers", "2",
                             "--hidden", "256", "--seq", "256", "--direction", "uni", "--time-budget", "5",
                             "--out", str(tmp_path)])
    assert calibrate.calibrate_main(args, fr) == 0
    table = common.read_json(tmp_path / "nvidia-h100-80gb-hbm3.json")
    fr.policy.check_table(table)
    # GRU: one point each way (lost at B=1); LSTM's inference walk passes the deadline
    assert [e["mode"] for e in table["entries"]] == ["GRU"]
    assert table["incomplete"].startswith("the time budget ran out during shape 2 of 2")
    assert "INCOMPLETE" in capsys.readouterr().out


def test_calibrator_point_times_the_forced_kernel_or_reports_its_refusal(fake_cuda):
    args = cli.parse_args(["--calibrate", "--runs", "2"])
    cal = calibrate.Calibrator(args, _fake_fused_rnn(), seq=3)
    for train in (False, True):
        fused_ms, cudnn_ms = cal.point(calibrate.Shape("tf32", "LSTM", 2, 8), train, 2)
        assert fused_ms > 0 and cudnn_ms > 0
        # bidirectional, its own T (the output gradient 2 H wide)
        fused_ms, cudnn_ms = cal.point(calibrate.Shape("tf32", "LSTM", 2, 8, True, 4), train, 2)
        assert fused_ms > 0 and cudnn_ms > 0 and cal.modules[0].bidirectional
    s = calibrate.walk_series([1, 2], functools.partial(cal.point, calibrate.Shape("tf32", "GRU", 2, 8), False),
                          0.95, lambda: False)
    assert s.max_batch == 0 and s.points == [] and "cannot run it" in s.stop and "CUDA-only" in s.stop
    # in CUDA graphs (faked): both captured, one graph per input buffer, sharing one pool
    graphs = timing.GRAPHS.graphs
    for train in (False, True):
        del graphs[:]
        fused_ms, cudnn_ms = cal.point(calibrate.Shape("tf32", "LSTM", 2, 8), train, 2, graphed=True)
        # 8 input buffers (tiny inputs, the fake 50 MiB L2), one graph each, per implementation
        assert fused_ms > 0 and cudnn_ms > 0 and len(graphs) == 2 * 8
        assert graphs[0].replays >= 2 and graphs[8].replays >= 2  # the first call, a warm-up run
        pools = timing.GRAPHS.pools[-16:]  # each implementation's graphs share its first one's pool
        assert pools[0] is None and pools[1:8] == [graphs[0].pool()] * 7 and pools[8] is None
    s = calibrate.walk_series([1, 2], functools.partial(cal.point, calibrate.Shape("tf32", "GRU", 2, 8), False,
                                                        graphed=True), 0.95, lambda: False)
    assert s.max_batch == 0 and "CUDA-only" in s.stop


# ------------------------------------------------------------------ floors.cu


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_floors_cu_compiles_for_sm90a_with_bare_nvcc(tmp_path):
    src = os.path.join(BENCH, "csrc", "floors.cu")
    assert "torch" not in "".join(l for l in open(src) if l.startswith("#include"))
    lib = tmp_path / "floors.so"
    # sm_80 too: floors.py builds for the GPU it runs on, and the cluster kernels must compile
    # (empty) where there are no clusters
    r = subprocess.run(["nvcc", "-std=c++17", "-O3", "-gencode=arch=compute_90a,code=sm_90a",
                        "-gencode=arch=compute_80,code=sm_80", "-shared", "-Xcompiler", "-fPIC", src, "-o",
                        str(lib)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    so = floors.load_library(str(lib))  # cudart is linked statically: loads without a GPU
    assert so.floors_error_string(0) == b"no error"
    if not torch.cuda.is_available():  # the calls fail cleanly, with CUDA's message
        row = floors.grid_sync(so, 128, False, iters=10, repeats=1, device=0)
        assert row["us"] is None and row["reason"]
        row = floors.cluster_sync(so, 16, True, iters=10, repeats=1, device=0)
        assert row["us"] is None and row["reason"].startswith("not available")
        row = floors.flag_pingpong(so, iters=10, repeats=1, device=0)
        assert row["us"] is None and row["round_trip_us"] is None and row["reason"]
        row = floors.flag_wait_all(so, 32, iters=10, repeats=1, device=0)
        assert row["us"] is None and row["grid_sync_us"] is None and row["reason"]
        row = floors.flag_stores_pingpong(so, 4, iters=10, repeats=1, device=0)
        assert row["us"] is None and row["reason"]
        row = floors.dsmem_pingpong(so, iters=10, repeats=1, device=0)
        assert row["us"] is None and row["round_trip_us"] is None and row["reason"].startswith("not available")
        row = floors.dsmem_bandwidth(so, 8, iters=10, repeats=1, device=0)
        assert row["us"] is None and row["gb_s"] is None and row["reason"].startswith("not available")
        row = floors.dsmem_all_to_all(so, 8, iters=10, repeats=1, device=0)
        assert row["us"] is None and row["bytes_per_peer"] == 512 and row["reason"].startswith("not available")
        row = floors.max_active_clusters(so, 16, 200, device=0)
        assert row["clusters"] == 0 and row["reason"].startswith("not available")
    assert so.floors_error_string(-1).startswith(b"a step counter did not end")
    assert so.floors_error_string(floors.ERR_PAYLOAD).startswith(b"a DSMEM payload was not there")
    assert so.floors_error_string(-3).startswith(b"no such cluster can be co-resident")


def test_floors_cu_uses_the_kernels_sync_primitives():
    # the flag measurements must time the forward kernel's own publish / poll, not a copy
    src = open(os.path.join(BENCH, "csrc", "floors.cu")).read()
    assert '#include "../../csrc/kernels/sync_flags.cuh"' in src
    assert os.path.isfile(os.path.join(BENCH, "..", "csrc", "kernels", "sync_flags.cuh"))
    for kernel in ("flag_pingpong_kernel", "flag_wait_all_kernel"):
        body = src.split(f"__global__ void {kernel}(")[1].split("\n}\n")[0]
        assert "wait_for_ranges(" in body and "flag_publish(" in body
        assert "asm" not in body and "while" not in body  # every spin is sync_flags.cuh's bounded one
    # the DSMEM measurements time the kernels' own st.async / mbarrier primitives
    assert '#include "../../csrc/kernels/cluster_copy.cuh"' in src
    for kernel in ("dsmem_pingpong_kernel", "dsmem_bandwidth_kernel", "dsmem_all_to_all_kernel"):
        body = src.split(f"__global__ void {kernel}(")[1].split("\n}\n")[0]
        assert "st_async_v4(" in body and "mbar_wait(" in body and "mbar_arrive_expect_tx(" in body
        assert "asm" not in body and "while" not in body
        assert "__CUDA_ARCH__ >= 900" in body  # no cluster code where the arch has none


class _FakeFlagLib:
    """floors.cu's flag entry points faked in Python (CPU test only): a launch of n steps takes
    launch_ms + n * step_us (flags) or n * grid_us (grid.sync); all numbers made up."""

    def __init__(self, sms=132, step_us=2.0, grid_us=1.5, round_trip_us=1.6, launch_ms=0.03,
                 distinct=None, fail_grid=False):
        self.sms, self.step_us, self.grid_us, self.rt_us = sms, step_us, grid_us, round_trip_us
        self.launch_ms, self.distinct, self.fail_grid, self.calls = launch_ms, distinct, fail_grid, []

    def floors_error_string(self, code):
        return f"fake error {code}".encode()

    def floors_sm_count(self, device, sms):
        sms._obj.value = self.sms
        return 0

    def floors_flag_pingpong(self, device, threads, n, ms, sm0, sm1):
        self.calls.append(("pingpong", threads, n))
        ms._obj.value, sm0._obj.value, sm1._obj.value = self.launch_ms + n * self.rt_us * 1e-3, 3, 70
        return 0

    def floors_flag_wait_all(self, device, producers, consumers, threads, n, mode, ms, distinct):
        self.calls.append(("wait_all", producers, consumers, threads, n, mode))
        if mode == 1 and self.fail_grid:
            return 720
        # modes 2 and 3 (relaxed polls + fence; one counter): made-up fractions of a step
        per_step = {0: self.step_us, 1: self.grid_us, 2: 0.75 * self.step_us,
                    3: 0.5 * self.step_us}[mode]
        ms._obj.value = self.launch_ms + n * per_step * 1e-3
        distinct._obj.value = producers + consumers if self.distinct is None else self.distinct
        return 0

    def floors_flag_stores_pingpong(self, device, threads, stores, n, ms, sm0, sm1):
        self.calls.append(("stores", threads, stores, n))
        ms._obj.value = self.launch_ms + n * (self.rt_us + 0.1 * stores) * 1e-3
        sm0._obj.value, sm1._obj.value = 3, 70
        return 0


def test_flag_floors_logic_with_a_fake_library():
    lib = _FakeFlagLib()
    row = floors.flag_pingpong(lib, iters=100, repeats=3, device=0)
    # one hand-off is half a round trip; launch overhead cancels
    assert row["round_trip_us"] == pytest.approx(1.6) and row["us"] == pytest.approx(0.8)
    assert row["sms"] == [3, 70] and row["threads"] == floors.FLAG_THREADS and "note" not in row
    assert {c[2] for c in lib.calls} == {100, 200}

    lib = _FakeFlagLib()
    row = floors.flag_wait_all(lib, 32, iters=100, repeats=3, device=0)
    assert row["us"] == pytest.approx(2.0) and row["grid_sync_us"] == pytest.approx(1.5)
    assert row["relaxed_fence_us"] == pytest.approx(1.5) and row["one_counter_us"] == pytest.approx(1.0)
    assert row["blocks"] == 33 and row["distinct_sms"] == 33 and "reason" not in row and "note" not in row
    assert {c[5] for c in lib.calls} == {0, 1, 2, 3} and {c[1:4] for c in lib.calls} == {(32, 1, 256)}

    # the publish behind N outstanding stores per thread: half a round trip
    lib = _FakeFlagLib()
    row = floors.flag_stores_pingpong(lib, 16, iters=100, repeats=3, device=0)
    assert row["us"] == pytest.approx((1.6 + 1.6) / 2) and row["stores"] == 16 and row["sms"] == [3, 70]
    assert {c[2] for c in lib.calls} == {16}

    # C + 1 CTAs need C + 1 SMs: skipped with the reason, nothing launched
    lib = _FakeFlagLib(sms=114)
    row = floors.flag_wait_all(lib, 128, iters=100, repeats=3, device=0)
    assert row["us"] is None and row["grid_sync_us"] is None and not lib.calls
    assert row["one_counter_us"] is None and row["relaxed_fence_us"] is None
    assert row["reason"] == "skipped: needs 129 co-resident CTAs, one per SM; this GPU has 114 SMs"

    # the grid.sync() launch failing leaves the flag number; CTAs sharing SMs are noted
    lib = _FakeFlagLib(fail_grid=True, distinct=30)
    row = floors.flag_wait_all(lib, 32, iters=100, repeats=3, device=0)
    assert row["us"] == pytest.approx(2.0) and row["grid_sync_us"] is None
    assert row["grid_sync_reason"] == "fake error 720" and row["note"] == "33 CTAs ran on 30 SMs"


class _FakeDsmemLib:
    """floors.cu's DSMEM and occupancy entry points faked in Python (CPU test only): a launch
    of n steps takes launch_ms + n * (its per-step µs); all numbers made up."""

    def __init__(self, round_trip_us=1.4, us_per_kb=0.05, step_us=0.6, launch_ms=0.02, dsmem_sms=(5, 6),
                 distinct=16, fail=0, clusters=(7, 8, 16)):
        self.rt_us, self.us_per_kb, self.step_us = round_trip_us, us_per_kb, step_us
        self.launch_ms = launch_ms
        self.dsmem_sms, self.distinct, self.fail, self.clusters = dsmem_sms, distinct, fail, clusters
        self.calls = []

    def floors_error_string(self, code):
        return f"fake error {code}".encode()

    def floors_dsmem_pingpong(self, device, threads, n, ms, sm0, sm1):
        self.calls.append(("dsmem_pingpong", threads, n))
        if self.fail:
            return self.fail
        ms._obj.value = self.launch_ms + n * self.rt_us * 1e-3
        sm0._obj.value, sm1._obj.value = self.dsmem_sms
        return 0

    def floors_dsmem_bandwidth(self, device, threads, nbytes, n, ms, sm0, sm1):
        self.calls.append(("dsmem_bandwidth", threads, nbytes, n))
        if self.fail:
            return self.fail
        ms._obj.value = self.launch_ms + n * (0.3 + self.us_per_kb * nbytes / 1024) * 1e-3
        sm0._obj.value, sm1._obj.value = self.dsmem_sms
        return 0

    def floors_dsmem_all_to_all(self, device, size, threads, nbytes, n, ms, distinct):
        self.calls.append(("dsmem_all_to_all", size, threads, nbytes, n))
        if self.fail:
            return self.fail
        ms._obj.value = self.launch_ms + n * (self.step_us + 1e-4 * nbytes) * 1e-3
        distinct._obj.value = self.distinct
        return 0

    def floors_max_active_clusters(self, device, size, threads, smem, clusters):
        self.calls.append(("occupancy", size, threads, smem))
        if self.fail:
            return self.fail
        clusters._obj.value = {(16, 200 * 1024): self.clusters[0], (16, 100 * 1024): self.clusters[1],
                               (8, 200 * 1024): self.clusters[2]}[size, smem]
        return 0


def test_dsmem_floors_logic_with_a_fake_library():
    lib = _FakeDsmemLib()
    row = floors.dsmem_pingpong(lib, iters=100, repeats=3, device=0)
    # one hand-off is half a round trip; launch overhead cancels
    assert row["round_trip_us"] == pytest.approx(1.4) and row["us"] == pytest.approx(0.7)
    assert row["sms"] == [5, 6] and row["threads"] == 128 and "note" not in row and "reason" not in row
    assert {c[2] for c in lib.calls} == {100, 200}

    lib = _FakeDsmemLib()
    row = floors.dsmem_bandwidth(lib, 32, iters=100, repeats=3, device=0)
    us = 0.3 + 0.05 * 32
    assert row["us"] == pytest.approx(us) and row["gb_s"] == pytest.approx(32 * 1024 / us / 1e3)
    assert row["kb"] == 32 and row["threads"] == floors.DSMEM_THREADS and row["sms"] == [5, 6]
    assert {c[1:3] for c in lib.calls} == {(256, 32 * 1024)}

    lib = _FakeDsmemLib()
    row = floors.dsmem_all_to_all(lib, 32, iters=100, repeats=3, device=0)
    assert row["bytes_per_peer"] == 32 * 32 * 2 and row["cluster_size"] == 16
    assert row["us"] == pytest.approx(0.6 + 1e-4 * 2048) and row["distinct_sms"] == 16 and "note" not in row
    assert {c[1:4] for c in lib.calls} == {(16, 256, 2048)}

    lib = _FakeDsmemLib()
    rows = [floors.max_active_clusters(lib, size, kb, device=0) for size, kb in floors.OCCUPANCY]
    assert [r["clusters"] for r in rows] == [7, 8, 16] and not any("reason" in r for r in rows)
    assert [c[1:] for c in lib.calls] == [(16, 256, 200 * 1024), (16, 256, 100 * 1024), (8, 256, 200 * 1024)]

    # CTAs sharing SMs are noted
    lib = _FakeDsmemLib(dsmem_sms=(4, 4), distinct=12)
    assert floors.dsmem_pingpong(lib, iters=100, repeats=3, device=0)["note"] == "both CTAs ran on SM 4"
    assert floors.dsmem_bandwidth(lib, 1, iters=100, repeats=3, device=0)["note"] == "both CTAs ran on SM 4"
    assert floors.dsmem_all_to_all(lib, 8, iters=100, repeats=3, device=0)["note"] == "16 CTAs ran on 12 SMs"

    # unavailable (e.g. no clusters before Hopper): a row with the reason, nothing raised
    lib = _FakeDsmemLib(fail=801)
    row = floors.dsmem_pingpong(lib, iters=100, repeats=3, device=0)
    assert row["us"] is None and row["round_trip_us"] is None
    assert row["reason"] == "not available: fake error 801"
    row = floors.dsmem_bandwidth(lib, 8, iters=100, repeats=3, device=0)
    assert row["us"] is None and row["gb_s"] is None and row["reason"] == "not available: fake error 801"
    row = floors.dsmem_all_to_all(lib, 8, iters=100, repeats=3, device=0)
    assert row["us"] is None and row["distinct_sms"] is None
    assert row["reason"] == "not available: fake error 801"
    row = floors.max_active_clusters(lib, 16, 200, device=0)
    assert row == dict(cluster_size=16, smem_kb=200, threads=256, clusters=0,
                       reason="not available: fake error 801")

    # a payload missing after its wait (floors.cu's kErrPayload) is a failure, not "not available"
    lib = _FakeDsmemLib(fail=floors.ERR_PAYLOAD)
    assert floors.dsmem_pingpong(lib, iters=100, repeats=3, device=0)["reason"] == "failed: fake error -2"
    assert floors.dsmem_bandwidth(lib, 8, iters=100, repeats=3, device=0)["reason"] == "failed: fake error -2"
    assert floors.dsmem_all_to_all(lib, 8, iters=100, repeats=3, device=0)["reason"] == "failed: fake error -2"


class _FakeFloorsLib(_FakeFlagLib, _FakeDsmemLib):
    """Every entry point of floors.cu faked (CPU test only), recording the order of the calls."""

    def __init__(self):
        _FakeFlagLib.__init__(self)
        _FakeDsmemLib.__init__(self)

    def floors_grid_sync(self, device, threads, n, exchange, ms, blocks):
        self.calls.append(("grid_sync", threads, n))
        ms._obj.value, blocks._obj.value = 0.01 + n * 1e-3, 132
        return 0

    def floors_cluster_sync(self, device, size, threads, n, exchange, ms, clusters):
        self.calls.append(("cluster_sync", size, n))
        ms._obj.value, clusters._obj.value = 0.01 + n * 0.2e-3, 8
        return 0


def test_run_all_measures_the_dsmem_rows_before_the_flags(monkeypatch):
    lib = _FakeFloorsLib()
    monkeypatch.setattr(floors, "build", lambda: lib)
    monkeypatch.setattr(floors, "cudnn_layer_step", lambda: [])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "FAKE GPU")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    out = floors.run_all()
    assert len(out["dsmem_pingpong"]) == 1 and out["dsmem_pingpong"][0]["us"] == pytest.approx(0.7)
    assert [r["kb"] for r in out["dsmem_bandwidth"]] == list(floors.DSMEM_BANDWIDTH_KB)
    assert [r["bytes_per_peer"] for r in out["dsmem_all_to_all"]] == [512, 2048]
    assert [(r["cluster_size"], r["smem_kb"], r["clusters"]) for r in out["cluster_occupancy"]] == \
        [(16, 200, 7), (16, 100, 8), (8, 200, 16)]
    kinds = [c[0] for c in lib.calls]
    # a trap in a flag wait spoils the context: every cluster measurement comes before the flags
    last_cluster = max(i for i, k in enumerate(kinds) if k == "cluster_sync" or k.startswith("dsmem")
                       or k == "occupancy")
    assert last_cluster < kinds.index("pingpong") < kinds.index("wait_all") < kinds.index("stores")
    table = report.floors_table(out).splitlines()
    assert sum(line.startswith("| DSMEM") for line in table) == 1 + 3 + 2
    assert sum(line.startswith("| clusters of") for line in table) == 3


def test_floors_table_with_dsmem_rows():
    # made-up numbers (test only); the keys are floors.run_all()'s
    fake = {"dsmem_pingpong": [dict(threads=128, sms=[5, 6], us=0.7, round_trip_us=1.4)],
            "dsmem_bandwidth": [dict(kb=8, threads=256, sms=[5, 6], us=0.5, gb_s=16.384),
                                dict(kb=32, threads=256, sms=None, us=None, gb_s=None,
                                     reason="not available: fake")],
            "dsmem_all_to_all": [dict(cluster_size=16, rows=8, units=32, bytes_per_peer=512, threads=256,
                                      distinct_sms=16, us=0.9)],
            "cluster_occupancy": [dict(cluster_size=16, smem_kb=200, threads=256, clusters=7),
                                  dict(cluster_size=8, smem_kb=200, threads=256, clusters=0,
                                       reason="not available: fake")]}
    text = report.floors_table(fake)
    assert len(text.splitlines()) == 2 + 1 + 2 + 1 + 2
    assert "| DSMEM hand-off (16 B st.async → mbarrier wait), cluster of 2, SM 5 ↔ SM 6, 128 threads | " \
           "0.7 | round trip 1.4 µs |" in text
    assert "| DSMEM push of 8 KB per step, CTA 0 → CTA 1 of a cluster of 2, 256 threads | 0.5 | 16.4 GB/s |" \
           in text
    assert "| DSMEM push of 32 KB per step, CTA 0 → CTA 1 of a cluster of 2, 256 threads | — | " \
           "not available: fake |" in text
    assert "| DSMEM all-to-all, cluster of 16, 512 B to each peer (8 rows × 32 units × 2 B), 256 threads, " \
           "per step | 0.9 |  |" in text
    assert "| clusters of 16 × 256 threads, 200 KB dynamic shared memory per CTA | — | " \
           "7 co-resident clusters |" in text
    assert "| clusters of 8 × 256 threads, 200 KB dynamic shared memory per CTA | — | not available: fake |" \
           in text


def test_floors_table_with_flag_rows():
    # made-up numbers (test only); the keys are floors.run_all()'s
    fake = {"grid_sync": [dict(threads=128, exchange=False, blocks=132, us=0.9)],
            "flag_pingpong": [dict(threads=256, sms=[3, 70], us=0.8, round_trip_us=1.6)],
            "flag_wait_all": [
                dict(producers=32, consumers=1, threads=256, blocks=33, us=2.0, grid_sync_us=1.5,
                     relaxed_fence_us=1.25, one_counter_us=0.75, distinct_sms=33),
                dict(producers=128, consumers=1, threads=256, blocks=129, us=None, grid_sync_us=None,
                     distinct_sms=None, reason="skipped: needs 129 co-resident CTAs, one per SM; "
                                               "this GPU has 114 SMs")]}
    text = report.floors_table(fake)
    lines = text.splitlines()
    assert lines[0] == "| floor | µs | note |" and len(lines) == 2 + 1 + 1 + 4 + 1
    assert "| one counter per side, red.release adds (lean), same loop, 32 producers + 1 " \
           "consumer, 33 CTAs × 256 threads, per step | 0.75 |  |" in text
    assert "| flags, relaxed polls + one fence, same loop, 32 producers" in text
    assert "| flag hand-off (release store → acquire poll), SM 3 ↔ SM 70, 256 threads | 0.8 | " \
           "round trip 1.6 µs |" in text
    assert "| flags: consumers wait for all 32 slices, 32 producers + 1 consumer, 33 CTAs × 256 " \
           "threads, per step | 2 |  |" in text
    assert "| grid.sync(), same loop, 32 producers + 1 consumer, 33 CTAs × 256 threads, per step | 1.5 |  |" \
           in text
    assert "all 128 slices" in text and "| — | skipped: needs 129 co-resident CTAs" in text
    assert "grid.sync(), same loop, 128 producers" not in text  # a skipped row is one line
    # results from before the flag measurements render as before
    assert report.floors_table({"grid_sync": fake["grid_sync"]}) == "\n".join(lines[:3])
    # a failed ping-pong shows its reason
    failed = report.floors_table({"flag_pingpong": [dict(threads=256, sms=None, us=None, round_trip_us=None,
                                                         reason="no device")]})
    assert "2 CTAs on 2 SMs, 256 threads | — | no device |" in failed


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


# ------------------------------------------------------------------ the baselines


def _fake_flashrnn(gates="ifgo", transpose_r=False):
    """FlashRNN's flashrnn() in plain torch, from its documented layout: Wx (B, T, 4, 1, H)
    gate-major i, f, z (= g), o; R (4, 1, H, H) with R[g, 0, d, p] the weight from previous
    unit p to gate unit d; b (4, 1, H); states (2, B, 1, 1, H); returns the states of every
    step (2, B, T, 1, H) and the last (2, B, 1, 1, H). `gates`, `transpose_r`: deliberately
    wrong layouts that parity must catch."""
    calls = []

    def flashrnn(Wx, R, b, states=None, function="lstm", backend="cuda_fused", dtype="bfloat16"):
        calls.append((tuple(Wx.shape), function, backend, dtype, states is not None))
        B, T, G, NH, H = Wx.shape
        assert (G, NH, function, backend) == (4, 1, "lstm", "cuda_fused")
        assert tuple(R.shape) == (4, 1, H, H) and tuple(b.shape) == (4, 1, H)
        h = Wx.new_zeros(B, H) if states is None else states[0, :, 0, 0, :]
        c = Wx.new_zeros(B, H) if states is None else states[1, :, 0, 0, :]
        Rm = R[:, 0].transpose(1, 2) if transpose_r else R[:, 0]
        order = ["ifgo".index(g) for g in gates]
        ys, cs = [], []
        for t in range(T):
            raw = Wx[:, t, :, 0, :] + torch.einsum("bp,gdp->bgd", h, Rm) + b[:, 0]
            i, f, z, o = (raw[:, k] for k in order)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(z)
            h = torch.sigmoid(o) * torch.tanh(c)
            ys.append(h)
            cs.append(c)
        y = torch.stack([torch.stack(ys, 1), torch.stack(cs, 1)])[:, :, :, None, :]
        return y, torch.stack([h, c])[:, :, None, None, :]

    flashrnn.calls = calls
    return flashrnn


def _inputs(fr, cell="LSTM", L=2, H=8, B=3, T=4, mode="infer", stream=False, dtype=torch.float32):
    c = cases.Case(cell, L, H, B, T, "fp32", mode, stream=stream)
    return sweep.case_inputs(fr, c, dtype, n_buf=2)


@pytest.mark.parametrize("mode,stream", [("infer", False), ("train", False), ("infer", True)])
@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_every_baseline_matches_the_float64_reference_on_cpu(fake_cuda, cell, mode, stream):
    """Each baseline class, run on the CPU (graphs faked): its results in nn's layout (output,
    final state, in training the input's and every parameter's gradient) within float32
    rounding of the float64 reference, and the parity rule says ok."""
    fr = _fake_fused_rnn()
    flash = _fake_flashrnn()
    env = baselines.Env(fr, flash, "", (9, 0))
    ci = _inputs(fr, cell, mode=mode, stream=stream)
    want = baselines.reference64(ci)
    keys = {"output", "h_n"} | ({"c_n"} if cell == "LSTM" else set())
    if mode == "train":
        keys |= {"grad_input"} | {f"grad_{n}" for n, _ in ci.ref.named_parameters()}
    assert set(want) == keys
    cud = baselines.Cudnn(env)
    cud.prepare(ci)
    anchor = baselines.errors(cud.outputs(ci.xs[0]), want)
    assert set(anchor) == keys and max(anchor.values()) < 1e-5
    names = ["cudnn_graph", "cudnn_persist", "flashrnn"] + (["fused", "fused_graph"] if cell == "LSTM" else [])
    for name in names:
        b = baselines.REGISTRY[name](env)
        if name == "flashrnn" and cell != "LSTM":
            assert b.skip_reason(ci.case) == "FlashRNN's fused kernel is compared for LSTM only"
            continue
        b.prepare(ci)  # (cudnn_persist's fp16 rule is skip_reason's business, tested below)
        got = b.outputs(ci.xs[1])  # another buffer: its own graph, its own input
        ref1 = baselines.reference64(dataclasses.replace(ci, xs=[ci.xs[1]]))
        errs = baselines.errors(got, ref1)
        assert set(errs) == keys, (name, set(errs) ^ keys)
        err, verdict = baselines.rule(errs, anchor, "fp32")
        assert verdict == "ok" and err < 1e-5, (name, verdict, err)
        b.step(ci.xs[0])  # the timed call runs
        b.close()
    if cell == "LSTM":
        assert all(call[4] == stream for call in flash.calls)  # the state went in where given
        assert {call[3] for call in flash.calls} == {"float32"}


@pytest.mark.parametrize("broken", [dict(gates="ifog"), dict(transpose_r=True)])
def test_parity_catches_a_wrong_weight_layout(fake_cuda, broken):
    """FlashRNN given the gates in another order, or R transposed: the rule fails it (it
    would then be no baseline), where the correct layout passes (above)."""
    fr = _fake_fused_rnn()
    env = baselines.Env(fr, _fake_flashrnn(**broken), "", (9, 0))
    ci = _inputs(fr, H=16, T=6)
    with torch.no_grad():  # weights large enough that a layout error shows well above fp32 noise
        for p in ci.ref.parameters():
            p.mul_(4)
    want = baselines.reference64(ci)
    cud = baselines.Cudnn(env)
    cud.prepare(ci)
    anchor = baselines.errors(cud.outputs(ci.xs[0]), want)
    b = baselines.FlashRNN(env)
    b.prepare(ci)
    err, verdict = baselines.parity(b, ci.xs[0], want, anchor, "fp32")
    assert verdict.startswith("FAIL: ") and err > 1e-2, (verdict, err)


def test_parity_rule_and_the_gpu_tests_floors():
    sys.path.insert(0, os.path.join(REPO, "tests", "gpu"))
    try:
        import gpu_helpers
    finally:
        sys.path.remove(os.path.join(REPO, "tests", "gpu"))
    assert cases.FWD_FLOOR == gpu_helpers.FWD_FLOOR and cases.BWD_FLOOR == gpu_helpers.BWD_FLOOR
    anchor = {"output": 0.01, "grad_input": 0.01}
    assert baselines.rule({"output": 0.028, "grad_input": 0.04}, anchor, "bf16") == (0.04, "ok")
    err, verdict = baselines.rule({"output": 0.029, "grad_input": 0.0}, anchor, "bf16")
    assert verdict == "FAIL: output error 0.029 > 0.028 (2 x cuDNN 0.01 + floor 0.008)"
    err, verdict = baselines.rule({"output": float("nan")}, anchor, "bf16")
    assert verdict == "FAIL: output is not finite" and err == float("inf")
    # cuDNN's own error not finite: no bound to hold anything to
    err, verdict = baselines.rule({"output": 0.5}, {"output": float("nan")}, "bf16")
    assert verdict == "not checked: eager cuDNN's output is not finite" and err == 0.5
    with pytest.raises(RuntimeError, match="shape"):
        baselines.errors({"output": torch.zeros(2)}, {"output": torch.zeros(3, dtype=torch.float64)})
    # an implementation cannot pass by leaving a result out
    want = {"output": torch.zeros(2, dtype=torch.float64), "grad_input": torch.zeros(2, dtype=torch.float64)}
    with pytest.raises(RuntimeError, match="no grad_input from this implementation"):
        baselines.errors({"output": torch.zeros(2)}, want)


@pytest.mark.parametrize("args,want", [
    (("LSTM", "fp16", 1, 512, 512, 32, (9, 0)), True),
    (("LSTM", "fp16", 1, 512, 512, 136, (9, 0)), False),  # B > 128
    (("LSTM", "fp16", 1, 512, 512, 12, (9, 0)), False),  # B % 8
    (("LSTM", "fp16", 1, 768, 768, 16, (9, 0)), True),
    (("LSTM", "fp16", 1, 200, 256, 16, (9, 0)), False),  # H % 128
    (("LSTM", "fp16", 1, 1152, 1152, 16, (9, 0)), False),  # H > 1024
    (("LSTM", "fp16", 1, 512, 100, 16, (9, 0)), False),  # input % 128
    (("LSTM", "fp16", 2, 512, 512, 16, (9, 0)), False),  # 2 layers in one call
    (("LSTM", "bf16", 1, 512, 512, 16, (9, 0)), False),  # fp16 only
    (("GRU", "fp16", 1, 512, 512, 16, (9, 0)), False),  # never GRU on sm_80+
    (("RNN", "fp16", 1, 1024, 1024, 96, (9, 0)), False),  # RNN: B < 96 or H < 896
    (("RNN", "fp16", 1, 768, 768, 96, (9, 0)), True),
    (("LSTM", "fp16", 1, 512, 512, 16, (7, 0)), None),  # Volta's rule: not modelled
    (("LSTM", "fp16", 1, 512, 512, 16, (8, 6)), False),  # PyTorch excludes x.6
    (("LSTM", "fp16", 1, 512, 512, 16, (8, 0), 56), False),  # and fewer than 98 SMs (A30)
    (("LSTM", "fp16", 1, 128, 128, 16, (9, 0)), False),  # small H: cuDNN's own persistent algo
])
def test_pytorch_rule_for_cudnn_persist_static(args, want):
    ok, why = cases.persist_static(*args)
    assert ok is want, why
    assert why


def test_cudnn_persist_runs_only_where_pytorch_picks_the_persistent_kernel(fake_cuda):
    env = baselines.Env(_fake_fused_rnn(), capability=(9, 0))
    b = baselines.CudnnPersist(env)
    assert b.skip_reason(cases.Case("LSTM", 4, 512, 32, 512, "fp16", "infer")) is None  # one layer a call
    assert "only in fp16" in b.skip_reason(cases.Case("LSTM", 4, 512, 32, 512, "bf16", "infer"))
    assert "batch 1" in b.skip_reason(cases.Case("LSTM", 4, 512, 1, 512, "fp16", "infer"))
    assert "never takes it for GRU" in b.skip_reason(cases.Case("GRU", 2, 512, 32, 512, "fp16", "train"))
    assert "one layer: the nn module's own call" in b.skip_reason(cases.Case("LSTM", 1, 512, 32, 512, "fp16", "infer"))
    assert "small-H" in b.skip_reason(cases.Case("LSTM", 2, 128, 32, 512, "fp16", "infer"))
    assert baselines.FlashRNN(env).skip_reason(cases.Case("LSTM", 1, 512, 1, 512, "bf16", "infer")) \
        == baselines.FLASHRNN_INSTALL


def test_best_baseline_skips_a_baseline_that_failed_parity():
    r = cases.Result("LSTM", 4, 512, 1, 512, 512, "bf16", "infer", 0.0, status="ok",
                     cudnn_ms=30.0, cudnn_graph_ms=8.0, cudnn_persist_ms=2.0,
                     cudnn_persist_parity="FAIL: output error 1 > 0.02", flashrnn_ms=9.0,
                     fused_ms=4.0, fused_graph_ms=3.0, fused_graph_parity="ok")
    sweep.best_baseline(r)
    assert (r.best_baseline, r.best_baseline_ms, r.fused_best, r.fused_best_ms) == ("cudnn_graph", 8.0, "fused_graph", 3.0)
    assert r.speedup_vs_best == pytest.approx(8 / 3) and r.us_per_call_fused is None
    r2 = dataclasses.replace(r, status="mismatch", stream=True, best_baseline="", speedup_vs_best=None)
    sweep.best_baseline(r2)  # the kernel did not pass: no headline for it
    assert r2.best_baseline == "cudnn_graph" and r2.speedup_vs_best is None and r2.fused_best_ms is None
    assert r2.us_per_call_best_baseline == 8000.0 and r2.us_per_call_fused is None


def test_report_headline_is_the_ratio_to_the_best_baseline(tmp_path):
    row = dict(_result(status="ok", dropout=0.0, fused_backend="fused: test", fused_ms=2.0, cudnn_ms=6.0,
                       speedup_vs_cudnn=3.0).__dict__)
    row.update(cudnn_graph_ms=3.0, cudnn_persist_ms=2.5, cudnn_persist_parity="FAIL: output error 1",
               fused_graph_ms=1.5, best_baseline="cudnn_graph", best_baseline_ms=3.0, fused_best="fused_graph",
               fused_best_ms=1.5, speedup_vs_best=2.0, stream=True, seq=1,
               baseline_notes="flashrnn: not installed")
    line = report.results_table([row]).splitlines()[-1]
    assert "| 1 (stream) |" in line and "| 6 | 3 | 2.5 ✗ | — | cudnn_graph 3 | 2 | 1.5 | **2.00×** | 3.00× |" in line
    assert "[baselines: flashrnn: not installed]" in line
    meta = dict(device="FAKE GPU", torch="t", date="2026-01-02T00:00:00", runs=20, command="c")
    common.write_json(tmp_path / "results.json", meta, [])
    doc = common.read_json(tmp_path / "results.json")
    doc["cases"] = [row]
    (tmp_path / "results.json").write_text(__import__("json").dumps(doc))
    text = report.render_section(str(tmp_path), str(tmp_path))
    assert report.EAGER_ONLY not in text and "**Speedup vs best** (the headline)" in text


def test_capture_warms_up_on_a_side_stream_and_shares_one_pool(monkeypatch):
    """timing.CudaGraphs / GraphedSteps against a fake of torch.cuda's graph API: warm-up
    calls on a side stream that waits for the current one (and back), one capture per
    buffer, each after the first given the first graph's pool; step(x) replays x's graph."""
    log = []

    class Stream:
        def __init__(self, name="side"):
            self.name = name

        def wait_stream(self, other):
            log.append(("wait", self.name, other.name))

    class Graph:
        def __init__(self):
            self.replays = 0

        def pool(self):
            return ("pool", id(self))

        def replay(self):
            self.replays += 1

    current = Stream("current")

    @contextlib.contextmanager
    def on_stream(s):
        log.append(("stream", s.name))
        yield

    @contextlib.contextmanager
    def graph(g, pool=None):
        log.append(("capture", pool))
        yield

    for name, value in dict(Stream=Stream, current_stream=lambda: current, stream=on_stream,
                            graph=graph, CUDAGraph=Graph).items():
        monkeypatch.setattr(torch.cuda, name, value)
    calls = []
    xs = [torch.zeros(1), torch.ones(1)]
    steps = timing.GraphedSteps(lambda x: (lambda: calls.append(x) or (x + 1,)), xs)
    assert [c is xs[0] for c in calls] == [True] * 4 + [False] * 4  # 3 warm-ups + 1 capture each
    first = steps.graphs[id(xs[0])]
    captures = [e for e in log if e[0] == "capture"]
    assert captures == [("capture", None), ("capture", first.pool())]
    assert log[:3] == [("wait", "side", "current"), ("stream", "side"), ("wait", "current", "side")]
    steps.step(xs[1])
    assert steps.graphs[id(xs[1])].replays == 1 and first.replays == 0
    out = steps.outputs(xs[0])
    assert first.replays == 1 and torch.equal(out[0], xs[0] + 1) and out[0] is not steps.outs[id(xs[0])][0]


def test_a_baseline_that_fails_is_a_note_and_is_closed(fake_cuda, monkeypatch):
    fr = _fake_fused_rnn()
    closed = []

    class Broken(baselines.CudnnGraph):
        def prepare(self, ci):
            raise RuntimeError("capture failed: operation not permitted when stream is capturing")

        def close(self):
            closed.append(self.name)
            super().close()

    monkeypatch.setitem(baselines.REGISTRY, "cudnn_graph", Broken)
    r = _run_one(fr)
    assert r.status == "ok" and closed == ["cudnn_graph"] and r.cudnn_graph_ms is None
    assert "cudnn_graph: RuntimeError: capture failed" in r.baseline_notes
    assert r.best_baseline != "cudnn_graph" and r.speedup_vs_best is not None


def test_the_kernel_failing_parity_in_a_graph_is_a_mismatch(fake_cuda, monkeypatch):
    """fused_graph is the kernel itself: a wrong answer under capture fails the case, and
    its error goes to the case's reason, not the baselines' notes."""
    fr = _fake_fused_rnn()

    class Wrong(baselines.FusedGraph):
        def outputs(self, x):
            got = super().outputs(x)
            got["output"] = got["output"] + 1
            return got

    monkeypatch.setitem(baselines.REGISTRY, "fused_graph", Wrong)
    r = _run_one(fr)
    assert r.fused_parity == "ok" and r.fused_graph_parity.startswith("FAIL: output error")
    assert r.status == "mismatch" and r.speedup_vs_best is None and r.speedup_vs_cudnn is None
    assert r.reason.startswith("fused kernel in a CUDA graph against the float64 reference: FAIL")


def test_flashrnn_builds_with_the_hung_case_timer_off(fake_cuda, monkeypatch):
    events = []
    monkeypatch.setattr(sweep.faulthandler, "cancel_dump_traceback_later", lambda: events.append("off"))
    monkeypatch.setattr(sweep.faulthandler, "dump_traceback_later",
                        lambda t, **k: events.append(("on", t)))
    fr = _fake_fused_rnn()
    monkeypatch.setattr(baselines, "load_flashrnn", lambda: (_fake_flashrnn(), None))
    args = cli.parse_args(["--runs", "2", "--reference", "off", "--skip-baselines",
                           "cudnn_graph,fused_graph,cudnn_persist"])
    runner = sweep.Runner(args, fr)
    runner.case_timeout = 30.0
    r = runner.run_case(cases.Case("LSTM", 2, 8, 2, 4, "tf32", "infer"))
    assert r.flashrnn_ms > 0 and r.flashrnn_parity == "ok" and r.flashrnn_build_s is not None
    assert events == ["off", ("on", 30.0)]
