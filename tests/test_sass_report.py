"""benchmarks/sass_report.py: the static SASS report of the forward step loop.

The attribution logic on a made-up listing (always), the kernel's epilogue lane choice
mirrored, and -- with nvcc and nvdisasm -- a report of this tree: the lean GEMM on the
plans' path, no division in the step, the phases and paths it relies on present.
"""

import os
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import sass_report  # noqa: E402

KERNEL = os.path.realpath(sass_report.kernel_path())

# A made-up nvdisasm -c -gi listing: one function, three instructions; the first inlined
# from line 20 of the kernel file into the body's line 110, the second from mma_frag.cuh
# through line 30 into line 150, the third with no lines of its own (it keeps the last).
_LISTING = f"""
        //--------------------- .text._Z18rnn_forward_kernelIfLN9fused_rnn8CellKindE0ELb1ELNS0_10SyncPolicyE2EEvNS0_13ForwardParamsE --------------------------
	//## File "{KERNEL}", line 20 inlined at "{KERNEL}", line 110
	//## File "{KERNEL}", line 110
        /*0010*/                   IMAD.HI.U32 R1, R2, R3, RZ ;
	//## File "/x/mma_frag.cuh", line 99 inlined at "{KERNEL}", line 30
	//## File "{KERNEL}", line 30 inlined at "{KERNEL}", line 150
	//## File "{KERNEL}", line 150
        /*0020*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
        /*0030*/                   LDSM.16.M88.4 R8, [R20] ;
        /*0040*/              @!PT LDS RZ, [RZ] ;
"""


def test_attribution_follows_inline_chains():
    marks = [(100, "setup"), (140, "gemm"), (200, "end")]
    paths = [(KERNEL, 15, 25, "unaligned"), (KERNEL, 25, 35, "lean-gemm")]
    funcs = sass_report.sass_groups(_LISTING, marks, paths)
    (insns,) = funcs.values()
    assert [(i[0], sorted(i[1]), i[2]) for i in insns] == [
        ("setup", ["unaligned"], "IMAD.HI.U32"),
        ("gemm", ["lean-gemm"], "HMMA.16816.F32.BF16"),
        ("gemm", ["lean-gemm"], "LDSM.16.M88.4"),  # (no lines of its own: the previous)
    ]  # (the @!PT placeholder is left out)
    c = sass_report.tally(insns, lambda i: "lean-gemm" not in i[1])
    assert c["instructions"] == 1 and c["HMMA"] == 0
    c = sass_report.tally(insns, lambda i: True)
    assert (c["HMMA"], c["LDSM"], c["instructions"]) == (1, 1, 3)
    assert sass_report.region_of(99, marks) is None and sass_report.region_of(250, marks) is None


def test_epilogue_lanes_mirror_the_kernel():
    """The kernel's prologue choice (forward_kernel.cuh): as many lanes per (unit, batch
    row) pair as fill 256 threads, a power of two >= the gates, else one thread per pair."""
    plan = dict(x_splits=2, h_splits=2, units=16, batch_tile=8, batch=1)
    assert sass_report.epilogue_lanes(plan, 4) == 16  # 16 pairs x 16 lanes
    assert sass_report.epilogue_lanes(dict(plan, batch=2), 4) == 8  # 32 pairs, 2 splits each
    assert sass_report.epilogue_lanes(dict(plan, batch=4), 4) == 4  # 64 pairs, a lane per gate
    assert sass_report.epilogue_lanes(dict(plan, batch=8), 4) == 1  # 128 pairs: < 4 lanes each
    assert sass_report.epilogue_lanes(dict(plan, batch=32, batch_tile=32), 4) == 1
    assert sass_report.epilogue_lanes(dict(plan, x_splits=0, h_splits=1), 3) == 4  # GRU


def test_markers_are_in_place():
    names = [n for _, n in sass_report.regions()]
    assert names[0] == "setup" and names[-1] == "end"
    assert {"sync", "gather", "gemm", "epilogue"} <= set(names)
    paths = {n for *_, n in sass_report.path_ranges()}
    assert {"unaligned", "step0", "layer0", "lengths", "reserve", "dropout", "generic-gemm",
            "lean-gemm", "epilogue-pairs", "epilogue-groups", "sync-flags", "sync-lean",
            "accurate-act", "fast-act"} <= paths


@pytest.mark.skipif(shutil.which("nvcc") is None or sass_report.find_nvdisasm() is None,
                    reason="needs nvcc and nvdisasm (the test extra's nvidia-cuda-nvdisasm)")
def test_report_of_this_tree(tmp_path):
    rep = sass_report.report("9.0a", "test")
    variants = {v["variant"]: v for v in rep["variants"]}
    assert set(variants) == {"bf16 LSTM", "tf32 LSTM"}
    for name, v in variants.items():
        assert v["registers"] and v["registers"] <= 255
        rows = {(r["batch"], r["sync"], r["fast_tanh"]): r for r in v["plans"]}
        assert {(1, "flags", False), (32, "flags", False), (1, "lean", False)} <= set(rows)
        for (batch, sync, fast), r in rows.items():
            step, gemm = r["counts"]["step"], r["counts"]["gemm"]
            # the plans run the lean GEMM: its MMAs are all the step's, no division anywhere
            assert r["lean_calls"], (name, batch)
            assert step["int div"] == 0, (name, batch, sync, step)
            assert gemm["HMMA"] == step["HMMA"] > 0
            # 32 weight tiles x k8 steps (TF32: 2) x 8-column tiles x batch tiles
            n8 = -(-min(batch, r["batch_tile"]) // 8)
            steps = 2 if name == "tf32 LSTM" else 1
            assert gemm["HMMA"] == 32 * steps * n8 * r["batch_tiles"], (name, batch, gemm)
            if sync == "lean":  # an atomic add publishes; one L1 invalidate per wait, not per poll
                flags = rows[(batch, "flags", False)]["counts"]["step"]
                assert step["atomics"] >= 1 and step["L1 invalidate"] < flags["L1 invalidate"]
            else:  # a release store publishes; acquire polls
                assert step["atomics"] == 0 and step["strong loads"] > 0
    assert (1, "flags", True) in {(r["batch"], r["sync"], r["fast_tanh"])
                                  for r in variants["bf16 LSTM"]["plans"]}
    md = sass_report.markdown(rep, rep)
    assert "## Against the baseline" in md and "| bf16 LSTM | 1 | flags protocol |" in md
