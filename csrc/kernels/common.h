// Shared vocabulary of the fused_rnn kernels: enums, limits, small helpers.
//
// No torch header and no CUDA header: this file (like gate_math.h,
// forward_params.h and forward_plan.h) also compiles with a plain g++, so the
// planner and the gate math are unit-tested on machines without a GPU
// (tests/test_compile_kernels.py).
#pragma once

#include <stdint.h>

// FRNN_HD is spelled exactly as in philox.cuh (identical redefinition is legal).
#if defined(__CUDACC__)
#ifndef FRNN_HD
#define FRNN_HD __host__ __device__ __forceinline__
#endif
#define FRNN_DEVICE __device__ __forceinline__
#else
#ifndef FRNN_HD
#define FRNN_HD inline
#endif
#define FRNN_DEVICE inline
#endif

// FRNN_EMU_BREAK (emulation builds only, csrc/emu): a deliberately broken
// kernel that the tests must see fail. 1-3: the flag synchronisation
// (sync_flags.cuh); 4, 5: the mma.sync fragment layouts (mma_frag.cuh);
// 6, 7: the backward's flag waits (backward_kernel.cuh): 6 waits for the
// layer above one step short, 7 for its own layer one step short; 8-10: the
// backward's cluster barriers (cluster_copy.cuh); 11-13: the forward's
// recurrence in a cluster (forward_kernel.cuh): 11 the receiver's arrive
// announces no bytes (no expect_tx), 12 it waits for the wrong parity, 13 it
// never arrives.
#ifndef FRNN_EMU_BREAK
#define FRNN_EMU_BREAK 0
#endif
#if FRNN_EMU_BREAK != 0 && !defined(FRNN_EMULATION)
#error "FRNN_EMU_BREAK builds a deliberately broken kernel: emulation builds only"
#endif

// FRNN_BISECT: diagnostic builds of the backward kernel, for narrowing down a
// compute-sanitizer report (scripts/sanitize_target.cu builds them; 0, the
// kernel as shipped, in every other build). A sum of:
//   1   the prologue stores the weight tile as 32-bit words (two adjacent
//       16-bit K elements each) instead of 16-bit stores; same bytes
//   2   every shared-memory access of the kernel's own code through a generic
//       address the compiler can not trace to shared memory (LD / ST instead
//       of LDS / STS; cp.async and the mbarriers convert it back); same bytes
//   4   the per-step GEMM is skipped: the partial sums stay zero, so dh gets
//       no recurrent and no above contribution (different results)
//   8   the epilogue does not read the partial sums (zero instead; the same
//       results as 4, with the GEMM still run)
//   16  all of a CTA's shared memory is filled with 0xFF (NaN in every float
//       type) at launch, and the never-written staging rows are left so (not
//       zeroed): a result that depends on them is no longer finite
// 1, 2 and 16 leave every result bit-identical (tests/test_sanitize_target.py).
#ifndef FRNN_BISECT
#define FRNN_BISECT 0
#endif
#if FRNN_BISECT < 0 || FRNN_BISECT > 31
#error "FRNN_BISECT: a sum of 1, 2, 4, 8, 16"
#endif

namespace fused_rnn {

constexpr int kBisectWideWeightStores = 1;
constexpr int kBisectGenericSmem = 2;
constexpr int kBisectNoGemm = 4;
constexpr int kBisectNoPartRead = 8;
constexpr int kBisectPoisonSmem = 16;
// Is switch `s` of FRNN_BISECT on in this build?
constexpr bool bisect_on(int s) { return (FRNN_BISECT & s) != 0; }

// Element types of the tensors (input, weights, states, outputs).
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// torch's `mode` strings: "LSTM", "GRU", "RNN_TANH", "RNN_RELU".
enum class Mode : int { kLSTM = 0, kGRU = 1, kRnnTanh = 2, kRnnRelu = 3 };

// What the kernel template is specialised on. The two Elman variants share a
// kernel (the nonlinearity is a runtime flag: a uniform branch in the
// epilogue costs nothing next to the GEMM).
enum class CellKind : int { kLSTM = 0, kGRU = 1, kRNN = 2 };

FRNN_HD CellKind cell_kind(Mode m) {
  return m == Mode::kLSTM ? CellKind::kLSTM
       : m == Mode::kGRU  ? CellKind::kGRU
                          : CellKind::kRNN;
}

// Gates per hidden unit, in torch's weight layout: LSTM i,f,g,o; GRU r,z,n.
FRNN_HD int num_gates(Mode m) {
  return m == Mode::kLSTM ? 4 : m == Mode::kGRU ? 3 : 1;
}

FRNN_HD int dtype_size(DType t) { return t == DType::kFloat32 ? 4 : 2; }

inline const char* dtype_name(DType t) {
  return t == DType::kFloat32 ? "float32" : t == DType::kFloat16 ? "float16" : "bfloat16";
}

inline const char* mode_name(Mode m) {
  return m == Mode::kLSTM ? "LSTM" : m == Mode::kGRU ? "GRU"
       : m == Mode::kRnnTanh ? "RNN_TANH" : "RNN_RELU";
}

// Threads per CTA of the forward kernel (8 warps). Fixed: the planner, the
// occupancy query and the kernel's __launch_bounds__ all use it.
constexpr int kForwardThreads = 256;
constexpr int kForwardWarps = kForwardThreads / 32;

// Upper bound on num_layers * num_directions: the per-(layer, direction)
// weight pointers travel inside the kernel's parameter struct (no device-side
// pointer table, so no host-to-device copy and nothing to keep alive).
constexpr int kMaxLayerDirs = 32;

// Tile edge of the GEMM: M (gate rows) and K (reduction) are padded to it,
// and the batch tile N to 16 for FP32 FMA (8 for the tensor-core paths,
// whose mma.sync tiles are 16 x 8).
constexpr int kTile = 16;

// Weights in registers (the forward's tensor-core paths): each warp keeps the
// first tiles (16 gate rows x 16 K) of its first GEMM work item as mma.sync A
// fragments in registers for the whole launch -- 104 (16-bit) or 128 (TF32)
// registers per thread, i.e. 104 / 128 KB per CTA -- and the rest of the
// CTA's weight rows in shared memory (csrc/kernels/README.md, "Weights in registers"). A tile is one
// m16n8k16 fragment (4 registers) in 16 bits, two m16n8k8 ones (8) in TF32.
// Exact fp32 (FMA) keeps every weight in shared memory.
// 16 bits: 26 tiles (104 registers), so that ptxas fits the rest of every
// variant -- the per-phase timing build (FRNN_PHASE_TIMING) included, which
// the GPU check runs -- in the other ~150 of its 255 without spilling (30
// tiles spill in the timing build, 32 in some production variants).
constexpr int kRegTiles16 = 26;
constexpr int kRegTilesTf32 = 14;
FRNN_HD int register_tiles(DType t, bool tf32) {
  return t == DType::kFloat32 ? (tf32 ? kRegTilesTf32 : 0) : kRegTiles16;
}

// How the CTAs of a persistent launch wait for each other between steps.
//   kGrid   one grid-wide barrier (cooperative groups' grid.sync()) per wave
//           step: every CTA waits for every other, layers run in lock-step.
//   kFlags  point-to-point: each CTA publishes the number of steps it has
//           completed (a release store) and waits (acquire loads) on exactly
//           the CTAs whose data it reads or whose reads it would overwrite
//           (sync_flags.cuh). Layers run ahead of each other as far as the
//           data allows.
//   kAuto   (a request only) the planner's choice: kFlags.
//   kLean   (a request only; opt-in until a GPU run verifies it) the forward's kFlags
//           kernel with its lean protocol (ForwardConfig::lean_sync, sync_flags.cuh):
//           one counter per (layer, direction) on its own 128-byte line, advanced
//           by red.release adds, polled relaxed with one acquire fence after the
//           wait. The backward runs kFlags.
//   kCluster (opt-in until a GPU run verifies it; sm_90, 16-bit) the forward's kFlags
//           kernel, compiled once more, with the recurrence inside a thread-block cluster
//           per (layer, direction) (ForwardConfig::cluster_rec): each CTA pushes its
//           h_t into every peer's shared memory (st.async + mbarrier), so a layer's
//           own h_{t-1} never goes through L2 or a step counter; the layers still
//           hand off through the L2 ring and flags. Where the plan does not allow it,
//           kFlags (its plan keeps sync = kFlags and sets cluster_rec; the kernel of a
//           plan with cluster_rec is the kCluster instantiation). The backward runs kFlags.
// kGrid and kFlags are compiled for every dtype, kCluster for 16 bits (a template
// parameter of the kernel); the planner picks one per call, FUSED_RNN_SYNC=grid|flags|
// lean|cluster overrides it, for A/B runs.
enum class SyncPolicy : int { kAuto = 0, kGrid = 1, kFlags = 2, kLean = 3, kCluster = 4 };

inline const char* sync_name(SyncPolicy s) {
  return s == SyncPolicy::kGrid ? "grid" : s == SyncPolicy::kFlags ? "flags"
       : s == SyncPolicy::kLean ? "lean" : s == SyncPolicy::kCluster ? "cluster" : "auto";
}

// Division by a divisor fixed for a whole launch, without a division in the step loop:
// n / d = (umulhi(n, mul) + n) >> shift for 0 <= n < 2^31 and 1 <= d < 2^31
// (Granlund & Montgomery; the form of CUTLASS's FastDivmod): shift = ceil(log2 d),
// mul = floor(2^32 (2^shift - d) / d) + 1. Two integer instructions and a shift on a
// GPU instead of the ~20 of a run-time division. Made once, before the step loop.
struct FastDiv {
  uint32_t d = 1, mul = 0, shift = 0;
  FRNN_HD static FastDiv make(uint32_t divisor) {
    FastDiv f;
    f.d = divisor;
    while ((uint64_t(1) << f.shift) < divisor) ++f.shift;
    f.mul = static_cast<uint32_t>(((uint64_t(1) << 32) * ((uint64_t(1) << f.shift) - divisor)) /
                                  divisor + 1);
    return f;
  }
  FRNN_HD uint32_t div(uint32_t n) const {
#if defined(__CUDA_ARCH__)
    const uint32_t hi = __umulhi(n, mul);
#else
    const uint32_t hi = static_cast<uint32_t>((static_cast<uint64_t>(n) * mul) >> 32);
#endif
    return (hi + n) >> shift;
  }
  // n = q * d + r: returns q, sets r.
  FRNN_HD uint32_t divmod(uint32_t n, uint32_t& r) const {
    const uint32_t q = div(n);
    r = n - q * d;
    return q;
  }
};

FRNN_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
FRNN_HD int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

}  // namespace fused_rnn
