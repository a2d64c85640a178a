"""fused_rnn.backend_info(): what this installation can run, and why not."""

from __future__ import annotations

import os

import torch

from . import policy
from ._build import CSRC, FIX, extension_status, load_extension
from . import dispatch, tuning


def backend_info(load: bool = True) -> dict:
    """Describe the available backends.

    Keys: ``cuda_available``, ``device`` (name of the current CUDA device or
    None), ``extension_loaded``, ``extension_how`` ("prebuilt" / "jit" /
    None), ``compiled_archs``, ``source_hash`` (of the csrc/ it was built from),
    ``phase_timing_compiled`` (a diagnostics build with the per-phase timing
    recorder), ``reason`` (why the extension is not loaded), ``fix`` (how to get
    it, when torch has CUDA but the extension is missing; else None), ``sources``
    (the ``csrc/`` a JIT build would compile),
    ``backend`` (what is asked for now in this thread: ``fused_rnn.backend(...)``, else
    ``FUSED_RNN_BACKEND``, else "auto"; a module's own setting comes between the
    two; None when it comes from an invalid ``FUSED_RNN_BACKEND``), ``backend_error`` (why
    ``FUSED_RNN_BACKEND`` is invalid, or None), ``sync`` (the forward and backward kernels'
    synchronisation policy asked for now: the ``FUSED_RNN_SYNC`` environment variable, "grid"
    (one grid barrier per wave step), "flags" (point-to-point step counters), "lean" (the
    forward's opt-in lean protocol: one counter per layer-direction, relaxed polls, one fence;
    the backward runs flags), "cluster" (the forward's opt-in recurrence in a thread-block
    cluster per layer-direction on sm_90, h pushed through distributed shared memory, where
    the plan allows it -- 16-bit, B <= 64, at most 16 CTAs per layer-direction -- else flags,
    the plan saying why: "..., cluster sync (ring 4), ..., recurrence in clusters of 16
    CTAs ..." / "...; no cluster recurrence (requested: ...)"; the backward runs flags) or
    "auto", which
    it is when unset or empty and which runs flags; the extension reads the variable at every
    call, and a call's plan, e.g. a module's ``last_backend`` / ``last_backward_backend``, names the
    policy it ran: "..., flags sync (ring 4), ..." / "..., flags sync"), ``cluster`` (the
    backward kernel's thread-block cluster size asked for now: ``FUSED_RNN_CLUSTER``, "auto"
    when unset or empty -- the planner's choice, clusters on sm_90 where the gate-gradient
    stream dominates -- or "1" (none), "2", "4", "8"; the backward's plan names the
    clusters it uses: "..., K stream multicast in clusters of 8 CTAs, ..."), ``fast_tanh``
    (``FUSED_RNN_FAST_TANH=1``: the bf16 forward's epilogue on the hardware tanh, opt-in; a
    plan that uses it says "..., hardware tanh"),
    ``crossover_table`` (the calibrated table of this device, or None: the performance model's default),
    ``crossover_prior`` (a device without a table of its own: the table of a device with the
    same compute capability and SM count, which ``auto`` uses until it measures, or None),
    ``autotune`` (:func:`fused_rnn.tuning.info`: the autotuning mode ("auto", "on", "off"),
    whether it is ``active`` on this device and why, ``graphs``, ``cache_dir``, the
    ``cache_file`` and its ``entries`` (key -> the decision, the two times, the first-use
    check), the keys whose fused path a failed check ``disabled``, and the ``recent``
    measurements of this process) and
    ``default_path`` (what ``auto`` runs here).
    With ``load=True`` (default) a CUDA machine loads (or JIT-builds) the
    extension first; a CPU machine never tries to build anything.
    """
    cuda = torch.cuda.is_available()
    ext = load_extension() if (load and cuda) else None
    status = extension_status()
    archs = []
    if ext is not None and hasattr(ext, "compiled_archs"):
        archs = list(ext.compiled_archs())
    # build facts: the csrc/ hash it was compiled from, and whether its kernels carry the
    # per-phase timing recorder (a diagnostics build: FUSED_RNN_PHASE_TIMING=1)
    source_hash = getattr(ext, "source_hash", None) if ext is not None else None
    phase_timing = bool(getattr(ext, "phase_timing_compiled", False)) if ext is not None else None
    table = prior = None
    tune = tuning.info(None)
    if not cuda:
        reason = ("torch is a CPU-only build" if torch.version.cuda is None
                  else "no CUDA device visible")
        default = ("native (torch's own implementation) in eager mode; the reference stack "
                   "(the custom op) inside torch.compile")
    else:
        reason = status["reason"] if ext is None else None
        facts = tuning.device_facts(None)  # the current device
        found = policy.tables().get(facts.name)
        table = found[1] if found else None
        if found is None:
            near = policy._prior(facts.name, facts.capability, facts.sm_count, policy.TABLE_DIR)
            prior = near[1] if near else None
        tune = tuning.info(facts)
        source = ("calibrated table" if table else
                  "a prior table" if prior else "performance-model default")
        default = ("fused CUDA kernel where the planners cover the call and "
                   + ("autotuning measured it faster than cuDNN on this device (else the "
                      + source + ")" if tune["active"] else
                      "the batch is at most the crossover batch (" + source + ")")
                   + "; native (cuDNN) otherwise" if ext is not None
                   else "native (cuDNN): the extension is unavailable")
    return {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": cuda,
        "device": torch.cuda.get_device_name() if cuda else None,
        "extension_loaded": ext is not None,
        "extension_how": status["how"],
        "compiled_archs": archs,
        "source_hash": source_hash,
        "phase_timing_compiled": phase_timing,
        "reason": reason,
        "fix": FIX if (cuda and ext is None) else None,
        "sources": CSRC,
        "backend": _asked(),
        "backend_error": dispatch._ENV_ERROR,
        "sync": os.environ.get("FUSED_RNN_SYNC") or "auto",
        "cluster": os.environ.get("FUSED_RNN_CLUSTER") or "auto",
        "fast_tanh": os.environ.get("FUSED_RNN_FAST_TANH") == "1",
        "crossover_table": table,
        "crossover_prior": prior,
        "autotune": tune,
        "default_path": default,
    }


def _asked():
    """What this thread asks for now (no module setting), or None where that is an invalid
    FUSED_RNN_BACKEND (its error is reported beside it, not raised)."""
    try:
        return dispatch.requested()[0]
    except ValueError:
        return None
