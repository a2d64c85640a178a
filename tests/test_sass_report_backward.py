"""benchmarks/sass_report_backward.py: the static SASS report of the backward step loop.

The branch-arm spans on a made-up source and the plan's path (always), the markers of this
tree's kernel present (and a missing one refused), and -- with nvcc and nvdisasm -- a report
of this tree: every phase has code, the GEMM its MMAs, the wait its acquire polls, each
plan its copy mechanism.
"""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import sass_report  # noqa: E402
import sass_report_backward as bsr  # noqa: E402

_SOURCE = """\
void f() {
  auto issue = [&]() {
    if (clustered) {  // {braces in a comment}
      copy_bulk();
      return;
    }
    copy_plain();
    more_plain();
  };
  if (!clustered) commit(")");
  if (c.reg_tiles > 0) {
    regs();
  } else {
    smem();
  }
  if (c.cluster > 1 && b0 == b_lo) fence();
  if (lane == 0) other();
}
"""


def test_branch_arms_of_a_source(tmp_path):
    src = tmp_path / "k.cuh"
    src.write_text(_SOURCE)
    spans = [(a, b, name) for _, a, b, name in bsr.code_paths(str(src))]
    assert spans == [
        (4, 5, "cluster"), (7, 8, "plain"),  # (the rest of the block after the return)
        (10, 10, "plain"),
        (12, 12, "reg-tiles"), (14, 14, "smem-tiles"),
        (16, 16, "cluster"),
    ]


def test_plan_path_of_a_made_up_plan():
    plan = dict(batch=32, rows_per_slice=32, n_tiles=2, gh_pad=2048, k_splits=4, stage_k=64,
                kw=4096, elem_bytes=2, units=16, cluster=8, reg_tiles=0)
    p = bsr.plan_path(plan)
    assert p["exclude"] == set(bsr.BODY_PATHS) | {"plain", "reg-tiles"}
    t = p["trips"]
    # 2 segments x 32 tiles of K split 0 / 4 tiles per chunk; 16 units x 32 rows
    assert (t["passes per step"], t["K chunks per warp item"], t["K tiles per chunk"]) == (1, 16, 4)
    assert (t["epilogue pairs per CTA"], t["remainder pairs per thread"]) == (512, 0)
    p = bsr.plan_path(dict(plan, batch=1, rows_per_slice=1, n_tiles=1, k_splits=8, cluster=1))
    assert p["exclude"] == set(bsr.BODY_PATHS) | {"cluster", "reg-tiles"}
    assert p["trips"]["copies per lane per chunk"] == 1  # 1 row x 8 pieces over 32 lanes


def test_markers_are_in_place():
    names = [n for _, n in bsr.phase_marks()]
    assert names[0] == "setup" and names[-1] == "end" and set(bsr.PHASES) <= set(names)
    assert set(bsr.BODY_PATHS + bsr.CODE_PATHS) <= {n for *_, n in bsr.all_paths()}


@pytest.mark.parametrize("drop, what", [("// [sass:gemm]", r"\[sass:gemm\]"),
                                        ("// [sass-path:final:", "final")])
def test_a_missing_marker_is_refused(tmp_path, monkeypatch, drop, what):
    kernels = tmp_path / "csrc" / "kernels"
    kernels.mkdir(parents=True)
    with open(bsr.kernel_path()) as f:
        lines = [ln for ln in f if drop not in ln]
    (kernels / "backward_kernel.cuh").write_text("".join(lines))
    monkeypatch.setattr(sass_report, "TREE", str(tmp_path))
    with pytest.raises(RuntimeError, match=what):
        bsr.phase_marks()
        bsr.all_paths()


@pytest.fixture(scope="module")
def rep():
    if shutil.which("nvcc") is None or sass_report.find_nvdisasm() is None:
        pytest.skip("needs nvcc and nvdisasm (the test extra's nvidia-cuda-nvdisasm)")
    return bsr.report("9.0a", "test")


def test_report_of_this_tree(rep):
    variants = {v["variant"]: v for v in rep["variants"]}
    assert set(variants) == {"bf16 LSTM", "tf32 LSTM"}
    for name, v in variants.items():
        assert v["registers"] and v["registers"] <= 255
        ap = v["all_paths"]
        for ph in bsr.PHASES:
            assert ap[ph]["instructions"] > 0, (name, ph)
        assert ap["gemm"]["HMMA"] == ap["step"]["HMMA"] > 0
        # the wait: acquire polls (strong loads, each with an L1 invalidate); the publish:
        # a release (a memory barrier before the store)
        assert ap["sync"]["strong loads"] > 0 and ap["sync"]["L1 invalidate"] > 0
        assert ap["sync"]["MEMBAR"] > 0
        assert v["kernel_total"]["instructions"] > ap["step"]["instructions"]
        assert v["cluster_only"]["gemm"] > 0  # (sm_90a: the multicast path is compiled)
        assert {r["batch"] for r in v["plans"]} == set(bsr.PLAN_BATCHES)
        for r in v["plans"]:
            if not r["planned"]:
                assert name == "tf32 LSTM" and r["reason"], r  # (weights beyond smem)
                continue
            c = r["counts"]
            assert c["gemm"]["HMMA"] > 0 and c["sync"]["strong loads"] > 0
            assert c["step"]["instructions"] < ap["step"]["instructions"]
            for k, rows in r["sources"].items():  # (the most frequent lines: a subset)
                assert sum(n for *_, n in rows) <= c["step"][k] and all(w for w, *_ in rows)
            if r["config"]["cluster"] > 1:  # bulk copies and mbarriers, no cp.async
                assert c["gemm"]["bulk copies"] > 0 and c["gemm"]["cp.async"] == 0
            else:
                assert c["gemm"]["cp.async"] > 0 and c["gemm"]["bulk copies"] == 0
    assert all(r["planned"] for r in variants["bf16 LSTM"]["plans"])


def test_markdown_renders(rep):
    md = bsr.markdown(rep)
    assert md.startswith("# Backward step loop, static SASS (test)")
    assert "## bf16 LSTM" in md and "### B=1\n" in md and "### B=32" in md
    assert "| **step** |" in md and "| gemm |" in md and "| **whole kernel** |" in md
    for v in rep["variants"]:
        for r in v["plans"]:
            if not r["planned"]:
                assert f"### B={r['batch']}: not planned" in md


def _plan(**kw):
    plan = dict(batch=1, rows_per_slice=1, n_tiles=1, gh_pad=2048, k_splits=8, stage_k=64,
                ka=2048, kw=4096, kres=4096, elem_bytes=2, units=16, cluster=1, reg_tiles=0,
                stages=4)
    plan.update(kw)
    return plan


def test_loop_levels_of_both_kernels(tmp_path):
    names = {n for *_, n in bsr.loop_spans()}
    assert {bsr.LOOP + n for n in bsr.LOOPS} <= names
    # the kernel before the lean GEMM (lambdas on a tile index v): the same levels
    old = tmp_path / "backward_kernel.cuh"
    try:
        text = subprocess.run(["git", "-C", ROOT, "show", "bf7395a:csrc/kernels/backward_kernel.cuh"],
                              capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("the old kernel's commit is not in this checkout")
    old.write_text(text)
    assert {bsr.LOOP + n for n in bsr.LOOPS} <= {n for *_, n in bsr.loop_spans(str(old))}


def test_trips_follow_the_plan():
    t = bsr.loop_trips(_plan())
    # K split 0: 16 tiles of each of 2 segments in chunks of 4
    assert (t["chunks"], t["tiles"], t["streamed_chunks"]) == (8, 32, 0)
    assert t["markers"]["tile@arm-rec"] == t["markers"]["tile@arm-above"] == 16 * 4
    f = t["factors"]
    # begin() issues 3 chunks, the acquires the other 5: 8 in all
    assert f["fill"] * f["issue-if@fill"] + f["chunk"] * f["issue-if@chunk"] == 8
    assert f["pair-pre"] == 0.5 and f["pair-rest"] == 0  # 16 pairs: one per thread, warp 0
    # streamed (the second half of the tile from L2): the slowest split streams its rec chunks
    s = bsr.loop_trips(_plan(kres=2048))
    assert s["streamed_chunks"] == 4 and s["markers"]["stream-copy@chunk"] > 0
    assert bsr.loop_trips(_plan(k_splits=4))["chunks"] == 16


def _insn(phase, loops, op="IADD3"):
    return (phase, frozenset(bsr.LOOP + n for n in loops), op, " R0, R1, R2", None)


def test_dynamic_estimate_multiplies_the_loops():
    insns = ([_insn("gemm", ("pass", "chunk"))] * 10 +
             [_insn("gemm", ("pass", "chunk", "arm-rec", "tile"), "HMMA.16816.F32.BF16")] * 12 +
             [_insn("gemm", ("pass", "chunk", "arm-rec", "tile"))] * 30 +
             [_insn("setup", ())] * 5)

    def dyn(plan):
        return bsr.dynamic_counts(insns, lambda i: True, bsr.loop_trips(plan))
    d = dyn(_plan())
    assert d["setup"]["instructions"] == 5
    # 10 per chunk x 8 chunks; the K-tile loop by its HMMAs: 64 issued over 12 static
    assert d["gemm"]["HMMA"] == 64
    assert d["gemm"]["instructions"] == 80 + round(42 * 64 / 12)
    assert d["step"]["instructions"] > len(insns)
    d4 = dyn(_plan(k_splits=4))  # twice the chunks and tiles per warp
    assert d4["gemm"]["instructions"] > d["gemm"]["instructions"]
    assert d4["gemm"]["HMMA"] == 128


def test_prediction_and_baseline(rep):
    import copy
    base = copy.deepcopy(rep)
    bsr.predict(base, base)
    bsr.predict(rep, base)
    if not os.path.exists(sass_report.PHASES_JSON):
        pytest.skip("no measured phases")
    for v in rep["variants"]:
        for r in v["plans"]:
            if not r["planned"]:
                continue
            assert r["dynamic"]["gemm"]["instructions"] > r["counts"]["gemm"]["instructions"]
            p = r["predicted_us"]
            assert all(x > 0 for x in p.values())
            assert p["gemm"] >= r["floor"]["floor_us"] > 0
            assert p["barrier"] >= sass_report.FLAG_HOP_US
            assert p["total"] == pytest.approx(p["gemm"] + p["epilogue"] + p["barrier"])
            if v["variant"] == "bf16 LSTM":  # against itself: the measurement, floors applied
                assert p["epilogue"] == pytest.approx(
                    {1: 0.789, 32: 1.603}[r["batch"]], abs=0.01)
    md = bsr.markdown(rep, base)
    assert "## Against the baseline (test -> test)" in md
    assert "### Predicted us per wave step on an H200" in md and "<= 3" in md
    assert "Dynamic estimate per step" in md
