"""Render the README's benchmark section from a GPU results directory.

    python benchmarks/report.py benchmarks/results/<device>/ > snippet.md
    python benchmarks/report.py --update-readme          # newest results dir -> README.md
    python benchmarks/report.py DIR --update-readme [--readme PATH]

The section goes between the markers `<!-- bench:start -->` and
`<!-- bench:end -->` of README.md. With no GPU results committed it says so.
Standard library only (no torch needed); bench.py uses the table helpers.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
NO_RESULTS = (
    "No GPU results committed yet. On an H100/H200, `bash scripts/gpu_check.sh` runs "
    "`python benchmarks/bench.py --quick` and the floors, and returns their results folder as "
    "`results.tgz`: unpack it into `benchmarks/results/<device>/`, commit it, then run "
    "`python benchmarks/report.py --update-readme`.\n\n"
    "Without a GPU, `python benchmarks/bench.py --quick` checks fused_rnn against torch.nn on CPU "
    "(torch's own path, bit-identical, and its time ratio to nn; the reference path within "
    "tolerance); GPU speed numbers need a GPU."
)
# Shapes of the acceptance set, shown in the README when a run holds more rows.
ACCEPTANCE = dict(cell={"LSTM"}, layers={2, 4}, hidden={256, 512}, seq={512}, batch={1, 32, 512},
                  dtype={"tf32", "bf16"}, dropout={0.0})
README_MAX_ROWS = 60
# The GPU target: fused_rnn as users get it (default policy) takes at most this x cuDNN's time.
AUTO_TARGET = 1.05


# ------------------------------------------------------------------ formatting


def num(x, digits: int = 3) -> str:
    """A number with `digits` significant digits; '—' for None."""
    if x is None:
        return "—"
    if x == 0:
        return "0"
    return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:,.0f}"


def mode_label(row: dict) -> str:
    if row["mode"] != "train":
        return row["mode"]
    return "train" if not row["dropout"] else f"train p={row['dropout']:g}"


def path_of(label: str) -> str:
    """The path word of a backend label: 'fused', 'native' or 'reference' ('fused: <plan>'); for
    a training label ('forward <label>; backward <label>') both words when they differ."""
    if not label:
        return "—"
    if label.startswith("forward "):
        fwd, _, bwd = label[len("forward "):].partition("; backward ")
        words = [fwd.split(":")[0], bwd.split(":")[0]]
        return words[0] if words[0] == words[1] else "/".join(words)
    return label.split(":")[0]


def ratio_to_target(x) -> str:
    """auto / cuDNN, flagged where it misses the target."""
    if x is None:
        return "—"
    return f"{x:.2f}" + (f" (> {AUTO_TARGET:g})" if x > AUTO_TARGET else "")


def sync_cell(row: dict) -> str:
    """'1.2 / 1.4 (flags)': the forced kernel's time under FUSED_RNN_SYNC=flags and =grid
    ('—' where not timed), and in brackets the policy the default ran; '—' for rows of runs
    made before the policies were timed apart, and where the kernel did not run."""
    flags, grid = row.get("fused_flags_ms"), row.get("fused_grid_ms")
    if flags is None and grid is None:
        return "—"
    return f"{num(flags)} / {num(grid)}" + (f" ({row['default_sync']})" if row.get("default_sync") else "")


def markdown_table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in line) + " |" for line in lines]
    return "\n".join(out)


def baseline_cell(row: dict, name: str) -> str:
    """A baseline's ms, marked ✗ where it failed the parity rule (then it is no baseline)."""
    ms = row.get(f"{name}_ms")
    if ms is None:
        return "—"
    return num(ms) + (" ✗" if str(row.get(f"{name}_parity", "")).startswith("FAIL") else "")


def has_baselines(rows: list[dict]) -> bool:
    """Whether a run measured the baselines beyond eager cuDNN (runs before them did not)."""
    return any(r.get("best_baseline") for r in rows)


def results_table(rows: list[dict]) -> str:
    """The per-case table (bench.py's results.md and the README). Rows of runs made before
    the auto columns or the baselines existed show '—' there."""
    header = ["cell", "L", "H", "B", "T", "dtype", "mode", "cuDNN ms", "cuDNN graph ms",
              "cuDNN persist ms", "FlashRNN ms", "best baseline", "fused kernel ms",
              "fused graph ms", "speedup vs best", "vs eager cuDNN", "fused_rnn (auto) ms",
              "auto / cuDNN", "auto path", "kernel ms flags / grid (default)", "µs / wave step",
              "TFLOP/s (% peak)", "MiB fused / cuDNN", "fused kernel"]
    lines = []
    for r in rows:
        ok = r["status"] == "ok"
        best = "—"
        if r.get("best_baseline"):
            best = f"{r['best_baseline']} {num(r.get('best_baseline_ms'))}"
        headline = f"**{r['speedup_vs_best']:.2f}×**" if r.get("speedup_vs_best") else "—"
        if ok:
            eager = f"{r['speedup_vs_cudnn']:.2f}×" if r["speedup_vs_cudnn"] else "—"
            tflops = num(r["tflops_fused"])
            if r.get("peak_share_fused") is not None:
                tflops += f" ({100 * r['peak_share_fused']:.0f}%)"
        else:
            eager, tflops = f"— ({r['status']})", "—"
            headline = "—"
        note = r["fused_backend"]
        if not ok:
            note = f"{r['status']}: {r['reason']}" if r["reason"] else r["status"]
        if r.get("baseline_notes"):
            note += f" [baselines: {r['baseline_notes']}]"
        lines.append([
            r["cell"], r["layers"], r["hidden"], r["batch"],
            f"{r['seq']} (stream)" if r.get("stream") else r["seq"], r["dtype"], mode_label(r),
            num(r["cudnn_ms"]), baseline_cell(r, "cudnn_graph"), baseline_cell(r, "cudnn_persist"),
            baseline_cell(r, "flashrnn"), best, num(r["fused_ms"]), baseline_cell(r, "fused_graph"),
            headline, eager, num(r.get("auto_ms")), ratio_to_target(r.get("auto_vs_cudnn")),
            path_of(r.get("auto_backend", "")), sync_cell(r),
            num(r["us_per_wave_step"]) if ok else "—", tflops,
            f"{num(r['mem_fused_mib'])} / {num(r['mem_cudnn_mib'])}", note,
        ])
    return markdown_table(header, lines)


def floors_table(floors: dict) -> str:
    """The synchronisation floors measured by floors.py, as a markdown table."""
    lines = []
    for g in floors.get("grid_sync", []):
        what = f"grid.sync(), {g['blocks']} CTAs × {g['threads']} threads" + (
            ", + global exchange" if g["exchange"] else "")
        lines.append([what, num(g.get("us")), g.get("reason", "")])
    for c in floors.get("cluster_sync", []):
        what = f"cluster.sync(), cluster of {c['cluster_size']} ({c['clusters']} clusters)" + (
            ", + DSMEM exchange" if c["exchange"] else "")
        lines.append([what, num(c.get("us")), c.get("reason", "")])
    # DSMEM pushes inside a cluster (st.async + mbarrier); absent from runs made before them
    for p in floors.get("dsmem_pingpong", []):
        sms = p.get("sms")
        where = f"SM {sms[0]} ↔ SM {sms[1]}" if sms else "2 CTAs on 2 SMs"
        note = [p.get("reason", "")]
        if p.get("round_trip_us") is not None:
            note = [f"round trip {num(p['round_trip_us'])} µs", p.get("note", "")]
        lines.append([f"DSMEM hand-off (16 B st.async → mbarrier wait), cluster of 2, {where}, "
                      f"{p['threads']} threads", num(p.get("us")), "; ".join(n for n in note if n)])
    for b in floors.get("dsmem_bandwidth", []):
        note = [b.get("reason", ""), f"{num(b['gb_s'])} GB/s" if b.get("gb_s") else "", b.get("note", "")]
        lines.append([f"DSMEM push of {b['kb']} KB per step, CTA 0 → CTA 1 of a cluster of 2, "
                      f"{b['threads']} threads", num(b.get("us")), "; ".join(n for n in note if n)])
    for a in floors.get("dsmem_all_to_all", []):
        lines.append([f"DSMEM all-to-all, cluster of {a['cluster_size']}, {a['bytes_per_peer']} B to each "
                      f"peer ({a['rows']} rows × {a['units']} units × 2 B), {a['threads']} threads, per step",
                      num(a.get("us")), "; ".join(n for n in (a.get("reason", ""), a.get("note", "")) if n)])
    for o in floors.get("cluster_occupancy", []):
        count = f"{o['clusters']} co-resident clusters" if not o.get("reason") else o["reason"]
        lines.append([f"clusters of {o['cluster_size']} × {o['threads']} threads, {o['smem_kb']} KB "
                      f"dynamic shared memory per CTA", "—", count])
    for s in floors.get("cudnn_layer_step", []):
        what = f"cuDNN {s['cell']} 1 layer, H={s['hidden']} B={s['batch']} T={s['seq']} {s['dtype']}, per step"
        lines.append([what, num(s.get("us")), s.get("reason", "")])
    # step counters (the forward kernel's kFlags policy); absent from runs made before them
    for p in floors.get("flag_pingpong", []):
        sms = p.get("sms")
        where = f"SM {sms[0]} ↔ SM {sms[1]}" if sms else "2 CTAs on 2 SMs"
        what = f"flag hand-off (release store → acquire poll), {where}, {p['threads']} threads"
        note = [p.get("reason", "")]
        if p.get("round_trip_us") is not None:
            note = [f"round trip {num(p['round_trip_us'])} µs", p.get("note", "")]
        lines.append([what, num(p.get("us")), "; ".join(n for n in note if n)])
    for w in floors.get("flag_wait_all", []):
        cfg = (f"{w['producers']} producers + {w['consumers']} consumer{'s' if w['consumers'] > 1 else ''}, "
               f"{w['blocks']} CTAs × {w['threads']} threads")
        lines.append([f"flags: consumers wait for all {w['producers']} slices, {cfg}, per step",
                      num(w.get("us")), "; ".join(n for n in (w.get("reason", ""), w.get("note", "")) if n)])
        if w.get("us") is not None or w.get("grid_sync_us") is not None or w.get("grid_sync_reason"):
            lines.append([f"grid.sync(), same loop, {cfg}, per step", num(w.get("grid_sync_us")),
                          w.get("grid_sync_reason", "")])
        # (variants absent from runs made before them)
        for key, what in (("relaxed_fence", "flags, relaxed polls + one fence"),
                          ("one_counter", "one counter per side, red.release adds (lean)")):
            if f"{key}_us" in w and (w.get("us") is not None or w.get(f"{key}_reason")):
                lines.append([f"{what}, same loop, {cfg}, per step", num(w.get(f"{key}_us")),
                              w.get(f"{key}_reason", "")])
    for p in floors.get("flag_stores_pingpong", []):
        lines.append([f"flag hand-off with {p['stores']} global stores per thread before the "
                      f"publish, {p['threads']} threads", num(p.get("us")), p.get("reason", "")])
    return markdown_table(["floor", "µs", "note"], lines)


def header_text(meta: dict) -> str:
    commit = (meta.get("git_commit") or "unknown")[:12]
    # scripts/gpu_check.sh builds with the per-phase timing recorder compiled in (idle
    # while the benchmark runs, but not the production build): said where it applies
    diag = (" Extension built with the per-phase timing recorder compiled in (idle during "
            "these runs; scripts/gpu_check.sh's build)."
            if (meta.get("fused_rnn") or {}).get("phase_timing_compiled") else "")
    return (f"**{meta['device']}** (compute capability {meta.get('capability', '?')}), "
            f"torch {meta['torch']}, CUDA {meta.get('cuda')}, cuDNN {meta.get('cudnn')}, "
            f"commit `{commit}`, {meta['date'][:10]}.{diag}")


def sync_note(meta: dict) -> str:
    """What the run says about the forward kernel's two synchronisation policies (bench.py
    --sync-compare); '' for runs made before it timed them apart."""
    compare, asked = meta.get("sync_compare"), meta.get("sync_requested") or "auto"
    if compare is None:
        return ""
    s = ("Forward synchronisation (FUSED_RNN_SYNC; grid = one grid.sync() per wave step, flags "
         "= point-to-point step counters): fused kernel ms and the kernel speedup are under "
         f"FUSED_RNN_SYNC={asked}" + (" (the default)" if asked == "auto" else
                                      ", set in the environment: not the default") + "; "
         "kernel ms flags / grid shows that time under the policy it ran (in brackets)")
    if compare == "none":
        return s + ", the other policy not timed (--sync-compare none)."
    where = "in every case" if compare == "all" else (
        "in inference cases only (--sync-compare infer, the --quick default: its time budget)")
    return s + f" and the other policy's, timed in one process on the same inputs {where}."


CONVENTIONS = (
    "fused_rnn against the baselines a user could run instead, in one process, on the same weights "
    "and inputs: cuDNN = torch.nn's module, eager; cuDNN graph = the same captured in a CUDA graph "
    "(training: forward + backward); cuDNN persist = fp16 single-layer modules stacked and "
    "captured, where PyTorch's rule gives cuDNN's PERSIST_STATIC kernel; FlashRNN = its fused CUDA "
    "LSTM, one call per layer. Each is checked against the float64 reference (error ≤ 2 × eager "
    "cuDNN's + a floor; ✗ = failed, then it is no baseline). Median of {runs} runs timed with CUDA "
    "events after warm-up, inputs rotated among several buffers. **Speedup vs best** (the "
    "headline) = the fastest baseline's time / the faster of the fused kernel eager and in a "
    "CUDA graph; vs eager cuDNN = eager cuDNN / the eager kernel. fused_rnn (auto) = the module as "
    "users get it (its default policy): the path it chose and its time; target: auto / cuDNN ≤ "
    + f"{AUTO_TARGET:g}" + ". Fused kernel = the module with the kernel forced "
    "(`fused_rnn.backend(\"fused\")`): 'uncovered' where it cannot run, with its reason; ratios "
    "only where it ran and passed parity. Wave step = kernel time / (T + L − 1). "
    "TFLOP/s counts 2·B·T·Σ_l(in_l + H)·G·H per forward (G = 4 LSTM, 3 GRU), 3× that for "
    "training; % of the dtype's dense datasheet peak. tf32 = float32 with TF32 allowed (PyTorch's "
    "cuDNN default); MiB = peak memory above parameters and inputs; T (stream) = one step per "
    "call with the state carried in."
)
EAGER_ONLY = (
    "**This run measured against eager cuDNN only** (it predates the CUDA-graph, persistent and "
    "FlashRNN baselines, or they did not run): its speedups are against eager `nn.LSTM`, which "
    "is launch-bound at "
    "small batch (one kernel launch per layer and step); cuDNN captured in a CUDA graph is "
    "expected to be several times faster there, so these ratios overstate the margin a "
    "latency-minded user would see."
)


# --------------------------------------------------------------------- section


def acceptance_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if all(r[k] in v for k, v in ACCEPTANCE.items())]


def render_section(results_dir: str | None, readme_dir: str = REPO) -> str:
    """Markdown for the README between the markers (no heading)."""
    path = os.path.join(results_dir, "results.json") if results_dir else None
    if not path or not os.path.exists(path):
        return NO_RESULTS + "\n"
    with open(path) as f:
        doc = json.load(f)
    meta, rows = doc["meta"], doc["cases"]
    link = os.path.relpath(os.path.abspath(results_dir), os.path.abspath(readme_dir)).replace(os.sep, "/")
    shown, note = rows, ""
    if len(rows) > README_MAX_ROWS:
        shown = acceptance_rows(rows)
        note = f" Acceptance shapes shown ({len(shown)} of {len(rows)} cases)."
    parts = [
        f"Latest GPU run: {header_text(meta)}"
        + (f" **Incomplete run:** {meta['incomplete']}." if meta.get("incomplete") else ""),
    ]
    if not has_baselines(rows):
        parts.append(EAGER_ONLY)
    if not any("fused_parity" in r for r in rows):
        note += (" (This run checked the kernel's output against cuDNN's, largest difference "
                 "≤ 0.1, not against the float64 reference.)")
    parts += [
        CONVENTIONS.format(runs=meta.get("runs", "≥ 20")) + note
        + (" " + sync_note(meta) if sync_note(meta) else ""),
        results_table(shown),
    ]
    if os.path.exists(os.path.join(results_dir, "speedup.png")):
        parts.append(f"![speedup vs batch size]({link}/speedup.png)")
    if doc.get("floors"):
        parts.append("Synchronisation floors on this GPU (`benchmarks/floors.py`):\n\n"
                     + floors_table(doc["floors"]))
    parts.append(
        f"All cases: [{link}/results.md]({link}/results.md) (also JSON and CSV). "
        f"Reproduce on an H100/H200: `pip install --no-build-isolation -e . && "
        f"python benchmarks/bench.py --quick` (this run: `{meta['command']}`)."
    )
    return "\n\n".join(parts) + "\n"


def latest_results_dir(root: str = os.path.join(HERE, "results")) -> str | None:
    """The results folder whose results.json has the newest date, or None."""
    best = None
    for path in glob.glob(os.path.join(root, "*", "results.json")):
        try:
            with open(path) as f:
                date = json.load(f)["meta"]["date"]
        except (OSError, ValueError, KeyError):
            continue
        if best is None or date > best[0]:
            best = (date, os.path.dirname(path))
    return best[1] if best else None


def update_readme(readme: str, section: str) -> None:
    with open(readme) as f:
        text = f.read()
    i, j = text.find(START), text.find(END)
    if i < 0 or j < i:
        raise SystemExit(f"{readme}: markers {START} ... {END} not found")
    text = text[: i + len(START)] + "\n" + section + text[j:]
    with open(readme, "w") as f:
        f.write(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results_dir", nargs="?", help="folder holding results.json (default: newest "
                    "under benchmarks/results/)")
    ap.add_argument("--update-readme", action="store_true", help="rewrite README.md between the markers")
    ap.add_argument("--readme", default=os.path.join(REPO, "README.md"))
    args = ap.parse_args(argv)
    results_dir = args.results_dir or latest_results_dir()
    readme_dir = os.path.dirname(os.path.abspath(args.readme))
    section = render_section(results_dir, readme_dir)
    if args.update_readme:
        update_readme(args.readme, section)
        print(f"updated {args.readme} from {results_dir or '(no GPU results)'}", file=sys.stderr)
    else:
        sys.stdout.write(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
