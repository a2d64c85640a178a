"""Where the fused kernel is expected to beat cuDNN: the crossover batch per device.

``auto`` runs the fused kernel on a CUDA call only up to a batch size, per
(dtype, mode, num_layers, hidden_size, bidirectional) and separately for
inference and training. Above it, ``nn.LSTM``'s own path (cuDNN) runs.

Where the numbers come from:

* a **calibrated table**: ``python benchmarks/bench.py --calibrate`` on a GPU
  times the fused kernel and cuDNN in one process on the same inputs and writes
  ``fused_rnn/crossover/<device>.json`` (shipped with the package). A shape the
  table did not measure takes its nearest conservative neighbour: the entry
  with the same dtype, mode and direction with the most layers ``<= L`` and
  the smallest hidden size ``>= H`` (fewer layers and wider layers only make
  the fused kernel's advantage smaller), or never fused when there is none.
* a **prior**: a device without a table of its own takes the table of a device with the
  same compute capability and SM count (an H100 SXM the H200's), until autotuning
  (:mod:`fused_rnn.tuning`) has measured the call's shape on it;
* otherwise the **default from the performance model** in
  ``csrc/kernels/README.md`` (section "Dispatch default"): fused only where
  the model gives it a 1.5x margin over cuDNN's ~2 us per layer-step.

Table format (``format`` 1)::

    {"format": 1, "device": "<torch.cuda.get_device_name()>", "capability": [9, 0],
     "sm_count": 132, "date": ..., "commit": ..., "torch": ..., "cuda": ..., "cudnn": ...,
     "command": ..., "seq_len": 256, "margin": 0.95,
     "entries": [{"dtype": "bf16", "mode": "LSTM", "num_layers": 4, "hidden_size": 512,
                  "bidirectional": false, "forward_max_batch": 64, "training_max_batch": 16,
                  "measured": {...}}, ...]}

An entry may carry its own ``seq_len`` (``--calibrate`` measures T = 64, 256 and 1024): of
the entries of one shape, the one nearest the call's T (by ratio) applies; an entry
without one has the table's.

``dtype`` is one of ``bf16``, ``fp16``, ``tf32`` (float32 with TF32 on, as
cuDNN's RNN setting says) and ``fp32``; ``*_max_batch`` 0 means never fused.

An entry may also hold ``graphed_forward_max_batch`` and ``graphed_training_max_batch``:
the crossover measured with both the fused module and ``nn.LSTM`` captured in CUDA graphs
(cuDNN without its launch overhead). ``auto`` uses them for a call made while the current
stream is capturing a graph (``torch.cuda.is_current_stream_capturing()``); a table without
them (older tables load as before) gives the eager numbers there, and says so.

A file in the table directory that is not such a table (bad JSON, another format,
a malformed entry, a second table for a device that already has one) is ignored
with one :class:`CrossoverTableWarning` naming it: the device then falls back to
its other table or to the performance model's default, and no call fails for it.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import warnings

import torch

TABLE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "crossover")
FORMAT = 1
DTYPE_KEYS = ("bf16", "fp16", "tf32", "fp32")
GRAPHED_KEYS = ("graphed_forward_max_batch", "graphed_training_max_batch")
MODEL_MARGIN = 1.5  # the default asks the model for this much of a win before it goes fused


def device_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (the table's file name)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown-device"


class CrossoverTableWarning(UserWarning):
    """A file among the crossover tables is not a valid table; it is ignored."""


def _count(value, least: int) -> bool:
    """An int (not a bool) of at least `least`."""
    return type(value) is int and value >= least


def check_table(table: dict, where: str = "table") -> None:
    """Raise ValueError unless `table` is a format-1 crossover table."""
    if not isinstance(table, dict) or table.get("format") != FORMAT or \
            type(table.get("format")) is not int:
        raise ValueError(f"{where}: not a fused_rnn crossover table of format {FORMAT}")
    if not isinstance(table.get("device"), str) or not table["device"] \
            or not isinstance(table.get("entries"), list):
        raise ValueError(f"{where}: needs 'device' (a non-empty str) and 'entries' (list)")
    for i, e in enumerate(table["entries"]):
        ok = (isinstance(e, dict) and e.get("dtype") in DTYPE_KEYS
              and e.get("mode") in ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")
              and _count(e.get("num_layers"), 1) and _count(e.get("hidden_size"), 1)
              and _count(e.get("forward_max_batch"), 0)
              and _count(e.get("training_max_batch"), 0)
              and isinstance(e.get("bidirectional"), bool))
        ok = ok and all(_count(e[k], 0) for k in GRAPHED_KEYS if k in e)
        ok = ok and ("seq_len" not in e or _count(e["seq_len"], 1))
        if not ok:
            raise ValueError(f"{where}: entry {i} is malformed (needs dtype, mode, num_layers "
                             ">= 1, hidden_size >= 1, bidirectional (bool), forward_max_batch "
                             "and training_max_batch (ints >= 0); graphed_forward_max_batch and "
                             "graphed_training_max_batch, where present, ints >= 0; seq_len, "
                             f"where present, an int >= 1): {e!r}")


def tables(directory: str | None = None) -> dict:
    """{device name: (table, file)} of every valid table in `directory` (default: the
    package's TABLE_DIR), read once per directory (``tables.cache_clear()`` forgets). A file
    that is not a valid table, or a second table for a device, is ignored with a
    :class:`CrossoverTableWarning` naming it."""
    return _read_tables(os.path.abspath(directory or TABLE_DIR))


@functools.lru_cache(maxsize=None)
def _read_tables(directory: str) -> dict:
    found = {}
    if not os.path.isdir(directory):
        return found
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".json"):
            continue
        path = os.path.join(directory, name)
        try:
            with open(path, encoding="utf-8") as f:
                table = json.load(f)
            check_table(table, path)
        except Exception as e:  # noqa: BLE001 - whatever is wrong with the file, never a call
            why = e if isinstance(e, ValueError) and str(e).startswith(path) else \
                f"{path}: {type(e).__name__}: {e}"
            warnings.warn(f"fused_rnn: ignoring the crossover table {why}; devices it would "
                          "cover use the performance model's default", CrossoverTableWarning,
                          stacklevel=2)
            continue
        device = table["device"]
        if device in found:
            warnings.warn(f"fused_rnn: ignoring the crossover table {path}: {found[device][1]} "
                          f"already covers {device!r} (one table per device)",
                          CrossoverTableWarning, stacklevel=2)
            continue
        found[device] = (table, path)
    return found


tables.cache_clear = _read_tables.cache_clear


def default_max_batch(dtype_key: str, mode: str, num_layers: int, hidden_size: int,
                      bidirectional: bool, training: bool) -> int:
    """The largest batch the performance model expects the fused kernel to win by 1.5x.

    csrc/kernels/README.md, "Dispatch default", derives these numbers: modelled
    fused time per wave step of the kernel before its weights moved to registers,
    kept as the conservative default until a GPU run calibrates the device (bf16:
    3.4 us at B <= 16, 5.3 us at B = 32; TF32 operands double the GEMM's
    shared-memory bytes; the backward adds 3.2-6.3 us)
    against cuDNN's ~2 us per layer-step (L of them per wave step, twice that in
    training). Outside the modelled range (bidirectional, H < 256 where cuDNN
    may use its persistent kernels, H > 512, exact FP32) it never goes fused.
    """
    del mode  # the model is LSTM's; GRU and RNN do less work per step: the same limits
    if bidirectional or not 256 <= hidden_size <= 512 or dtype_key == "fp32":
        return 0
    if dtype_key == "tf32":
        limits = {4: (16, 8)}
    else:  # bf16 / fp16
        limits = {4: (32, 16), 3: (16, 8)}
    fwd, train = limits.get(min(num_layers, 4), (0, 0))
    return train if training else fwd


def _nearest_entry(entries, dtype_key, mode, num_layers, hidden_size, bidirectional,
                   seq_len=None, table_seq_len=None):
    """The conservative neighbour (most layers <= L, then the smallest hidden size >= H);
    among its entries for several sequence lengths, the one nearest `seq_len` (by ratio;
    a tie: the longer; no `seq_len`: the table's). An entry without seq_len has the
    table's."""
    best = None
    seq_len = seq_len or table_seq_len  # no T (a trace): the table's own
    for e in entries:
        if (e["dtype"], e["mode"], e["bidirectional"]) != (dtype_key, mode, bidirectional):
            continue
        if e["num_layers"] > num_layers or e["hidden_size"] < hidden_size:
            continue
        key = (e["num_layers"], -e["hidden_size"])
        if seq_len is not None:
            t = e.get("seq_len", table_seq_len)
            key += ((-abs(math.log2(t / seq_len)), t) if type(t) is int and t > 0
                    else (-math.inf, 0))
        if best is None or key > best[0]:
            best = (key, e)
    return None if best is None else best[1]


def _prior(device_name: str, capability, sm_count, directory: str):
    """(table, file) of another device with the same compute capability and SM count (the
    first by name), or None."""
    if capability is None or sm_count is None:
        return None
    for name, (table, path) in sorted(tables(directory).items()):
        if name != device_name and table.get("capability") == list(capability) \
                and table.get("sm_count") == sm_count:
            return table, path
    return None


def max_batch_for(device_name: str, dtype_key: str, mode: str, num_layers: int,
                  hidden_size: int, bidirectional: bool, training: bool,
                  directory: str | None = None, graphed: bool = False,
                  measured_only: bool = False, seq_len: int | None = None,
                  capability=None, sm_count: int | None = None) -> tuple[int, str]:
    """(largest batch that runs fused under ``auto``, where that number comes from).
    ``graphed``: the call is being captured in a CUDA graph, where cuDNN pays no launch
    overhead: the entry's graphed crossover where the table measured one.
    ``measured_only``: a plan neither the model nor a neighbouring shape prices (a fused
    backward that streams part of its weights from L2): only an entry of this very shape
    (layers and hidden size) counts, else 0. ``seq_len``: the call's T (the entry measured
    nearest to it, where the table holds several). ``capability`` ((major, minor)) and
    ``sm_count``: a device without a table of its own takes the table of a device with the
    same two as a prior (until autotuning measures it, :mod:`fused_rnn.tuning`)."""
    directory = directory or TABLE_DIR
    found = tables(directory).get(device_name)
    prior = ""
    if found is None:
        found = _prior(device_name, capability, sm_count, directory)
        if found is not None:
            prior = (f"; a prior: {device_name} has no table, {found[0]['device']} has the same "
                     f"compute capability {capability[0]}.{capability[1]} and {sm_count} SMs")
    if found is None:
        if measured_only:
            return 0, (f"no calibrated table for {device_name}, and the performance model does "
                       "not price a fused backward that streams part of its weights from L2")
        n = default_max_batch(dtype_key, mode, num_layers, hidden_size, bidirectional, training)
        return n, (f"the performance model's default; no calibrated table for {device_name}"
                   + (" (the same inside a CUDA-graph capture)" if graphed else ""))
    table, path = found
    e = _nearest_entry(table["entries"], dtype_key, mode, num_layers, hidden_size, bidirectional,
                       seq_len, table.get("seq_len"))
    if e is not None and measured_only and (e["num_layers"], e["hidden_size"]) != (
            num_layers, hidden_size):
        return 0, (f"{os.path.basename(path)} has not measured this shape, and a fused backward "
                   f"that streams part of its weights from L2 takes no neighbour's number{prior}")
    if e is None:
        return 0, f"no entry near this shape in {os.path.basename(path)}{prior}"
    key = "training_max_batch" if training else "forward_max_batch"
    shape = f"{e['dtype']} {e['mode']} L={e['num_layers']} H={e['hidden_size']}"
    t = e.get("seq_len", table.get("seq_len"))
    if "seq_len" in e and type(t) is int:
        shape += f" T={t}"
    where = f"calibrated on {table['device']}, {shape} ({os.path.basename(path)}){prior}"
    if not graphed:
        return e[key], where
    if "graphed_" + key in e:
        return e["graphed_" + key], f"{where}, against cuDNN in a CUDA graph"
    return e[key], (f"{where}, measured against eager cuDNN: the table has no CUDA-graph "
                    "crossover for this call's capture")


def dtype_key(dtype: torch.dtype, fp32_uses_tf32: bool) -> str:
    if dtype == torch.bfloat16:
        return "bf16"
    if dtype == torch.float16:
        return "fp16"
    return "tf32" if fp32_uses_tf32 else "fp32"
