"""What a GPU sweep writes: results.json / .csv / .md, the plots, and its summaries."""

from __future__ import annotations

import dataclasses
import os

import common
import report

from .cases import BASELINES, DTYPES, FULL, Result


def _save_figure(plt, fig, out_dir: str, name: str) -> str:
    fig.tight_layout()
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot(results: list[Result], out_dir: str, device: str) -> list[str]:
    """speedup.png (speedup vs batch, per H and dtype) and step_time.png (time per step vs T)."""
    mpl = common.optional("matplotlib")
    if mpl is None:
        print("matplotlib not installed: plots skipped")
        return []
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r.status == "ok" and not r.stream]
    if not ok:
        print("no case where the fused kernel ran: plots skipped")
        return []
    written = []
    # the headline where the run has it (against the best baseline); older runs: eager cuDNN
    key = "speedup_vs_best" if any(r.speedup_vs_best for r in ok) else "speedup_vs_cudnn"
    against = "the best baseline" if key == "speedup_vs_best" else "eager cuDNN"
    dtypes = [d for d in DTYPES if any(r.dtype == d for r in ok)]
    groups = sorted({(r.cell, report.mode_label(dataclasses.asdict(r))) for r in ok})
    hs = sorted({r.hidden for r in ok})
    colors = {h: plt.cm.viridis(i / max(1, len(hs) - 1)) for i, h in enumerate(hs)}
    styles = {1: ":", 2: "--", 4: "-"}
    fig, axes = plt.subplots(len(groups), len(dtypes), squeeze=False, sharex=True,
                             figsize=(4.2 * len(dtypes), 3.2 * len(groups)))
    for gi, (cell, mode) in enumerate(groups):
        for di, dt in enumerate(dtypes):
            ax = axes[gi][di]
            ax.set_title(f"{cell} {mode} {dt}", fontsize=9)
            here = [r for r in ok if (r.cell, report.mode_label(dataclasses.asdict(r)), r.dtype) == (cell, mode, dt)]
            if not here:
                ax.axis("off")
                continue
            for (L, H, T) in sorted({(r.layers, r.hidden, r.seq) for r in here}):
                pts = sorted((r.batch, getattr(r, key)) for r in here
                             if (r.layers, r.hidden, r.seq) == (L, H, T) and getattr(r, key))
                if not pts:
                    continue
                ax.plot(*zip(*pts), marker="o" if T == max(FULL["seq"]) else "s", color=colors[H],
                        linestyle=styles.get(L, "-."), label=f"L={L} H={H} T={T}")
            ax.axhline(1.0, color="grey", linewidth=0.8)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("batch size")
            ax.set_ylabel(f"speedup vs {against}")
            ax.legend(fontsize=6)
    fig.suptitle(f"fused_rnn speedup over {against} (its time / fused time)\n{device}", fontsize=10)
    written.append(_save_figure(plt, fig, out_dir, "speedup.png"))

    # time per timestep vs T at the smallest batch, inference: the latency regime
    fig, axes = plt.subplots(1, len(dtypes), squeeze=False, figsize=(4.5 * len(dtypes), 3.4))
    for di, dt in enumerate(dtypes):
        ax = axes[0][di]
        rows = [r for r in ok if r.dtype == dt and r.mode == "infer"]
        if not rows:
            continue
        b0 = min(r.batch for r in rows)
        for key in sorted({(r.cell, r.layers, r.hidden) for r in rows}):
            sel = sorted((r.seq, r) for r in rows if (r.cell, r.layers, r.hidden) == key and r.batch == b0)
            if not sel:
                continue
            T = [s for s, _ in sel]
            line, = ax.plot(T, [1e3 * r.fused_ms / r.seq for _, r in sel], marker="o",
                            label=f"fused {key[0]} L={key[1]} H={key[2]}")
            ax.plot(T, [1e3 * r.cudnn_ms / r.seq for _, r in sel], marker="x", linestyle="--",
                    color=line.get_color(), label=f"cuDNN {key[0]} L={key[1]} H={key[2]}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("T (timesteps)")
        ax.set_ylabel("µs per timestep (time / T)")
        ax.set_title(f"{dt}, inference, B={b0}", fontsize=9)
        ax.legend(fontsize=6)
    fig.suptitle(f"time per step vs T\n{device}", fontsize=10)
    written.append(_save_figure(plt, fig, out_dir, "step_time.png"))
    return written


def write_outputs(out_dir: str, meta: dict, results: list[Result], floors: dict | None) -> None:
    os.makedirs(out_dir, exist_ok=True)
    common.write_json(os.path.join(out_dir, "results.json"), meta, results, floors=floors)
    common.write_csv(os.path.join(out_dir, "results.csv"), results)
    rows = [dataclasses.asdict(r) for r in results]
    md = [f"# fused_rnn benchmark: {meta['device']}", "", report.header_text(meta), "",
          f"Command: `{meta['command']}`", ""]
    if meta.get("incomplete"):
        md += [f"**Incomplete run:** {meta['incomplete']}.", ""]
    if not report.has_baselines(rows):
        md += [report.EAGER_ONLY, ""]
    md += [report.CONVENTIONS.format(runs=meta["runs"]), ""]
    if report.sync_note(meta):
        md += [report.sync_note(meta), ""]
    md += [report.results_table(rows), ""]
    if floors:
        md += ["## Synchronisation floors", "", report.floors_table(floors), ""]
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write("\n".join(md))
    files = ["results.json", "results.csv", "results.md"]
    files += [os.path.basename(p) for p in plot(results, out_dir, meta["device"])]
    print(f"wrote {', '.join(files)} to {out_dir}")


def auto_summary(results: list[Result]) -> str:
    """How many cases meet the GPU target (fused_rnn as users get it <= AUTO_TARGET x cuDNN)."""
    timed = [r for r in results if r.auto_vs_cudnn is not None]
    over = [f"{r.cell} L={r.layers} H={r.hidden} B={r.batch} T={r.seq} {r.dtype} "
            f"{report.mode_label(dataclasses.asdict(r))}: {r.auto_vs_cudnn:.2f} "
            f"({report.path_of(r.auto_backend)})" for r in timed if r.auto_vs_cudnn > report.AUTO_TARGET]
    s = (f"fused_rnn as users get it (auto) within {report.AUTO_TARGET:g}x cuDNN's time: "
         f"{len(timed) - len(over)}/{len(timed)} timed cases")
    return s + ("; over: " + "; ".join(over) if over else "")


def best_summary(results: list[Result]) -> str:
    """The headline over the sweep: speedup against the best baseline, its range, and how
    often each baseline was the best."""
    rows = [r for r in results if r.speedup_vs_best is not None]
    if not rows:
        return "speedup vs the best baseline: no case where both the kernel and a baseline ran"
    s = sorted(r.speedup_vs_best for r in rows)
    wins = {}
    for r in rows:
        wins[r.best_baseline] = wins.get(r.best_baseline, 0) + 1
    slower = sum(x < 1 for x in s)
    failed = {}
    for r in results:
        for name in BASELINES:
            if str(getattr(r, f"{name}_parity", "")).startswith("FAIL"):
                failed[name] = failed.get(name, 0) + 1
    return (f"speedup vs the best baseline (the fastest baseline that passed parity, against "
            f"the faster of fused / fused_graph): {s[0]:.2f}x to {s[-1]:.2f}x over {len(rows)} "
            f"cases, slower in {slower}; best baseline: "
            + ", ".join(f"{k} {v}x" for k, v in sorted(wins.items()))
            + ("; left out for failing parity: " + ", ".join(f"{k} {v}x" for k, v in sorted(failed.items()))
               if failed else ""))
