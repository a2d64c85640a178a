// What the host hands the backward kernel: the planned configuration, raw
// pointers, and the layouts of shared memory and of the workspace. Plain
// structs, no torch and no CUDA header (g++-compilable), like forward_params.h,
// whose ForwardProblem describes the call for both directions of the op.
//
// Shapes (T timesteps, B batch, I input size, H hidden size, L layers,
// D = 1 or 2 directions, G gates, GH = G*H, GHp = round_up(GH, 16),
// LD = L * D, ld = l * D + d, S = reserve width):
//   w_ih[ld]     (GH, in_l)   in_0 = I, in_l = D*H for l >= 1
//   w_hh[ld]     (GH, H)
//   hx, cx       (LD, B, H)                  cx only for LSTM
//   lengths      (B,) int64 or null          seed: 0-d int64 or null
//   reserve      (LD, T, B, S)               read only (csrc/README.md)
//   grad_output  (T, B, D*H)   grad_hy, grad_cy (LD, B, H)
// Written by the kernel:
//   dg_ih        (LD, T, B, GHp)  dtype: gate gradients, ih side (columns
//                                 [GH, GHp) are written as 0)
//   dg_hh        (LD, T, B, GHp)  dtype: GRU only, hh side (n part = dn * r);
//                                 for LSTM / RNN the hh side equals dg_ih
//   xdrop        (L-1, T, B, D*H) dtype: dropout only: the dropped output of
//                                 layer l (the input of l + 1, for its dW_ih)
//   grad_hx, grad_cx (LD, B, H)   dtype
// The binding turns dg_ih / dg_hh into the weight, bias and input gradients
// with a few GEMMs after the kernel (csrc/torch/backward_grads.h).
#pragma once

#include "common.h"
#include "forward_params.h"
#include "philox.cuh"

namespace fused_rnn {

// Threads per CTA of the backward kernel (8 warps); the work split below
// assumes exactly 8 warps (n-tiles x K splits = 8 warp items per pass).
constexpr int kBackwardThreads = 256;
constexpr int kBackwardWarps = kBackwardThreads / 32;
// At most two 16-row m-tiles (32 units) per CTA: the accumulators of both
// live in registers for a whole K range.
constexpr int kBackwardMaxMTiles = 2;
// One staged chunk row is 128 bytes of K (64 elements of 16-bit, 32 fp32).
constexpr int kStageRowBytes = 128;

// Weight tiles (16 units x 16 K) a warp may hold in registers, as wmma A
// fragments, per math path: 12 in 16 bits (bf16: 4 registers each, 48; fp16:
// the wmma fragment declares 16 halves, ptxas keeps fewer), 6 in TF32 (two k8
// fragments of 4 registers each: 48); none on the exact FP32 FMA path (its
// 230-250 registers are taken). What ptxas fits next to the rest of the
// kernel with a margin (16 / 8 spill or reach 254: csrc/kernels/README.md).
FRNN_HD constexpr int backward_reg_tiles_max(int elem_bytes, bool tf32) {
  return elem_bytes == 2 ? 12 : (tf32 ? 6 : 0);
}

// How the backward kernel covers a problem (chosen by plan_backward,
// backward_plan.h).
//
// Work split: CTA id = ((ld * batch_slices) + bslice) * ctas_per_dir + slice
// owns hidden units [slice*U, min((slice+1)*U, H)) of (layer, direction) ld
// and batch rows [bslice*R, min((bslice+1)*R, B)), R = rows_per_slice. It
// keeps, in shared memory, the COLUMNS of its units of
//   W_ih^{l+1, d'}[:, d*H + j]   (d' = 0..D-1; layers l < L-1)  "above" part
//   W_hh^{l, d}[:, j]                                             "rec" part
// i.e. a U x K matrix with K = [D*GHp (above, if L > 1) | GHp (rec)], stored
// K-blocked: element (k, u) at ((k / kb) * U + u) * kb + k % kb, kb = 16
// (16-bit) or 8 (fp32), so that a 16-row A tile of rows u..u+15 is
// contiguous with leading dimension kb (rows past U read the next block or
// the zeroed slack: they only feed discarded output rows).
// Per step it computes, for its units and rows,
//   dy  = sum_d' dg_ih^{l+1,d'}[t] W_ih^{l+1,d'}[:, d*H + J]   (or grad_output)
//   rec = dg_hh^{l,d}[t_prev] W_hh^{l,d}[:, J]
// as (U x K) x (K x rows) with K streamed from L2 by each warp through its own
// pipeline (`stages` deep, chunks of up to 128 bytes per row): cp.async, or,
// in thread-block clusters of `cluster` consecutive unit slices (sm_90), bulk
// copies multicast to every CTA of the cluster, each CTA fetching a share of
// the rows (cluster_copy.cuh): L2 serves each chunk once per cluster.
struct BackwardConfig {
  int units_per_cta = 0;   // U
  int ctas_per_dir = 0;    // C = ceil(H / U)
  int batch_slices = 0;    // BS: CTAs sharing one unit slice, each with its own rows
  int rows_per_slice = 0;  // R (a multiple of 16 when BS > 1)
  int grid = 0;            // LD * C * BS (all co-resident: cooperative launch)
  int m_tiles = 0;         // ceil(U / 16), <= kBackwardMaxMTiles
  int m_pad = 0;           // 16 * m_tiles
  int gh_pad = 0;          // GHp = round_up(G * H, 16): row stride of dg_ih / dg_hh
  int ka = 0;              // above-part K extent in the weight tile: (L > 1 ? D : 0) * GHp
  int kw = 0;              // ka + GHp
  int kblock = 0;          // K block of the weight layout: 16 (16-bit), 8 (fp32)
  int n_tiles = 0;         // 16-row batch tiles per pass: 1, 2, 4 or 8
  int k_splits = 0;        // kBackwardWarps / n_tiles: K splits per batch tile
  int stages = 0;          // cp.async pipeline depth per warp (2..4)
  int stage_k = 0;         // elements per staged row chunk (kStageRowBytes / e)
  int stage_ld = 0;        // row stride (elements) of a stage: stage_k + 16 / e
  int elem_bytes = 0;
  int blocks_per_sm = 0;
  int64_t smem_bytes = 0;
  bool use_tf32 = false;
  // How CTAs wait for each other between steps (common.h; never kAuto in a
  // plan): kGrid, one grid.sync() per wave step; kFlags, step counters (one per
  // CTA, backward_flag_index) on exactly the CTAs whose gate gradients the step
  // reads (backward_kernel.cuh).
  SyncPolicy sync = SyncPolicy::kFlags;
  // CTAs per thread-block cluster (consecutive unit slices of one
  // layer-direction and batch slice; divides ctas_per_dir): 1 = no cluster.
  int cluster = 1;
  // Weight tiles per warp held in registers (backward_reg_tiles): every tile
  // of a warp's K split, or 0 (all read from shared memory).
  int reg_tiles = 0;
  // K of the weight tile resident in shared memory: the K-blocked prefix
  // [0, kres), a multiple of 16 (kw: the whole tile). Where the whole tile
  // does not fit (fp32 L=4 H=512: 256 KB per CTA), the suffix [kres, kw) is
  // streamed: the prologue writes it, in the same K-blocked layout, to the
  // CTA's own slice of the workspace (BackwardWorkspaceLayout::wstream), and
  // each step a warp copies the streamed weight chunks it multiplies into its
  // own A staging buffers with the gate-gradient chunks (cp.async; never in
  // clusters or with weights in registers).
  int kres = 0;
};

// Whether configuration c streams part of its weight tile from the workspace.
FRNN_HD bool backward_streams(const BackwardConfig& c) { return c.kres < c.kw; }

// Elements of one A staging buffer (streamed weights): one chunk of
// stage_k / 16 tiles of 16 K x U units in the weight tile's K-blocked layout
// (contiguous: 16 * U elements per tile), + 16 * kblock elements of slack that
// the last block's rows past U read (they feed discarded output rows only).
FRNN_HD int64_t backward_astage_elems(const BackwardConfig& c) {
  return static_cast<int64_t>(c.stage_k / 16) * 16 * c.units_per_cta + 16 * c.kblock;
}

// The K tiles of one warp's K split: ceil(gt / k_splits) of each of the
// kw / GHp segments (gt = GHp / 16 tiles each; backward_kernel.cuh, k_split_of).
FRNN_HD int backward_warp_tiles(const BackwardConfig& c) {
  const int gt = c.gh_pad / 16;
  return (c.kw / c.gh_pad) * ((gt + c.k_splits - 1) / c.k_splits);
}

// Weight tiles per warp in registers for configuration c: all of a warp's
// tiles where they fit backward_reg_tiles_max and the CTA has one m-tile
// (U <= 16), else 0.
FRNN_HD int backward_reg_tiles(const BackwardConfig& c) {
  const int cap = backward_reg_tiles_max(c.elem_bytes, c.use_tf32);
  const int n = backward_warp_tiles(c);
  return c.m_tiles == 1 && n <= cap ? n : 0;
}

// The step counter of CTA (layer-direction ld, unit slice, batch slice): the
// C slices of one (batch slice, ld) are contiguous, and so are the D*C of one
// (batch slice, layer), so that a consumer polls each range with coalesced
// loads (sync_flags.cuh). (The CTA id orders them the other way round.)
FRNN_HD int backward_flag_index(const BackwardConfig& c, int layer_dirs, int bslice, int ld,
                                int slice) {
  return (bslice * layer_dirs + ld) * c.ctas_per_dir + slice;
}

// Byte offsets of the shared-memory regions of one CTA.
//   w      U x kres elements, K-blocked (above), + 16 * kblock elements of zeroed slack
//   stage  kBackwardWarps x stages x 16 x stage_ld elements: per-warp staging
//          of the B operand (16 batch rows x one K chunk)
//   astage streamed weights only: kBackwardWarps x stages x
//          backward_astage_elems elements: per-warp staging of the A operand
//   part   kBackwardWarps x 2 x 16 x m_pad fp32: per-warp partial sums
//          [warp][above | rec][row n][unit m]
//   bar    clusters only: kBackwardWarps x stages mbarriers "full", then as
//          many "empty" (8 bytes each; cluster_copy.cuh)
struct BackwardSmemLayout {
  int64_t w = 0, stage = 0, astage = 0, part = 0, bar = 0, total = 0;
};

FRNN_HD BackwardSmemLayout backward_smem_layout(const BackwardConfig& c) {
  BackwardSmemLayout s;
  const int64_t e = c.elem_bytes;
  s.w = 0;
  s.stage = align_to(s.w + (static_cast<int64_t>(c.units_per_cta) * c.kres + 16 * c.kblock) * e,
                     128);
  s.astage = align_to(
      s.stage + static_cast<int64_t>(kBackwardWarps) * c.stages * 16 * c.stage_ld * e, 128);
  s.part = align_to(s.astage + (backward_streams(c) ? static_cast<int64_t>(kBackwardWarps) *
                                                          c.stages * backward_astage_elems(c) * e
                                                    : 0),
                    128);
  s.bar = align_to(s.part + static_cast<int64_t>(kBackwardWarps) * 2 * 16 * c.m_pad * 4, 128);
  s.total = align_to(
      s.bar + (c.cluster > 1 ? static_cast<int64_t>(kBackwardWarps) * c.stages * 2 * 8 : 0), 128);
  return s;
}

// Byte offsets inside the one workspace tensor the binding allocates (-1: absent).
//   flags  (grid) int32   kFlags: steps completed per CTA (backward_flag_index);
//                         zero at launch (the caller clears [flags, flags +
//                         flags_bytes) on the stream); the rest is written by
//                         the kernel before it is read
//   wstream (grid) x U x (kw - kres) dtype: streamed weights only, each CTA's
//                         streamed share of its weight tile (written by its
//                         prologue, read by its steps; BackwardConfig::kres)
struct BackwardWorkspaceLayout {
  int64_t flags = -1, flags_bytes = 0, dg_ih = -1, dg_hh = -1, xdrop = -1, state_dh = -1,
          state_dc = -1, wstream = -1, total = 0;
};

inline int64_t backward_gh_pad(const ForwardProblem& p) {
  return round_up(static_cast<int64_t>(p.gates()) * p.hidden_size, kTile);
}

inline BackwardWorkspaceLayout backward_workspace(const ForwardProblem& p,
                                                  const BackwardConfig& c) {
  BackwardWorkspaceLayout w;
  const int64_t es = dtype_size(p.dtype);
  const int64_t BH = p.batch * p.hidden_size;
  const int64_t rows = static_cast<int64_t>(p.layer_dirs()) * p.seq_len * p.batch;
  const int64_t ghp = backward_gh_pad(p);
  WorkspaceCursor ws;
  if (c.sync == SyncPolicy::kFlags) {
    w.flags_bytes = static_cast<int64_t>(c.grid) * 4;
    w.flags = ws.take(w.flags_bytes);
  }
  w.dg_ih = ws.take(rows * ghp * es);
  if (p.mode == Mode::kGRU) w.dg_hh = ws.take(rows * ghp * es);
  if (p.dropout_active())
    w.xdrop = ws.take(static_cast<int64_t>(p.num_layers - 1) * p.seq_len * p.num_dirs() * BH * es);
  w.state_dh = ws.take(static_cast<int64_t>(p.layer_dirs()) * BH * 4);
  if (p.mode == Mode::kLSTM) w.state_dc = ws.take(static_cast<int64_t>(p.layer_dirs()) * BH * 4);
  if (backward_streams(c))
    w.wstream = ws.take(static_cast<int64_t>(c.grid) * c.units_per_cta * (c.kw - c.kres) * es);
  w.total = ws.total();
  return w;
}

// Everything the kernel reads and writes. Passed by value as a
// __grid_constant__ kernel parameter (about 0.8 KB, under the 4 KB limit).
struct BackwardParams {
  BackwardConfig cfg;
  int mode = 0;  // Mode
  int num_layers = 0;
  int num_dirs = 0;
  int input_size = 0;
  int hidden = 0;
  int64_t batch = 0;
  int64_t seq_len = 0;
  int64_t reserve_width = 0;

  const void* w_ih[kMaxLayerDirs] = {};  // only layers >= 1 are read (layer 0's is the binding's)
  const void* w_hh[kMaxLayerDirs] = {};
  const void* hx = nullptr;
  const void* cx = nullptr;
  const int64_t* lengths = nullptr;
  const int64_t* seed = nullptr;
  const void* reserve = nullptr;
  const void* grad_output = nullptr;
  const void* grad_hy = nullptr;
  const void* grad_cy = nullptr;

  void* grad_hx = nullptr;
  void* grad_cx = nullptr;
  void* dg_ih = nullptr;
  void* dg_hh = nullptr;  // == dg_ih unless GRU
  void* xdrop = nullptr;
  float* state_dh = nullptr;
  float* state_dc = nullptr;
  int* flags = nullptr;  // kFlags: steps completed per CTA (zero at launch)
  void* wstream = nullptr;  // streamed weights (BackwardConfig::kres < kw), else null

  bool dropout_active = false;
  uint64_t dropout_threshold = 0;
  float dropout_scale = 0.0f;
  // Per-phase timing (phase_timing.h): int64 device buffer of phase_cap
  // elements, or null (off). Read only by kernels built with
  // FRNN_PHASE_TIMING; last in the struct, so that the other fields keep their
  // offsets (an uninstrumented kernel compiles exactly as without them).
  int64_t* phase_buf = nullptr;
  int64_t phase_cap = 0;
};

// Everything of BackwardParams but the tensor pointers the caller sets
// (weights, hx, cx, lengths, seed, reserve, grads in and out): sizes, config,
// workspace pointers (laid out by backward_workspace), dropout constants.
// Shared by the binding and the host emulation (csrc/emu/).
inline void init_backward_params(BackwardParams& bp, const ForwardProblem& p,
                                 const BackwardConfig& cfg, void* workspace) {
  bp.cfg = cfg;
  init_problem_fields(bp, p);
  const BackwardWorkspaceLayout w = backward_workspace(p, cfg);
  bp.flags = static_cast<int*>(workspace_at(workspace, w.flags));
  bp.dg_ih = workspace_at(workspace, w.dg_ih);
  bp.dg_hh = w.dg_hh >= 0 ? workspace_at(workspace, w.dg_hh) : bp.dg_ih;
  bp.xdrop = workspace_at(workspace, w.xdrop);
  bp.state_dh = static_cast<float*>(workspace_at(workspace, w.state_dh));
  bp.state_dc = static_cast<float*>(workspace_at(workspace, w.state_dc));
  bp.wstream = workspace_at(workspace, w.wstream);
}

}  // namespace fused_rnn
