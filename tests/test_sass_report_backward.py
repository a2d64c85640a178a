"""benchmarks/sass_report_backward.py: the static SASS report of the backward step loop.

The branch-arm spans on a made-up source and the plan's path (always), the markers of this
tree's kernel present (and a missing one refused), and -- with nvcc and nvdisasm -- a report
of this tree: every phase has code, the GEMM its MMAs, the wait its acquire polls, each
plan its copy mechanism.
"""

import os
import shutil
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
