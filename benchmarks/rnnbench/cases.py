"""The shapes the benchmark runs, the record each case fills, and the rules both use."""

from __future__ import annotations

import dataclasses
import itertools

import torch

DEVICE = "cuda"  # tests/test_bench.py points this at "cpu" to run the sweep logic with CUDA faked
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1, "RNN_RELU": 1}  # RNN: tanh; RNN_RELU: nonlinearity="relu"
OP_MODE = {"LSTM": "LSTM", "GRU": "GRU", "RNN": "RNN_TANH", "RNN_RELU": "RNN_RELU"}  # fused_rnn.reference's mode names
DTYPES = {  # name -> (torch dtype, TF32 allowed for cuDNN and matmuls; None: not float32)
    "tf32": (torch.float32, True),
    "fp32": (torch.float32, False),
    "bf16": (torch.bfloat16, None),
    "fp16": (torch.float16, None),
}
# Dense tensor-core (and fp32 FMA) peaks in TFLOP/s: NVIDIA datasheet figures, not measured.
PEAK_SOURCE = "NVIDIA datasheet, dense (no sparsity), SXM parts: H100 SXM and H200"
PEAK_TFLOPS = {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0}
FLOP_CONVENTION = ("forward FLOPs = 2*B*T*sum_l (in_l + H)*G*H (G = 4 LSTM, 3 GRU, 1 RNN; "
                   "gate matmuls only, unidirectional); training (forward + backward) = 3x forward")

# The accuracy rule of the GPU tests (tests/gpu/gpu_helpers.py, FWD_FLOOR / BWD_FLOOR; a CPU
# test keeps the two equal): an implementation's largest error against the float64
# reference is at most 2 x eager cuDNN's error at the same dtype + this floor; the forward's
# floor for the output and final state, the backward's for every gradient.
FWD_FLOOR = {"fp32": 1e-5, "tf32": 1.5e-3, "fp16": 1e-3, "bf16": 8e-3}
BWD_FLOOR = {"fp32": 3e-5, "tf32": 2e-3, "fp16": 3e-3, "bf16": 2e-2}

# FUSED_RNN_SYNC's explicit policies (csrc/torch/problem.h), as plan labels name them:
# "..., 514 wave steps, flags sync (ring 4), ..."
SYNC_POLICIES = ("flags", "grid")
SYNC_COMPARE = ("all", "infer", "none")  # --sync-compare: where the second policy is timed too

FULL = dict(cell=["LSTM", "GRU"], layers=[1, 2, 4], hidden=[128, 256, 512, 1024],
            batch=[1, 8, 32, 128, 512], seq=[128, 512], dtype=list(DTYPES),
            mode=["infer", "train"], dropout=[0.0, 0.2])

# The implementations a case times. Baselines are what a user could run instead of
# fused_rnn; "ours" are fused_rnn's kernel, eagerly and captured in a CUDA graph.
BASELINES = ("cudnn", "cudnn_graph", "cudnn_persist", "flashrnn")
OURS = ("fused", "fused_graph")


def peak_tflops(device: str, dtype: str) -> float | None:
    """Datasheet peak for the dtype on H100 SXM / H200; None on any other device."""
    name = device.upper()
    known = ("H200" in name and "NVL" not in name) or ("H100" in name and ("SXM" in name or "HBM3" in name))
    return PEAK_TFLOPS[dtype] if known else None


def forward_flops(cell: str, layers: int, hidden: int, batch: int, seq: int, input_size: int) -> int:
    """2*B*T*sum_l (in_l + H)*G*H: the gate matmuls of a unidirectional stack."""
    width = sum((input_size if l == 0 else hidden) + hidden for l in range(layers))
    return 2 * batch * seq * width * GATES[cell] * hidden


def case_flops(c: "Case") -> int:
    f = forward_flops(c.cell, c.layers, c.hidden, c.batch, c.seq, c.hidden)
    return 3 * f if c.mode == "train" else f


def persist_static(cell: str, dtype: str, layers: int, hidden: int, input_size: int, batch: int,
                   capability: tuple[int, int], sm_count: int = 132, bidirectional: bool = False,
                   proj_size: int = 0) -> tuple[bool | None, str]:
    """Whether PyTorch's cuDNN binding picks CUDNN_RNN_ALGO_PERSIST_STATIC for one call
    (aten/src/ATen/native/cudnn/RNN.cpp: get_algo, use_persist_common_heuristics,
    use_persist_device_heuristics), and why. Only fp16, no projection, unpacked input;
    one layer, unidirectional, H <= 1024, H and the input size multiples of 128; on
    capability >= 8.0 with >= 98 SMs, not x.6: LSTM with B % 8 == 0 and B <= 128, RNN also
    with B < 96 or H < 896, never GRU. (An LSTM with H <= 192 takes cuDNN's persistent
    small-H algorithm instead, in any dtype and eagerly too: no separate baseline.) None: a
    capability whose rule is not modelled here (7.x)."""
    if cell == "LSTM" and hidden <= 192:
        return False, (f"H={hidden}: cuDNN's persistent small-H algorithm, which the nn module "
                       "(cudnn, cudnn_graph) already runs")
    if dtype != "fp16":
        return False, f"PyTorch uses cuDNN's persistent kernel only in fp16 (this is {dtype})"
    if proj_size:
        return False, "an LSTM with a projection runs cuDNN's standard algorithm"
    why = []
    if layers != 1:
        why.append(f"{layers} layers (needs 1)")
    if bidirectional:
        why.append("bidirectional")
    if hidden > 1024 or hidden % 128:
        why.append(f"H={hidden} (needs a multiple of 128, <= 1024)")
    if input_size % 128:
        why.append(f"input size {input_size} (needs a multiple of 128)")
    if why:
        return False, "not PERSIST_STATIC: " + ", ".join(why)
    if capability[0] < 8:
        return None, f"capability {capability[0]}.{capability[1]}: PyTorch's rule there is not modelled"
    if sm_count < 98 or capability[1] == 6:
        return False, (f"not PERSIST_STATIC: PyTorch excludes capability {capability[0]}."
                       f"{capability[1]} with {sm_count} SMs (needs >= 98 SMs, not x.6)")
    if cell == "GRU":
        return False, "not PERSIST_STATIC: PyTorch never takes it for GRU on capability >= 8.0"
    ok = batch % 8 == 0 and batch <= 128
    rnn = cell in ("RNN", "RNN_RELU")
    if rnn:
        ok = ok and (batch < 96 or hidden < 896)
    if not ok:
        return False, f"not PERSIST_STATIC: batch {batch} (needs B % 8 == 0 and B <= 128" + (
            ", and B < 96 or H < 896" if rnn else "") + ")"
    return True, ("PERSIST_STATIC (PyTorch's rule: fp16, 1 layer, H and input % 128 == 0, "
                  "B % 8 == 0, B <= 128)")


# ----------------------------------------------------------------- the cases


@dataclasses.dataclass(frozen=True)
class Case:
    cell: str
    layers: int
    hidden: int
    batch: int
    seq: int
    dtype: str
    mode: str  # "infer" (eval, no_grad) or "train" (forward + backward)
    dropout: float = 0.0
    stream: bool = False  # streaming: calls of T steps carrying a state in (h0, c0 given)

    def label(self) -> str:
        m = self.mode + (f" p={self.dropout:g}" if self.dropout else "")
        return (f"{self.cell} L={self.layers} H={self.hidden} B={self.batch} T={self.seq} "
                f"{self.dtype} {m}" + (" stream" if self.stream else ""))


@dataclasses.dataclass
class Result:
    cell: str
    layers: int
    hidden: int
    batch: int
    seq: int
    input_size: int
    dtype: str
    mode: str
    dropout: float
    stream: bool = False
    status: str = ""  # the fused kernel's: ok | uncovered | mismatch | skipped | error
    reason: str = ""
    fused_backend: str = ""  # the label of the forced-fused call: the kernel's plan
    auto_backend: str = ""  # the label of the call under the default policy: the path users get
    auto_ms: float | None = None
    auto_ms_min: float | None = None
    auto_ms_max: float | None = None
    auto_vs_cudnn: float | None = None  # auto_ms / cudnn_ms; target <= report.AUTO_TARGET
    fused_ms: float | None = None  # the forced kernel under the environment's (default) policy
    fused_ms_min: float | None = None
    fused_ms_max: float | None = None
    default_sync: str = ""  # the policy the fused_ms calls ran ("flags" | "grid"), from its label
    # the forced kernel under each FUSED_RNN_SYNC policy: the default's is fused_ms again; the
    # other's is timed only where --sync-compare says (else None)
    fused_flags_ms: float | None = None
    fused_flags_ms_min: float | None = None
    fused_flags_ms_max: float | None = None
    fused_grid_ms: float | None = None
    fused_grid_ms_min: float | None = None
    fused_grid_ms_max: float | None = None
    fused_flags_vs_cudnn: float | None = None  # fused_flags_ms / cudnn_ms, where the kernel ran ok
    fused_grid_vs_cudnn: float | None = None  # fused_grid_ms / cudnn_ms, where the kernel ran ok
    # the fused module captured in a CUDA graph (the kernel forced), as cudnn_graph
    fused_graph_ms: float | None = None
    fused_graph_ms_min: float | None = None
    fused_graph_ms_max: float | None = None
    # the baselines: eager nn module; the same captured in a CUDA graph; fp16 single-layer
    # modules stacked and captured (cuDNN's persistent kernel where PyTorch's rule picks it);
    # FlashRNN (cuda_fused), a stack of single-layer calls with the input projections
    cudnn_ms: float | None = None
    cudnn_ms_min: float | None = None
    cudnn_ms_max: float | None = None
    cudnn_graph_ms: float | None = None
    cudnn_graph_ms_min: float | None = None
    cudnn_graph_ms_max: float | None = None
    cudnn_persist_ms: float | None = None
    cudnn_persist_ms_min: float | None = None
    cudnn_persist_ms_max: float | None = None
    cudnn_persist_static: str = ""  # PyTorch's rule for the layer calls: why (not) PERSIST_STATIC
    flashrnn_ms: float | None = None
    flashrnn_ms_min: float | None = None
    flashrnn_ms_max: float | None = None
    flashrnn_build_s: float | None = None  # its JIT build (first call), apart from the timings
    reference_ms: float | None = None
    reference_ms_min: float | None = None
    reference_ms_max: float | None = None
    # parity against the float64 reference (output and final state; in training also the
    # input's and every weight's gradient): each implementation's largest error, and "ok" or
    # what broke the rule (err <= 2 x eager cuDNN's error + floor); "" = not checked
    cudnn_err: float | None = None
    cudnn_graph_err: float | None = None
    cudnn_persist_err: float | None = None
    flashrnn_err: float | None = None
    fused_err: float | None = None
    fused_graph_err: float | None = None
    cudnn_graph_parity: str = ""
    cudnn_persist_parity: str = ""
    flashrnn_parity: str = ""
    fused_parity: str = ""
    fused_graph_parity: str = ""
    baseline_notes: str = ""  # baselines skipped or failed, and why
    # the headline: the fastest baseline that ran and passed parity, against the faster of
    # the fused kernel eager and in a CUDA graph
    best_baseline: str = ""
    best_baseline_ms: float | None = None
    fused_best: str = ""
    fused_best_ms: float | None = None
    speedup_vs_best: float | None = None  # best_baseline_ms / fused_best_ms
    speedup_vs_cudnn: float | None = None  # eager cuDNN / eager fused kernel
    us_per_call_fused: float | None = None  # streaming cases: fused_best_ms in µs per call
    us_per_call_best_baseline: float | None = None
    us_per_wave_step: float | None = None
    cudnn_us_per_layer_step: float | None = None
    tokens_per_s_fused: float | None = None
    tokens_per_s_cudnn: float | None = None
    gflop: float | None = None
    tflops_fused: float | None = None
    tflops_cudnn: float | None = None
    peak_tflops: float | None = None
    peak_share_fused: float | None = None
    peak_share_cudnn: float | None = None
    mem_fused_mib: float | None = None
    mem_cudnn_mib: float | None = None
    max_abs_diff_vs_cudnn: float | None = None
    host_syncs_fused: int | None = None
    host_syncs_cudnn: int | None = None
    runs: int = 0
    buffers: int = 0


def normalize(c: Case) -> Case | None:
    """Inference has no dropout; a 1-layer stack has none either (torch applies it between
    layers); a streaming case is inference."""
    if c.stream and c.mode != "infer":
        return None
    if c.mode == "infer" or c.layers == 1:
        if c.dropout and c.mode == "train":
            return None
        return dataclasses.replace(c, dropout=0.0)
    return c


def quick_cases() -> list[Case]:
    acc = [Case("LSTM", L, H, B, 512, dt, mode)
           for mode in ("infer", "train") for dt in ("tf32", "bf16")
           for L in (2, 4) for H in (256, 512) for B in (1, 32, 512)]
    extra = [Case("GRU", 2, 512, B, 512, "bf16", mode) for mode in ("infer", "train") for B in (1, 32, 512)]
    extra += [Case("LSTM", 4, 512, 32, 512, dt, "train", 0.2) for dt in ("tf32", "bf16")]
    extra += [Case("LSTM", 2, 256, B, 128, dt, "infer") for dt in ("tf32", "bf16") for B in (1, 32)]
    # one layer: FlashRNN's own shape (LSTM H=768 B=16 T=1024), and H=512 at small batches
    extra += [Case("LSTM", 1, 768, 16, 1024, dt, mode) for dt in ("bf16", "fp16") for mode in ("infer", "train")]
    extra += [Case("LSTM", 1, 512, B, 512, dt, "infer") for dt in ("bf16", "fp16") for B in (1, 8, 32)]
    # fp16, where PyTorch may take cuDNN's persistent kernel for single layers
    extra += [Case("LSTM", 4, 512, B, 512, "fp16", mode) for mode in ("infer", "train") for B in (1, 32)]
    # streaming latency: one step per call with the state carried in, eager and graphed
    extra += [Case("LSTM", 4, 512, B, 1, dt, "infer", stream=True) for dt in ("bf16", "tf32") for B in (1, 8)]
    return acc + extra


def full_cases() -> list[Case]:
    axes = [FULL[k] for k in ("cell", "dtype", "mode", "dropout", "layers", "hidden", "seq", "batch")]
    return [Case(cell, L, H, B, T, dt, mode, p)
            for cell, dt, mode, p, L, H, T, B in itertools.product(*axes)]


def select_cases(args) -> list[Case]:
    """The base sweep (quick or full), each axis given on the command line replaced by its values."""
    cases = quick_cases() if args.quick else full_cases()
    for axis in ("cell", "layers", "hidden", "batch", "seq", "dtype", "mode", "dropout"):
        values = getattr(args, axis)
        if values is not None:
            cases = [dataclasses.replace(c, **{axis: v}) for c in cases for v in values]
    seen, out = set(), []
    for c in cases:
        c = normalize(c)
        if c is not None and c not in seen:
            seen.add(c)
            out.append(c)
    return out


def estimate_bytes(c: Case, buffers: int) -> int:
    """Rough upper bound of device memory one case needs (inputs, activations of one
    implementation, a float64 reference's and a CUDA graph's pool)."""
    e = torch.empty((), dtype=DTYPES[c.dtype][0]).element_size()
    io = c.seq * c.batch * c.hidden * e
    params = c.layers * 2 * GATES[c.cell] * c.hidden * c.hidden * e * 2  # two modules
    acts = c.layers * c.seq * c.batch * c.hidden * (GATES[c.cell] + 3) * e
    graphs = buffers * (io + (params // 2 if c.mode == "train" else 0))  # a graph's static outputs
    if c.mode == "train":
        return params * 2 + io * (2 * buffers + 4) + 2 * acts + acts * 8 // e + 2 * graphs
    return params + io * (buffers + 4) + 2 * c.layers * c.batch * c.hidden * e + io * 8 // e + 2 * graphs


def set_precision(dtype_name: str) -> torch.dtype:
    """The torch dtype of a dtype name; for float32, TF32 on or off for cuDNN, cuBLAS and the
    fused kernel alike (which follows torch's cuDNN setting)."""
    dtype, tf32 = DTYPES[dtype_name]
    if tf32 is not None:
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return dtype
