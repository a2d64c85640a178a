// What the host hands the forward kernel: the problem, the planned
// configuration, raw pointers, and the layouts of shared memory and of the
// workspace. Plain structs, no torch and no CUDA header (g++-compilable), so
// the planner can be unit-tested on a machine without a GPU and a later
// backward kernel can reuse the same problem/config description.
//
// Shapes (T timesteps, B batch, I input size, H hidden size, L layers,
// D = 1 or 2 directions, G gates, LD = L * D, ld = l * D + d):
//   x        (T, B, I)                    time-major input
//   w_ih[ld] (G*H, in_l)  in_0 = I, in_l = D*H for l >= 1
//   w_hh[ld] (G*H, H)     b_ih[ld], b_hh[ld] (G*H) or null
//   hx, cx   (LD, B, H)                   cx only for LSTM
//   lengths  (B,) int64 or null           seed: 0-d int64 or null
//   y        (T, B, D*H)   hy, cy (LD, B, H)
//   reserve  (LD, T, B, S) or null        (columns: csrc/README.md)
#pragma once

#include "common.h"
#include "philox.cuh"

namespace fused_rnn {

// The call as the op sees it (everything the planner needs, no pointers).
struct ForwardProblem {
  Mode mode = Mode::kLSTM;
  int num_layers = 1;
  bool bidirectional = false;
  bool has_biases = true;
  int64_t proj_size = 0;
  int64_t input_size = 0;
  int64_t hidden_size = 0;
  int64_t batch = 0;
  int64_t seq_len = 0;
  DType dtype = DType::kFloat32;
  bool need_reserve = false;
  bool has_lengths = false;
  double dropout = 0.0;
  bool allow_tf32 = false;  // float32 only: TF32 tensor cores instead of FP32 FMA
  SyncPolicy sync = SyncPolicy::kAuto;  // requested synchronisation (FUSED_RNN_SYNC)
  // Requested hardware tanh in the forward's epilogue (FUSED_RNN_FAST_TANH=1; bf16 only,
  // opt-in until the GPU tests' accuracy rule has been checked with it).
  bool fast_tanh = false;
  // Requested thread-block cluster size of the backward (FUSED_RNN_CLUSTER):
  // 0 auto (the planner's rule, backward_plan.h), 1 none, 2 / 4 / 8 that size
  // where the plan allows it.
  int cluster = 0;
  // The caller can compute layer 0's input projection x W_ih0^T for all
  // timesteps before the launch (one GEMM with fp32 output per direction: the
  // binding's at::mm(..., out_dtype=float)). The planner uses it for 16-bit
  // dtypes (fp32 keeps the projection in the kernel: TF32 there matches
  // cuDNN's precision, and a full-fp32 cuBLAS GEMM would cost more than it saves).
  bool can_project_input = false;

  int num_dirs() const { return bidirectional ? 2 : 1; }
  int layer_dirs() const { return num_layers * num_dirs(); }
  int gates() const { return num_gates(mode); }
  // Layer 0's input projection runs before the launch (see can_project_input).
  // (cuBLAS takes 32-bit row counts: T * B must stay below 2^31.)
  bool projects_input() const {
    return can_project_input && dtype != DType::kFloat32 && seq_len * batch < (int64_t(1) << 31);
  }
  // Widest layer input multiplied in the kernel: every CTA gets the same
  // dynamic shared memory, so the weight tile is sized for max(in_l) over the
  // layers whose W_ih it holds (0 for a one-layer stack with the projection
  // outside).
  int64_t max_layer_input() const {
    const int64_t deep = num_layers > 1 ? static_cast<int64_t>(num_dirs()) * hidden_size : 0;
    const int64_t first = projects_input() ? 0 : input_size;
    return deep > first ? deep : first;
  }
  bool dropout_active() const { return dropout > 0.0 && num_layers > 1; }
  // Reserve columns S per (ld, t, b); see csrc/README.md.
  int64_t reserve_width() const {
    return mode == Mode::kLSTM ? 6 * hidden_size : mode == Mode::kGRU ? 5 * hidden_size
                                                                      : hidden_size;
  }
};

// How the kernel covers a problem (chosen by plan_forward, forward_plan.h).
//
// Work split: CTA id = ld * ctas_per_dir + slice owns hidden units
// [slice*U, min((slice+1)*U, H)) of (layer, direction) ld, i.e. the G*U rows
// {g*H + u} of W_ih and W_hh, kept on chip for the whole launch. Per step it
// computes gates (m_pad x batch_tile) = W (m_pad x K) * X (K x batch_tile)
// with K = [x_t ; h_{t-1}], the x part padded to kx_pad and the h part to
// kh_pad. The K range is cut into chunks of k_chunk 16-wide tiles: x_splits
// chunks of the x part, h_splits of the h part, reduced in fp32 in the
// epilogue (x and h sums separate: GRU's n gate needs them apart).
// Warp work items:
//   tensor cores (reg_tiles > 0)  (m_group 16-row tiles, K chunk), all
//       batch columns; item `it` is row tiles [m_group * (it / splits), +
//       m_group), chunk it % splits, run by warp it % 8. Its weight tiles j =
//       0, 1, ... are (K tile j / m_group, row tile j % m_group): the m_group
//       tiles of one K tile share each activation (B) fragment. Each warp's
//       first item (it < 8) keeps its first reg_tiles 16 x 16 weight tiles in
//       registers as mma.sync fragments; every other tile lives in shared
//       memory in fragment order (frag_tile_offset).
//   FP32 FMA (reg_tiles == 0)  (16-row tile, 16-column tile, K chunk), the
//       weights row-major in shared memory.
struct ForwardConfig {
  int units_per_cta = 0;  // U
  int ctas_per_dir = 0;   // C = ceil(H / U)
  int grid = 0;           // LD * C (all co-resident: cooperative launch)
  int batch_tile = 0;     // NB: batch columns per GEMM pass (multiple of 16)
  int m_pad = 0;          // round_up(G * U, 16)
  int kx_pad = 0;         // round_up(max_layer_input, 16)
  int kh_pad = 0;         // round_up(H, 16)
  int ld = 0;             // row stride (elements) of the weight and X tiles
  int k_chunk = 0;        // 16-wide K tiles per warp work item
  int x_splits = 0;
  int h_splits = 0;
  int elem_bytes = 0;     // bytes per element in shared memory (= dtype size)
  int blocks_per_sm = 0;  // occupancy at smem_bytes (from the CUDA occupancy API)
  int64_t smem_bytes = 0; // dynamic shared memory per CTA
  bool use_tf32 = false;
  SyncPolicy sync = SyncPolicy::kFlags;  // kGrid or kFlags (never kAuto / kLean in a plan)
  // kFlags only: the lean protocol (sync_flags.cuh, "lean"): one step counter per
  // (layer, direction), on its own 128-byte line, counting its CTAs' steps (C per step).
  // Opt-in (FUSED_RNN_SYNC=lean) until a GPU run verifies it.
  bool lean_sync = false;
  // bf16 only: the epilogue's tanh and sigmoid on the hardware tanh (gate_math.h,
  // tanh_fast); the request ForwardProblem::fast_tanh.
  bool fast_tanh = false;
  int ring = 2;           // R: slots of the h / dropped-x rings (step k writes slot k % R)
  // Layer 0 reads its input pre-activations x_t W_ih0^T (fp32, computed before
  // the launch: ForwardParams::xproj) instead of multiplying x_t itself.
  bool x_proj = false;
  // The fp32 state h_{t-1} (and c_{t-1}) of this CTA's units: resident in
  // shared memory for all B rows across the whole launch (state_rows = B), or
  // -- when that does not fit -- kept in the workspace and staged per batch
  // tile (state_rows = batch_tile).
  bool state_resident = false;
  int64_t state_rows = 0;
  // Weight tiles per warp in registers (register_tiles(): 32 in 16 bits, 16
  // in TF32, 0 for FP32 FMA) and 16 x 16 fragment tiles in shared memory.
  int reg_tiles = 0;
  int64_t w_tiles = 0;
  int m_group = 1;  // tensor cores: 16-row tiles per work item (1 or 2)
  // (Last: it fits the struct's tail padding, so the other fields of ForwardParams keep
  // their offsets and the other kernels their code.)
  // kFlags only, sm_90, 16-bit, one batch tile (B <= batch_tile): the recurrence in
  // a thread-block cluster of the C CTAs of each (layer, direction) (FUSED_RNN_SYNC=
  // cluster; opt-in until a GPU run verifies it). Two X tiles: step k reads tile
  // k % 2, whose h part the C CTAs filled in step k - 1 -- each writes its units'
  // h_t into its own tile and pushes the same 16-byte chunks into every peer's
  // (st.async, cluster_copy.cuh), signalling the peer's mbarrier of that tile with
  // the bytes; a CTA announces the bytes it expects (arrive.expect_tx) and waits
  // for the phase. No own-layer step counter, no L2 round trip for h_{t-1}.
  // U is a power of two >= 8 (16-byte chunks; shifts, no division) and C <= 16.
  bool cluster_rec = false;
};

// int32 words between two (layer, direction) counters of the lean protocol: 128 bytes.
constexpr int kLeanCounterStride = 32;

// Ring slots per synchronisation policy. grid.sync: 2 (step k reads slot
// (k-1) % 2 and writes k % 2; everyone has finished step k-1 at the barrier).
// Flags: a layer may run up to R-1 steps ahead of the layer above it, which
// still reads the older slots; 4 gives the wavefront slack to absorb jitter.
constexpr int kRingGrid = 2;
constexpr int kRingFlags = 4;

// ---- the tensor-core paths' weight fragments (reg_tiles > 0)

// 16-wide K tiles of chunk `split` (x chunks first), sized for the widest
// layer (kx_pad; a narrower layer uses a prefix of its x chunks).
FRNN_HD int split_tiles(const ForwardConfig& c, int split) {
  const int kt_x = c.kx_pad / kTile, kt_h = c.kh_pad / kTile;
  if (split < c.x_splits) {
    const int k0 = split * c.k_chunk;
    return kt_x - k0 < c.k_chunk ? kt_x - k0 : c.k_chunk;
  }
  const int k0 = (split - c.x_splits) * c.k_chunk;
  return kt_h - k0 < c.k_chunk ? kt_h - k0 : c.k_chunk;
}

// Warp work items of the tensor-core GEMM: row-tile groups x chunks.
FRNN_HD int frag_items(const ForwardConfig& c) {
  return c.m_pad / (kTile * c.m_group) * (c.x_splits + c.h_splits);
}

// Weight tiles of item `it` (sized for the widest layer).
FRNN_HD int item_tiles(const ForwardConfig& c, int it) {
  return split_tiles(c, it % (c.x_splits + c.h_splits)) * c.m_group;
}

// Tiles of item `it` held in registers: its first reg_tiles if it is its
// warp's first item (it < 8, kForwardWarps), else none.
FRNN_HD int item_reg_tiles(const ForwardConfig& c, int it) {
  if (it >= kForwardWarps) return 0;
  const int n = item_tiles(c, it);
  return n < c.reg_tiles ? n : c.reg_tiles;
}

// The lean GEMM (forward_kernel.cuh, gemm_lean): item tile counts it is compiled for.
constexpr int kLeanTilesLong = 32, kLeanTilesShort = 16;

// Does item `it` run the lean GEMM in a layer that multiplies all of its tiles? At most
// one item per warp (frag_items <= 8), 1 or 2 row tiles per item, and kLeanTilesLong or
// kLeanTilesShort tiles (sized for the widest layer: a layer with a narrower input has
// shorter x items, which the kernel runs with the generic loop).
FRNN_HD bool lean_item(const ForwardConfig& c, int it) {
  if (c.reg_tiles <= 0 || frag_items(c) > kForwardWarps || c.m_group < 1 || c.m_group > 2)
    return false;
  const int n = item_tiles(c, it);
  return n == kLeanTilesLong || n == kLeanTilesShort;
}

// The first shared-memory fragment tile of item `it` (items in order, each
// with its tiles past its register ones); frag_tile_offset(c, frag_items(c))
// is the total. Tile j of an item (j >= item_reg_tiles) is at
// frag_tile_offset + j - item_reg_tiles.
FRNN_HD int64_t frag_tile_offset(const ForwardConfig& c, int it) {
  const int splits = c.x_splits + c.h_splits;
  const int kt_x = c.kx_pad / kTile, kt_h = c.kh_pad / kTile;
  // whole row-tile groups before, then the chunks before in this group
  int64_t tiles = static_cast<int64_t>(it / splits) * (kt_x + kt_h) * c.m_group;
  for (int s = 0; s < it % splits; ++s) tiles += split_tiles(c, s) * c.m_group;
  const int first = it < kForwardWarps ? it : kForwardWarps;
  for (int j = 0; j < first; ++j) tiles -= item_reg_tiles(c, j);
  return tiles;
}

// Byte offsets of the shared-memory regions of one CTA.
//   w     tensor cores: w_tiles fragment tiles of 16 x 16 weights (512 bytes
//                                in 16 bits, 1 KB in TF32), each [quad][lane][4 x
//                                32 bits]: lane l's registers of the tile, one
//                                16-byte load per quad (mma_frag.cuh);
//         FP32 FMA: (m_pad, ld)  weights, row g*U + u = gate g of unit u0 + u;
//                                columns [0, in_l) W_ih, [kx_pad, kx_pad + H) W_hh, 0 elsewhere
//   x     (batch_tile, ld)       X tile: column-major B operand, row b = [x_t(b) ; h_{t-1}(b)]
//   part  (splits, batch_tile, m_pad) fp32 partial sums of the warp work items
//   bias  2 x m_pad fp32         b_ih, b_hh per gate row (0 without biases)
//   state 2 x (state_rows, U) fp32  h_{t-1}, c_{t-1} per (b, unit): all B rows
//                                resident for the launch (state_resident), or this
//                                tile's rows, staged from the workspace with the gather
//   valid batch_tile int32        t < lengths[b] of this tile's rows
//   xp    (batch_tile, m_pad) fp32  x_proj: layer 0's input pre-activations of this
//                                tile, gate row g*U + u (as bias), loaded with the gather
//   bar   2 mbarriers            cluster_rec: the h pushes into X tile 0 / 1
//                                (cluster_rec also doubles the x region: X tiles 0, 1)
//   phase 8 int64 (first, 128 bytes)  the per-phase timing recorder's state (thread
//                                0; only FRNN_PHASE_TIMING builds use it, every build
//                                has it so that plans do not depend on the build)
//   divisors (at byte 64, in the phase region's second half) the step loop's FastDivs
//                                (common.h), made in the prologue: no division per step
struct SmemLayout {
  int64_t w = 0, x = 0, part = 0, bias = 0, state = 0, valid = 0, xp = 0, bar = 0, phase = 0,
          total = 0;
};

FRNN_HD int64_t align_to(int64_t v, int64_t a) { return (v + a - 1) / a * a; }

// Byte offset of the forward step loop's divisors (5 FastDiv, 60 bytes): the phase
// region's second half (the recorder uses its first 64 bytes, the weights start at 128).
constexpr int64_t kStepDivisorsOffset = 64;
// Byte offset of one int32 after the 5 divisors (60 bytes): the recurrence in a cluster's
// bytes expected per step (thread 0's; in shared memory, not a register across the loop).
constexpr int64_t kPushBytesOffset = kStepDivisorsOffset + 60;

// Lays out the regions of a workspace one after the other, each 256-byte
// aligned (forward_workspace, backward_workspace).
class WorkspaceCursor {
 public:
  // The byte offset of a new region of `bytes` bytes.
  int64_t take(int64_t bytes) {
    const int64_t at = off_;
    off_ = align_to(off_ + bytes, 256);
    return at;
  }
  int64_t total() const { return off_; }

 private:
  int64_t off_ = 0;
};

// The address of a workspace region at byte offset `off`, null for an absent
// region (off < 0).
inline void* workspace_at(void* workspace, int64_t off) {
  return off < 0 ? nullptr : static_cast<unsigned char*>(workspace) + off;
}

// The fields ForwardParams and BackwardParams (backward_params.h) share that
// come from the problem alone: sizes, mode, and the dropout constants.
template <typename Params>
inline void init_problem_fields(Params& kp, const ForwardProblem& p) {
  kp.mode = static_cast<int>(p.mode);
  kp.num_layers = p.num_layers;
  kp.num_dirs = p.num_dirs();
  kp.input_size = static_cast<int>(p.input_size);
  kp.hidden = static_cast<int>(p.hidden_size);
  kp.batch = p.batch;
  kp.seq_len = p.seq_len;
  kp.reserve_width = p.reserve_width();
  kp.dropout_active = p.dropout_active();
  kp.dropout_threshold = kp.dropout_active ? dropout_threshold(p.dropout) : 0;
  kp.dropout_scale =
      kp.dropout_active && p.dropout < 1.0 ? static_cast<float>(1.0 / (1.0 - p.dropout)) : 0.0f;
}

// (cluster: c.cluster_rec, passed apart so that a kernel compiled for one value reads
// nothing of it: smem_layout(c) below)
FRNN_HD SmemLayout smem_layout(const ForwardConfig& c, bool cluster) {
  SmemLayout s;
  // (first: at the start of the dynamic shared memory, a fixed address the
  // compiler need not keep in a register)
  s.phase = 0;
  s.w = 128;
  const int64_t w_bytes = c.reg_tiles > 0
                              ? c.w_tiles * kTile * kTile * c.elem_bytes
                              : static_cast<int64_t>(c.m_pad) * c.ld * c.elem_bytes;
  s.x = align_to(s.w + w_bytes, 128);
  s.part = align_to(
      s.x + (cluster ? 2 : 1) * static_cast<int64_t>(c.batch_tile) * c.ld * c.elem_bytes, 128);
  s.bias = align_to(
      s.part + static_cast<int64_t>(c.x_splits + c.h_splits) * c.batch_tile * c.m_pad * 4, 128);
  s.state = align_to(s.bias + 2 * static_cast<int64_t>(c.m_pad) * 4, 128);
  s.valid = align_to(
      s.state + 2 * c.state_rows * c.units_per_cta * 4, 128);
  s.xp = align_to(s.valid + static_cast<int64_t>(c.batch_tile) * 4, 128);
  s.bar = align_to(
      s.xp + (c.x_proj ? static_cast<int64_t>(c.batch_tile) * c.m_pad * 4 : 0), 128);
  s.total = align_to(s.bar + (cluster ? 16 : 0), 128);
  return s;
}
FRNN_HD SmemLayout smem_layout(const ForwardConfig& c) { return smem_layout(c, c.cluster_rec); }

// Byte offsets inside the one workspace tensor the binding allocates (-1: absent).
//   flags    (grid) int32          kFlags: steps completed per CTA; must be
//                                  zero at launch (the caller clears
//                                  [flags, flags + flags_bytes) on the stream)
//            (LD, 32) int32        lean_sync: steps completed by the CTAs of each
//                                  (layer, direction), at [ld * 32] (its own line)
//   hring    (LD, R, B, H) dtype   h_t of every (layer, direction), ring of R
//                                  steps: the recurrent input of the next step
//                                  (and, unidirectional without dropout, the
//                                  input of the layer above)
//   xring    (L-1, R, B, H) dtype  unidirectional with dropout: the dropped
//                                  copy of layer l's output, the input of l+1
//   layer    (T, B, 2H) dtype      bidirectional, L >= 2: a whole layer's
//                                  output (dropped); ping-pong with y
//   state_h  (LD, B, H) fp32       exact state, owner-CTA only; absent when the
//   state_c  (LD, B, H) fp32       state is resident in shared memory (state_c: LSTM)
struct WorkspaceLayout {
  int64_t flags = -1, flags_bytes = 0, hring = -1, xring = -1, layer = -1, state_h = -1,
          state_c = -1, total = 0;
};

inline WorkspaceLayout forward_workspace(const ForwardProblem& p, const ForwardConfig& c) {
  WorkspaceLayout w;
  const int64_t es = dtype_size(p.dtype);
  const int64_t BH = p.batch * p.hidden_size;
  WorkspaceCursor ws;
  if (c.sync == SyncPolicy::kFlags) {
    w.flags_bytes = c.lean_sync ? static_cast<int64_t>(p.layer_dirs()) * kLeanCounterStride * 4
                                : static_cast<int64_t>(c.grid) * 4;
    w.flags = ws.take(w.flags_bytes);
  }
  w.hring = ws.take(static_cast<int64_t>(p.layer_dirs()) * c.ring * BH * es);
  if (!p.bidirectional && p.dropout_active())
    w.xring = ws.take((p.num_layers - 1) * static_cast<int64_t>(c.ring) * BH * es);
  if (p.bidirectional && p.num_layers > 1) w.layer = ws.take(p.seq_len * 2 * BH * es);
  if (!c.state_resident) {
    w.state_h = ws.take(static_cast<int64_t>(p.layer_dirs()) * BH * 4);
    if (p.mode == Mode::kLSTM) w.state_c = ws.take(static_cast<int64_t>(p.layer_dirs()) * BH * 4);
  }
  w.total = ws.total();
  return w;
}

// Everything the kernel reads: pointers (device memory, dtype as in the
// problem, contiguous) plus sizes and the config. Passed by value as a
// __grid_constant__ kernel parameter (about 1.4 KB, under the 4 KB limit).
struct ForwardParams {
  ForwardConfig cfg;
  int mode = 0;  // Mode
  int num_layers = 0;
  int num_dirs = 0;
  int input_size = 0;
  int hidden = 0;
  int64_t batch = 0;
  int64_t seq_len = 0;

  const void* x = nullptr;
  // cfg.x_proj: layer 0's input projection per direction, (T, B, G*H) fp32,
  // x_t W_ih0^T without bias (the kernel adds b_ih); null otherwise.
  const float* xproj[2] = {nullptr, nullptr};
  const void* w_ih[kMaxLayerDirs] = {};
  const void* w_hh[kMaxLayerDirs] = {};
  const void* b_ih[kMaxLayerDirs] = {};
  const void* b_hh[kMaxLayerDirs] = {};
  const void* hx = nullptr;
  const void* cx = nullptr;
  const int64_t* lengths = nullptr;
  const int64_t* seed = nullptr;

  void* y = nullptr;
  void* hy = nullptr;
  void* cy = nullptr;
  void* reserve = nullptr;  // null: inference, nothing saved
  int64_t reserve_width = 0;

  int* flags = nullptr;  // kFlags: steps completed per CTA (zero at launch)
  void* hring = nullptr;
  void* xring = nullptr;
  void* layer_buf = nullptr;
  float* state_h = nullptr;
  float* state_c = nullptr;

  bool dropout_active = false;
  uint64_t dropout_threshold = 0;  // philox.cuh: keep iff bits < threshold
  float dropout_scale = 0.0f;      // 1 / (1 - p), 0 for p = 1
  // Per-phase timing (phase_timing.h): int64 device buffer of phase_cap
  // elements, or null (off). Read only by kernels built with
  // FRNN_PHASE_TIMING; last in the struct, so that the other fields keep their
  // offsets (an uninstrumented kernel compiles exactly as without them).
  int64_t* phase_buf = nullptr;
  int64_t phase_cap = 0;
};

// Everything of ForwardParams but the tensor pointers (x, weights, hx, cx,
// lengths, seed, y, hy, cy, reserve), which the caller sets: sizes, config,
// workspace pointers (carved from `workspace`, laid out by forward_workspace),
// dropout constants. Shared by the binding and the host emulation (csrc/emu/).
inline void init_forward_params(ForwardParams& fp, const ForwardProblem& p,
                                const ForwardConfig& cfg, void* workspace) {
  fp.cfg = cfg;
  init_problem_fields(fp, p);
  const WorkspaceLayout w = forward_workspace(p, cfg);
  fp.flags = static_cast<int*>(workspace_at(workspace, w.flags));
  fp.hring = workspace_at(workspace, w.hring);
  fp.xring = workspace_at(workspace, w.xring);
  fp.layer_buf = workspace_at(workspace, w.layer);
  fp.state_h = static_cast<float*>(workspace_at(workspace, w.state_h));
  fp.state_c = static_cast<float*>(workspace_at(workspace, w.state_c));
}

}  // namespace fused_rnn
