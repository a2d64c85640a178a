"""Shared helpers of the benchmark scripts: timing, environment, result files.

Timing rules (DESIGN.md section 5): CUDA events around each run, warm-up
first, inputs rotated among several buffers, no host synchronisation inside
the timed region except the final one; report median, min and max.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import typing

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ timing


def cuda_time(step, inputs, runs: int, warmup: int, prepare=None) -> list[float]:
    """Milliseconds of `runs` calls of step(x), x cycling through `inputs`.

    Each run sits between its own pair of CUDA events; the host waits only
    once, on the last event. `prepare()` runs on the host before each run,
    outside the events (e.g. dropping the previous run's gradients).
    """
    for i in range(warmup):
        if prepare is not None:
            prepare()
        step(inputs[i % len(inputs)])
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    torch.cuda.synchronize()
    for i in range(runs):
        if prepare is not None:
            prepare()
        x = inputs[(warmup + i) % len(inputs)]
        starts[i].record()
        step(x)
        ends[i].record()
    ends[-1].synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def stats(times: list[float]) -> tuple[float, float, float]:
    """(median, min, max) of a list of times."""
    s = sorted(times)
    n = len(s)
    median = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
    return median, s[0], s[-1]


def peak_memory_mib(step, x) -> float:
    """Peak memory allocated by one step(x) above what was allocated before it, in MiB."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step(x)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


# ------------------------------------------------------------- environment


SYNC_ENV = "FUSED_RNN_SYNC"  # the forward kernel's synchronisation policy (csrc/torch/problem.h)
SYNC_VALUES = ("grid", "flags", "auto")  # what the extension accepts; unset or "" = auto


@contextlib.contextmanager
def env_var(name: str, value: str | None):
    """os.environ[name] = value inside the block (None: unset), and afterwards exactly what
    was there before (the old value, or no variable), exceptions and Ctrl-C included."""
    had, old = name in os.environ, os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if had:
            os.environ[name] = old
        else:
            os.environ.pop(name, None)


def sync_policy(policy: str | None):
    """FUSED_RNN_SYNC = policy ("grid", "flags", "auto"; None: unset) inside the block. The
    extension reads it at every call and its plan cache keys on it, so calls in one process
    can switch policies."""
    return env_var(SYNC_ENV, policy)


def requested_sync() -> str:
    """The policy FUSED_RNN_SYNC asks for now: its value, or "auto" when unset or empty."""
    return os.environ.get(SYNC_ENV) or "auto"


def device_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (folder name under results/)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown-device"


def git_commit() -> str:
    """HEAD of the repository, with '-dirty' when tracked files have changes; '' if unknown."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + ("-dirty" if head and dirty else "")


def environment() -> dict:
    """Where and how a run happened: device, versions, commit, date, exact command."""
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable)] + sys.argv),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": "cpu",
        "device_slug": "cpu",
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(torch.cuda.current_device())
        env.update(
            device=p.name,
            device_slug=device_slug(p.name),
            capability=f"{p.major}.{p.minor}",
            sm_count=p.multi_processor_count,
            memory_gib=round(p.total_memory / 2**30, 1),
            l2_mib=round(getattr(p, "L2_cache_size", 0) / 2**20, 1),
        )
    else:
        env["cpu"] = platform.processor() or platform.machine()
        env["threads"] = torch.get_num_threads()
    return env


# ------------------------------------------------------------- result files


def _finite(x):
    """x with every NaN / infinity replaced by None (JSON has neither)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def write_json(path: str, meta: dict, rows: list, **extra) -> None:
    """{"meta": ..., "cases": [row dicts], **extra} as indented JSON."""
    doc = _finite({"meta": meta, "cases": [dataclasses.asdict(r) for r in rows], **extra})
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, allow_nan=False, default=str)
        f.write("\n")


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def write_csv(path: str, rows: list) -> None:
    """Every field of every row (dataclass instances of one type); None is written as ''."""
    if not rows:
        open(path, "w").close()
        return
    names = [f.name for f in dataclasses.fields(rows[0])]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        for r in rows:
            w.writerow(["" if v is None else repr(v) if isinstance(v, float) else v
                        for v in dataclasses.astuple(r)])


def _parse(text: str, kind):
    if text == "" and kind is not str:
        return None
    if kind is bool:
        return text == "True"
    return kind(text)


def read_csv(path: str, cls) -> list:
    """Rows written by write_csv, as instances of the dataclass `cls`, values typed."""
    hints = typing.get_type_hints(cls)
    kinds = {}
    for name, hint in hints.items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        kinds[name] = args[0] if args else hint
    with open(path, newline="") as f:
        return [cls(**{k: _parse(v, kinds[k]) for k, v in row.items()}) for row in csv.DictReader(f)]


# --------------------------------------------------------- optional packages


def optional(name: str):
    """The module, or None when it is not installed (matplotlib, tqdm on CPU CI)."""
    try:
        return __import__(name)
    except ImportError:
        return None
