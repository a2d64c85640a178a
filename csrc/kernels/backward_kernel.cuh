// The persistent backward kernel: backpropagation through time for a whole
// LSTM / GRU / RNN stack, every layer and every timestep, in one cooperative
// launch. The algorithm is fused_rnn/reference.py's rnn_backward /
// _backward_direction (the spec); the layouts are in backward_params.h.
//
// Schedule, a reverse wavefront: each layer runs its backward steps
// k = 0..T, timestep t = T-1-k (reverse direction: t = k) for k < T, and
// k = T finishes (grad_hx / grad_cx). Step k of layer l, direction d, reads
//   dg_ih^{l+1,d'}[t]  for d' = 0..D-1 (not the top layer; k < T): written by
//                      layer l+1, direction d', at its step T-1-t (d' = 0)
//                      or t (d' = 1);
//   dg_hh^{l,d}[t_prev]  (k >= 1): written by its own layer at step k-1;
// nothing else of another CTA (its fp32 carries are its own; gate gradients
// are kept for every t, so nothing is overwritten that anyone still reads).
// Synchronisation, a template parameter (SyncPolicy, common.h), chosen per call:
//   kGrid   one grid.sync() per wave step, every CTA in lock-step:
//             unidirectional  T + L steps; layer l runs k = s - (L-1-l);
//             bidirectional   L*T + 1 steps; layer l runs k = 0..T at steps
//                             (L-1-l)*T + k, both directions at once: it needs
//                             both directions of layer l+1 at t, i.e. all of
//                             layer l+1. A layer's final step k = T shares a
//                             step with the first step of the layer below.
//   kFlags  point-to-point (sync_flags.cuh): before step k a CTA waits, with
//           acquire loads on the step counters of its batch slice
//           (backward_flag_index), for exactly
//             - the C slices of its own (layer, direction) to have done k
//               steps (dg_hh[t_prev] complete), k >= 1;
//             - the C slices of layer l+1, direction d', to have done T-t
//               (d' = 0) or t+1 (d' = 1) steps (dg_ih^{l+1,d'}[t] complete);
//           and after the step publishes k+1 (release store). Unidirectional,
//           that is the layer above at step k, as under kGrid; bidirectional,
//           a direction starts as soon as the other direction above has done
//           all of its steps that it needs (at k = 0: all T of them), instead
//           of waiting for the whole layer above.
//
// Per step, an active CTA (units J of (l, d), batch rows [b_lo, b_hi)), for
// each pass of up to 8 batch tiles of 16 rows:
//   0. issues the loads of what its epilogue needs (reserve gates and states,
//      grad_output, its fp32 carries) so that they fly during the GEMM;
//   1. GEMM, per warp: one (batch tile, K split) item; K is the concatenation
//      of the rows dg_ih^{l+1,d'}[t][b, :] (d' = 0..D-1; the "above" part,
//      absent for the top layer) and dg_hh^{l,d}[t_prev][b, :] (the "rec" part,
//      absent at k = 0), streamed from L2 (cp.async.cg: written by other CTAs
//      in this launch; L1 is not coherent) into the warp's own staging
//      buffers, and multiplied with the CTA's weight columns (wmma, fp32
//      accumulate, or exact FP32 FMA); above and rec sums kept apart. K split
//      ks of 8 / n_tiles takes the same tiles of every segment (above d',
//      rec) every step, so that where they fit (reg_tiles > 0: one m-tile,
//      tensor cores) a warp keeps all of its weight tiles in registers;
//   2. epilogue, one thread per (unit, row): dy = grad_output (top layer) or
//      the above sum (dropped with the mask the forward used: bits computed
//      by the owner of the unit); dh = rec + carry; the pointwise derivative
//      of the cell from the reserve's activated gates and states; writes the
//      gate gradients dg_ih[t] (and dg_hh[t] for GRU), the fp32 carries
//      (owner-only state), the dropped layer output (dropout; for dW_ih of
//      the layer above), and at k = T grad_hx / grad_cx.
// Variable lengths: a step past a sequence's length writes zero gate
// gradients and passes dh / dc through unchanged (the reference's rule).
// The reserve is only read: a second backward gives identical gradients.
//
// No torch header: compiled by bare nvcc in CI (tests/test_compile_kernels.py)
// and run on CPU threads by csrc/emu/ (FRNN_EMULATION).
#pragma once

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <type_traits>

#include "backward_params.h"
#include "cluster_copy.cuh"
#include "common.h"
#include "forward_kernel.cuh"  // element helpers, the dynamic smem hook
#include "gate_math.h"
#include "mma_frag.cuh"
#include "phase_timing.h"
#include "philox.cuh"
#include "sync_flags.cuh"

namespace fused_rnn {
namespace bwd {

namespace cg = cooperative_groups;
namespace wmma = nvcuda::wmma;
using fwd::from_f;
using fwd::kGates;
using fwd::round_tf32;
using fwd::to_f;

// The wmma fragment types of this kernel's GEMMs (the forward's GEMM uses
// mma.sync directly: mma_frag.cuh).
template <typename T, bool TF32> struct MmaTypes;

template <typename T> struct MmaTypes<T, false> {  // fp16 / bf16
  static constexpr int kK = 16;
  using A = wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major>;
  using B = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major>;
  using C = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;
};

template <> struct MmaTypes<float, true> {  // fp32 storage, TF32 math
  static constexpr int kK = 8;
  using A = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
  using B = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major>;
  using C = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;
};

// (async copies: async_copy.cuh, through forward_kernel.cuh)

// The dynamic shared memory as the kernel's code addresses it: `smem` itself,
// or (FRNN_BISECT & kBisectGenericSmem) the same address passed through an
// empty inline asm, so that the compiler can not tell that it points into
// shared memory and every access becomes a generic LD / ST.
FRNN_DEVICE unsigned char* smem_base(unsigned char* smem) {
#if !defined(FRNN_EMULATION)
  if constexpr (bisect_on(kBisectGenericSmem)) asm volatile("" : "+l"(smem));
#endif
  return smem;
}

// ------------------------------------------------------------ the GEMM

// K of one step, in 16-element tiles. The weight tile's K is a row of
// segments of gt = GHp / 16 tiles each: the above segments d' = 0..nseg_a-1
// (weight K tile s * gt + i), then the rec segment (index nseg_a). A step
// multiplies the present ones, [seg_lo, seg_hi): all of them; above only at
// k = 0; rec only in the top layer and at k = T. The top layer has no above
// part: its tile starts with the rec segment (w0 = nseg_a * gt: segment s at
// weight K tile s * gt - w0), so that where the tile is partly streamed
// (BackwardConfig::kres) its shared-memory prefix holds rec.
struct StepK {
  const void* above;   // dg_ih^{l+1, 0}[t] row 0 (direction d' adds d' * dir_stride)
  const void* rec;     // dg_hh^{l, d}[t_prev] row 0
  int64_t dir_stride;  // elements between d' = 0 and 1 of the above part (T * B * GHp)
  int na;              // above segments read this step (0 or D)
  bool has_rec;
  int gt;              // tiles per segment
  int nseg_a;          // above segments of the weight tile: ka / GHp (D, or 0 when L = 1)
  int seg_lo, seg_hi;  // the segments multiplied this step (empty: seg_hi <= seg_lo)
  int w0;              // the weight K tile of segment 0 is -w0 (top layer: nseg_a * gt; else 0)
};

template <typename T> struct Block {
  // K block of the weight layout and MMA K step (16-bit: m16n16k16; fp32: tf32 m16n16k8)
  static constexpr int kK = sizeof(T) == 2 ? 16 : 8;
};

// A warp's weight tiles in registers (tensor-core paths, BackwardConfig::
// reg_tiles > 0): wmma A fragments of unit rows 0..15 (one m-tile), one per K
// tile and MMA K step, tile j = seg * wlen + i for K tile seg * gt + s0 + i of
// the warp's K split (see warp_item). Loaded once, after the weights are in
// shared memory; none on the FP32 FMA path.
template <typename T, bool TF32, bool kFma = sizeof(T) == 4 && !TF32> struct WeightRegs {
  static constexpr int kTiles = backward_reg_tiles_max(static_cast<int>(sizeof(T)), TF32);
  static constexpr int kSubs = 16 / Block<T>::kK;
  typename MmaTypes<T, TF32>::A a[kTiles][kSubs];
};
template <typename T, bool TF32> struct WeightRegs<T, TF32, true> {
  static constexpr int kTiles = 0;
};

// The cluster's share of a warp's stream (cluster_copy.cuh): this CTA's rank
// and the cluster size, and the warp's full / empty barriers (one each per
// stage). size == 1: no cluster, every CTA streams its own copy with cp.async.
struct ClusterPipe {
  int rank = 0;
  int size = 1;
  uint64_t* full = nullptr;
  uint64_t* empty = nullptr;
};

// The K split of warp item ks: tiles [s0, s0 + wlen) of every segment, the
// same every step (so that its weight tiles can live in registers).
struct KSplit {
  int s0 = 0;
  int wlen = 0;
};

FRNN_DEVICE KSplit k_split_of(const BackwardConfig& c, int ks) {
  const int gt = c.gh_pad / 16;
  KSplit s;
  s.s0 = gt * ks / c.k_splits;
  s.wlen = gt * (ks + 1) / c.k_splits - s.s0;
  return s;
}

// This warp's register tiles (WeightRegs) from the CTA's weight tile `sw`.
template <typename T, bool TF32>
FRNN_DEVICE void load_weight_regs(WeightRegs<T, TF32>& wr, const BackwardConfig& c, const T* sw,
                                  const KSplit& ks, int U, int w0) {
  if constexpr (WeightRegs<T, TF32>::kTiles > 0) {
    constexpr int kK = Block<T>::kK;
    const int gt = c.gh_pad / 16;
    const int nseg = c.kw / c.gh_pad;
    int seg = 0, i = 0;  // tile j = seg * wlen + i
#pragma unroll
    for (int j = 0; j < WeightRegs<T, TF32>::kTiles; ++j) {
      // (the top layer's above segments, never multiplied: kt < 0)
      if (seg < nseg && i < ks.wlen && seg * gt + ks.s0 + i >= w0) {
        const int kt = seg * gt + ks.s0 + i - w0;
#pragma unroll
        for (int sub = 0; sub < WeightRegs<T, TF32>::kSubs; ++sub)
          wmma::load_matrix_sync(wr.a[j][sub],
                                 sw + static_cast<int64_t>(kt * (16 / kK) + sub) * U * kK, kK);
      }
      if (++i == ks.wlen) {
        i = 0;
        ++seg;
      }
    }
  }
}

// One warp's GEMM item: rows [row0, row0 + rows) (<= 16) of the pass, K tiles
// [s0, s0 + wlen) of each present segment, segment by segment (tile v of the
// item: segment seg_lo + v / wlen, tile s0 + v % wlen of it). Accumulates
// above and rec sums separately and stores them to part_w[2][16][m_pad]
// (column-major per sum: [n][m]). A weights from registers (wr; every tile of
// the item, c.reg_tiles > 0) or shared memory (sw).
//
// The K chunks (up to stage_k elements, inside one segment's range) stream
// through `stages` staging buffers, `stages - 1` chunks ahead of the one
// being multiplied. Without a cluster each lane copies its 16-byte pieces
// with cp.async (waits: cp.async.wait_group + __syncwarp).
// In a cluster (sm_90) the rows of each chunk are dealt to the cluster's CTAs
// (row r to rank r % size); lane i of each CTA copies its i-th row with one
// bulk copy multicast to the same stage of every CTA, after lane 0 has seen
// the stage's empty barrier (every CTA done with its previous chunk) and
// announced the chunk's bytes on its own full barrier; a consumer waits for
// its full barrier, multiplies, and arrives on the empty barrier of every CTA.
// `seq` (cluster only): the warp's chunks over the whole launch so far,
// modulo 2 x stages -- the same in every CTA of the cluster (they run the
// same items in the same order) -- from which each chunk's stage and barrier
// parity follow; advanced by the item's chunks.
// Streamed weights (c.kres < c.kw; never clustered, never in registers): the
// weight K tiles from kres / 16 on are not in `sw` but in `wst` (the CTA's
// share of the workspace, the same K-blocked layout from K = kres on); a
// chunk never straddles kres, and a streamed chunk's A tiles are copied with
// its B rows, by the same cp.async group, into the warp's A staging buffer of
// the same stage (`astage0`, backward_astage_elems each).
template <typename T, bool TF32>
FRNN_DEVICE void warp_item(const BackwardConfig& c, const T* sw, T* stage0, float* part_w,
                           const StepK& sk, int64_t row0, int rows, const KSplit& ks, int U,
                           const ClusterPipe& cp, int& seq, const WeightRegs<T, TF32>& wr,
                           const T* wst, T* astage0) {
  constexpr int kK = Block<T>::kK;
  constexpr int kPiece = 16 / sizeof(T);           // elements per 16-byte copy
  constexpr int kRowPieces = kStageRowBytes / 16;  // 16-byte pieces of a full chunk row (8)
  constexpr bool kFma = sizeof(T) == 4 && !TF32;   // exact FP32 path
  const int lane = threadIdx.x % 32;
  const int GHp = c.gh_pad;
  const int gt = sk.gt;
  const int s0 = ks.s0;
  const int wlen = ks.wlen;
  const int chunk_tiles = c.stage_k / 16;          // 4 (16-bit) or 2 (fp32)
  const int MT = c.m_tiles;
  const int stages = c.stages;
  const int64_t stage_elems = 16 * static_cast<int64_t>(c.stage_ld);
  const bool clustered = cp.size > 1;
  const bool any = sk.seg_hi > sk.seg_lo && wlen > 0;  // a tile to multiply
  const int kres_t = c.kres / 16;  // weight K tiles resident in shared memory
  const int astage_elems = static_cast<int>(backward_astage_elems(c));

  // A chunk is named by its cursor: segment `seg` and tile `off` of the
  // warp's range [s0, s0 + wlen) in it; chunks walk the range segment by
  // segment, no division anywhere.
  // the weight K tile of (seg, off)
  auto wtile_of = [&](int seg, int off) { return seg * gt + s0 + off - sk.w0; };
  // the chunk at (seg, off): to the end of the segment's range, and not
  // across the resident prefix's end
  auto chunk_len = [&](int seg, int off) {
    const int left = wlen - off;
    int n = chunk_tiles < left ? chunk_tiles : left;
    const int wk = wtile_of(seg, off);
    if (wk < kres_t && kres_t - wk < n) n = kres_t - wk;
    return n;
  };
  auto advance = [&](int& seg, int& off, int n) {
    off += n;
    if (off == wlen) {
      off = 0;
      ++seg;
    }
  };
  // A of the chunk at (seg, off) in stage `stage`: (base, its first K block)
  // -- the resident tile, or the streamed chunk's staging buffer
  auto a_src = [&](int seg, int off, int stage, const T*& base, int& kb0) {
    const int wk = wtile_of(seg, off);
    if (wk < kres_t) {
      base = sw;
      kb0 = wk * (16 / kK);
    } else {
      base = astage0 + stage * astage_elems;
      kb0 = 0;
    }
  };
  // the chunk (seg, off, n tiles) into stage `stage` (cluster only: of the
  // stage's fills, one of parity `par`)
  auto issue = [&](int seg, int off, int n, int stage, int par) {
    const T* src = (seg < sk.nseg_a ? static_cast<const T*>(sk.above) + seg * sk.dir_stride
                                    : static_cast<const T*>(sk.rec)) +
                   row0 * GHp + (s0 + off) * 16;
    T* dst = stage0 + stage * stage_elems;
    if (clustered) {
      uint64_t* const full = cp.full + stage;
      if (lane == 0) {
        // the consumption of the stage's previous fill; for the first fill
        // the parity of the phase "before" the first, which a fresh barrier
        // reports as complete
        if (FRNN_EMU_BREAK != 8) mbar_wait(cp.empty + stage, par ^ 1);
        mbar_arrive_expect_tx(full, rows * n * 16 * static_cast<int>(sizeof(T)));
      }
      __syncwarp();  // the stage is free in every CTA of the cluster
      const int r = lane * cp.size + cp.rank;
      if (r < rows)
        bulk_copy_multicast(dst + r * c.stage_ld, src + static_cast<int64_t>(r) * GHp,
                            n * 16 * static_cast<int>(sizeof(T)), full,
                            static_cast<uint16_t>((1u << cp.size) - 1));
      return;
    }
    // row r, piece q of the row: a full row has kRowPieces, this chunk's n * 16 / kPiece
    const int per_row = n * 16 / kPiece;
    for (int i = lane; i < rows * kRowPieces; i += 32) {
      const int r = i / kRowPieces;  // (a power of two: a shift)
      const int q = i % kRowPieces;
      if (q < per_row)
        cp_async16(dst + r * c.stage_ld + q * kPiece,
                   src + static_cast<int64_t>(r) * GHp + q * kPiece);
    }
    const int wk = wtile_of(seg, off);
    if (wk >= kres_t) {  // streamed weights: the chunk's n tiles of 16 K x U, contiguous
      const T* wsrc = wst + static_cast<int64_t>(wk - kres_t) * 16 * U;
      T* adst = astage0 + stage * astage_elems;
      for (int i = lane; i < n * 16 * U / kPiece; i += 32)
        cp_async16(adst + i * kPiece, wsrc + i * kPiece);
    }
  };
  // The pipeline: begin(); per chunk in order: stage = acquire(), multiply
  // it, release(); finish(). The next chunk to issue and the next to consume
  // are counted modulo 2 x stages by a wrap (no division): stage = q or
  // q - stages, (cluster) parity = q >= stages; `seq` is the consumer's.
  int iseg = sk.seg_lo, ioff = 0;  // the next chunk to issue
  int iq = seq, aq = seq;
  auto stage_of = [&](int q) { return q >= stages ? q - stages : q; };
  auto bump = [&](int& q) {
    if (++q == 2 * stages) q = 0;
  };
  auto issue_next = [&]() {
    if (any && iseg < sk.seg_hi) {
      const int n = chunk_len(iseg, ioff);
      issue(iseg, ioff, n, stage_of(iq), iq >= stages ? 1 : 0);
      advance(iseg, ioff, n);
      bump(iq);
    }
    if (!clustered) cp_async_commit();  // (empty groups keep the wait counts uniform)
  };
  auto begin = [&]() {
    for (int q = 0; q < stages - 1; ++q) issue_next();
  };
  // the next chunk has landed in the stage returned; the one after the
  // pipeline's depth is issued
  auto acquire = [&]() {
    const int stage = stage_of(aq);
    if (clustered) {
      if (FRNN_EMU_BREAK != 9) mbar_wait(cp.full + stage, aq >= stages ? 1 : 0);
    } else {
      cp_async_wait(stages - 2);
      __syncwarp();  // every lane's copies of the chunk landed
    }
    // (cp.async: the stage refilled now was read by the whole warp before the
    // __syncwarp above; cluster: issue() waits for its empty barrier)
    issue_next();
    return stage;
  };
  auto release = [&](int stage) {
    if (clustered) {
      __syncwarp();  // every lane has read the stage
      if (lane < cp.size) mbar_arrive_remote(cp.empty + stage, lane);
    }
    bump(aq);
  };
  auto finish = [&]() {
    if (clustered) {
      seq = aq;
    } else {
      cp_async_wait(0);
    }
  };
  // every chunk through `multiply(seg, off, n, stage)`, in order
  auto pipeline = [&](auto&& multiply) {
    begin();
    if (any) {
      for (int seg = sk.seg_lo, off = 0; seg < sk.seg_hi;) {
        const int n = chunk_len(seg, off);
        const int stage = acquire();
        multiply(seg, off, n, stage);
        release(stage);
        advance(seg, off, n);
      }
    }
    finish();
  };

  if constexpr (kFma) {
    (void)wr;
    // lane -> row m = lane % 16 of each m-tile, 8 batch columns n0 .. n0+7
    const int m = lane % 16;
    const int n0 = (lane / 16) * 8;
    float acc[2][kBackwardMaxMTiles][8];
#pragma unroll
    for (int a = 0; a < 2; ++a)
#pragma unroll
      for (int mt = 0; mt < kBackwardMaxMTiles; ++mt)
#pragma unroll
        for (int q = 0; q < 8; ++q) acc[a][mt][q] = 0.0f;
    auto compute = [&](int seg, int off, int n, int stage,
                       float (&ac)[kBackwardMaxMTiles][8]) {
      const T* wa;
      int kb0;
      a_src(seg, off, stage, wa, kb0);
      const float* bst = reinterpret_cast<const float*>(stage0 + stage * stage_elems);
      for (int kt = 0; kt < n; ++kt) {
#pragma unroll
        for (int kk = 0; kk < 16; kk += 4) {
          const int kb = kb0 + kt * (16 / kK) + kk / kK;
          float4 bv[8];
#pragma unroll
          for (int q = 0; q < 8; ++q)
            bv[q] = *reinterpret_cast<const float4*>(bst + (n0 + q) * c.stage_ld + kt * 16 + kk);
#pragma unroll
          for (int mt = 0; mt < kBackwardMaxMTiles; ++mt) {
            if (mt < MT) {
              const float4 av = *reinterpret_cast<const float4*>(
                  reinterpret_cast<const float*>(wa) +
                  (static_cast<int64_t>(kb) * U + mt * 16 + m) * kK + kk % kK);
#pragma unroll
              for (int q = 0; q < 8; ++q) {
                ac[mt][q] = fmaf(av.x, bv[q].x, ac[mt][q]);
                ac[mt][q] = fmaf(av.y, bv[q].y, ac[mt][q]);
                ac[mt][q] = fmaf(av.z, bv[q].z, ac[mt][q]);
                ac[mt][q] = fmaf(av.w, bv[q].w, ac[mt][q]);
              }
            }
          }
        }
      }
    };
    pipeline([&](int seg, int off, int n, int stage) {
      if (seg >= sk.nseg_a) compute(seg, off, n, stage, acc[1]);
      else compute(seg, off, n, stage, acc[0]);
    });
#pragma unroll
    for (int a = 0; a < 2; ++a)
#pragma unroll
      for (int mt = 0; mt < kBackwardMaxMTiles; ++mt)
        if (mt < MT)
#pragma unroll
          for (int q = 0; q < 8; ++q)
            part_w[(a * 16 + n0 + q) * c.m_pad + mt * 16 + m] = acc[a][mt][q];
  } else if (c.reg_tiles > 0) {
    // Every weight tile of the item is in registers (one m-tile, wmma A
    // fragments): walk the register tiles j = seg * wlen + i in order
    // (compile-time indices), multiplying those of the present segments --
    // the chunks of the pipeline, in its order.
    using M = MmaTypes<T, TF32>;
    using WR = WeightRegs<T, TF32>;
    typename M::C acc[2];  // [above | rec], m-tile 0
    wmma::fill_fragment(acc[0], 0.0f);
    wmma::fill_fragment(acc[1], 0.0f);
    begin();
    int stage = 0;
    int seg = 0, i = 0;
    int kt = 0;  // the tile's place in its chunk (chunks restart with each segment)
#pragma unroll
    for (int j = 0; j < WR::kTiles; ++j) {
      if (seg >= sk.seg_lo && seg < sk.seg_hi && i < wlen) {
        if (kt == 0) stage = acquire();
        const T* bst = stage0 + stage * stage_elems;
#pragma unroll
        for (int sub = 0; sub < WR::kSubs; ++sub) {
          typename M::B fb;
          wmma::load_matrix_sync(fb, bst + kt * 16 + sub * kK, c.stage_ld);
          if constexpr (TF32) {
#pragma unroll
            for (int e = 0; e < fb.num_elements; ++e) fb.x[e] = round_tf32(fb.x[e]);
          }
          if (seg >= sk.nseg_a) wmma::mma_sync(acc[1], wr.a[j][sub], fb, acc[1]);
          else wmma::mma_sync(acc[0], wr.a[j][sub], fb, acc[0]);
        }
        if (kt == chunk_tiles - 1 || i == wlen - 1) {
          release(stage);
          kt = 0;
        } else {
          ++kt;
        }
      }
      if (++i == wlen) {
        i = 0;
        ++seg;
      }
    }
    finish();
#pragma unroll
    for (int a = 0; a < 2; ++a)
      wmma::store_matrix_sync(part_w + a * 16 * c.m_pad, acc[a], c.m_pad, wmma::mem_col_major);
  } else {
    // Weights in shared memory (or streamed): mma.sync on fragments loaded
    // with ldmatrix from shared-space addresses (mma_frag.cuh). Per 16-element
    // K tile (16-bit: one k16 step; TF32: two k8 steps, `sub`), one
    // ldmatrix.x4 gives the B fragments of the item's two n8 halves (batch
    // rows 0-7, 8-15: matrices (rows, K low / high half) of a stage row) and
    // one per m-tile the A fragment (matrices (units 0-7 / 8-15, K low /
    // high half) of the K-blocked tile, rows 16 * kK * e bytes apart).
    // TF32: the 32-bit elements load as pairs of b16, the layouts of the
    // m16n8k8 .tf32 fragments; B rounded to TF32 (A was, when stored).
    constexpr int kRowElems = 16 / sizeof(T);  // one ldmatrix row: 8 (16-bit) / 4 (fp32)
    static_assert(2 * kRowElems == kK, "a K block is two ldmatrix rows wide");
    // this lane's row address offsets: B, matrix lane / 8 = (batch half, K half);
    // A, matrix lane / 8 = (K half, unit half)
    const int b_off = ((lane / 16) * 8 + lane % 8) * c.stage_ld + ((lane / 8) % 2) * kRowElems;
    const int a_row = lane % 8 + ((lane / 8) % 2) * 8;
    const int a_off = a_row * kK + (lane / 16) * kRowElems;
    float acc[2][kBackwardMaxMTiles][2][4];
#pragma unroll
    for (int a = 0; a < 2; ++a)
#pragma unroll
      for (int mt = 0; mt < kBackwardMaxMTiles; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int q = 0; q < 4; ++q) acc[a][mt][h][q] = 0.0f;
    auto compute = [&](int seg, int off, int n, int stage,
                       float (&ac)[kBackwardMaxMTiles][2][4]) {
      const T* wa;
      int kb0;
      a_src(seg, off, stage, wa, kb0);
      const T* bst = stage0 + stage * stage_elems + b_off;
      const T* ast = wa + static_cast<int64_t>(kb0) * U * kK + a_off;
      // (two tiles per trip: fully unrolled, the LSTM kernels' phase-timing
      // builds reach 255 registers and spill)
#pragma unroll 2
      for (int kt = 0; kt < n; ++kt) {
#pragma unroll
        for (int sub = 0; sub < 16 / kK; ++sub) {
          uint32_t b[4];
          ldmatrix_x4(b, bst + kt * 16 + sub * kK);
          if constexpr (TF32) {
#pragma unroll
            for (int q = 0; q < 4; ++q) b[q] = __float_as_uint(round_tf32(__uint_as_float(b[q])));
          }
          const T* at = ast + static_cast<int64_t>(kt * (16 / kK) + sub) * U * kK;
#pragma unroll
          for (int mt = 0; mt < kBackwardMaxMTiles; ++mt) {
            if (mt < MT) {
              uint32_t a[4];
              ldmatrix_x4(a, at + mt * 16 * kK);
#pragma unroll
              for (int h = 0; h < 2; ++h) {
                if constexpr (TF32) mma_1688_tf32(ac[mt][h], a, b + 2 * h);
                else mma_16816<T>(ac[mt][h], a, b + 2 * h);
              }
            }
          }
        }
      }
    };
    pipeline([&](int seg, int off, int n, int stage) {
      if (seg >= sk.nseg_a) compute(seg, off, n, stage, acc[1]);
      else compute(seg, off, n, stage, acc[0]);
    });
    // part_w[sum][row n][unit m]: register q of half h holds (m, n) of frag_c_coord
#pragma unroll
    for (int a = 0; a < 2; ++a)
#pragma unroll
      for (int mt = 0; mt < kBackwardMaxMTiles; ++mt)
        if (mt < MT)
#pragma unroll
          for (int h = 0; h < 2; ++h)
#pragma unroll
            for (int q = 0; q < 4; ++q) {
              const FragCoord fc = frag_c_coord(lane, q);
              part_w[(a * 16 + h * 8 + fc.col) * c.m_pad + mt * 16 + fc.row] = acc[a][mt][h][q];
            }
  }
}

// ------------------------------------------------------------ the epilogue's inputs

// What the epilogue of one (unit, row) reads from global memory, loaded before
// the GEMM so that the loads overlap it. Floats; gates unused past a length.
struct EpiIn {
  float carry = 0.0f;   // dh carried from the step before (grad_hy at k = 0)
  float dcarry = 0.0f;  // LSTM: dc carried (grad_cy at k = 0)
  float dy = 0.0f;      // top layer: grad_output[t, b, d*H + j]
  float g0 = 0.0f, g1 = 0.0f, g2 = 0.0f, g3 = 0.0f;  // LSTM i f g o; GRU r z n hn; RNN h_t
  float c = 0.0f;       // LSTM c_t
  float prev = 0.0f;    // LSTM c_{t-1}; GRU h_{t-1} (forward-time order)
  float hout = 0.0f;    // h_t (the layer's output before dropout)
  bool valid = false;   // t < lengths[b]
};

// ------------------------------------------------------------ the kernel

template <typename T, CellKind CELL, bool TF32, SyncPolicy SYNC>
__global__ void __launch_bounds__(kBackwardThreads, 1)
rnn_backward_kernel(const __grid_constant__ BackwardParams p) {
  static_assert(SYNC == SyncPolicy::kGrid || SYNC == SyncPolicy::kFlags, "a resolved policy");
  constexpr bool kFlags = SYNC == SyncPolicy::kFlags;
  constexpr int G = kGates<CELL>;
  constexpr int kK = Block<T>::kK;
  constexpr int kPre = 2;  // (unit, row) pairs per thread whose inputs are prefetched
  FRNN_DECLARE_DYNAMIC_SMEM(smem_decl);
  unsigned char* const smem = smem_base(smem_decl);
  const BackwardConfig& c = p.cfg;
  const BackwardSmemLayout lay = backward_smem_layout(c);
  T* const sw = reinterpret_cast<T*>(smem + lay.w);
  T* const sstage = reinterpret_cast<T*>(smem + lay.stage);
  T* const sastage = reinterpret_cast<T*>(smem + lay.astage);
  float* const part = reinterpret_cast<float*>(smem + lay.part);

  const int H = p.hidden;
  const int D = p.num_dirs;
  const int L = p.num_layers;
  const int64_t B = p.batch;
  const int64_t T_len = p.seq_len;
  const int64_t S = p.reserve_width;
  const int U = c.units_per_cta;
  const int GH = G * H;
  const int GHp = c.gh_pad;
  // CTA = (ld * BS + bslice) * C + slice: the unit slices of one
  // layer-direction and batch slice are consecutive (a cluster is a run of them)
  const int slice = blockIdx.x % c.ctas_per_dir;
  const int ld_bslice = blockIdx.x / c.ctas_per_dir;
  const int bslice = ld_bslice % c.batch_slices;
  const int ld_id = ld_bslice / c.batch_slices;
  const int layer = ld_id / D;
  const int dir = ld_id - layer * D;
  const int u0 = slice * U;
  const int uc = min(U, H - u0);
  const int64_t b_lo = static_cast<int64_t>(bslice) * c.rows_per_slice;
  const int64_t b_hi = min(B, b_lo + c.rows_per_slice);
  const bool top = layer == L - 1;
  const bool bidir = D == 2;
  const int warp = threadIdx.x / 32;
  const int64_t BH = B * H;
  const int64_t TBG = T_len * B * GHp;  // elements per (layer, direction) of dg_ih / dg_hh
  // streamed weights: this CTA's share of the workspace, K [kres, kw) of its tile
  const int64_t wst_elems = static_cast<int64_t>(U) * (c.kw - c.kres);
  T* const wst = backward_streams(c) ? static_cast<T*>(p.wstream) + blockIdx.x * wst_elems
                                     : nullptr;
  // Per-phase timing (FRNN_PHASE_TIMING builds only; otherwise every rec.*
  // call is empty): unit slice 0, batch slice 0 of each layer-direction records.
  PhaseRecorder rec(p.phase_buf, p.phase_cap, slice == 0 && bslice == 0 ? ld_id : -1,
                    kPhaseKindBackward, L, D, T_len);

  // ---- prologue: zero the weight tile (K padding, rows past uc, slack), the
  // staging buffers (the rows past a partial batch tile are never written, and
  // their MMA columns are discarded: zeros rather than whatever was there) and
  // the partial sums; then load this CTA's weight columns once for the launch.
  // In a cluster the staging buffers are left alone: peers' bulk copies (the
  // async proxy) write them, ordered with this CTA's generic stores only by
  // the cluster barrier below.
  {
    const bool zero_stage = c.cluster <= 1 && !bisect_on(kBisectPoisonSmem);
    auto fill = [&](int64_t from, int64_t to, unsigned v) {
      uint4* z = reinterpret_cast<uint4*>(smem + from);
      for (int64_t i = threadIdx.x; i < (to - from) / 16; i += kBackwardThreads)
        z[i] = make_uint4(v, v, v, v);
    };
    if constexpr (bisect_on(kBisectPoisonSmem)) {
      // (FRNN_BISECT: every byte this CTA may touch, but a cluster's staging buffers)
      fill(lay.w, c.cluster <= 1 ? lay.bar : lay.stage, 0xFFFFFFFFu);
      if (c.cluster > 1) fill(lay.part, lay.bar, 0xFFFFFFFFu);
      __syncthreads();
    }
    fill(lay.w, zero_stage ? lay.part : lay.stage, 0u);
    fill(lay.part, lay.bar, 0u);
  }
  // streamed weights: zeros where put_rows below writes nothing (K padding,
  // units past uc), ordered before its stores by the barrier
  for (int64_t i = threadIdx.x; i < wst_elems; i += kBackwardThreads) wst[i] = from_f<T>(0.0f);
  __syncthreads();
  {
    // (k, u) of the K-blocked weight tile (backward_params.h): in shared
    // memory below kres, else in the streamed share (the same layout from kres)
    // (the streamed share by st.global.cg: two distinct stores, so that the
    // shared-memory one stays a shared store, 16-bit where it was)
    auto at = [&](int k, int u) { return (static_cast<int64_t>(k / kK) * U + u) * kK + k % kK; };
    auto put = [&](int k, int u, auto v) {  // v: one element (T) or two (uint32_t)
      using V = decltype(v);
      using Bits = std::conditional_t<sizeof(V) == 2, unsigned short, unsigned int>;
      static_assert(sizeof(V) == sizeof(Bits), "2- or 4-byte stores");
      const int64_t i = at(k, u);
      if (k < c.kres) {
        *reinterpret_cast<V*>(sw + i) = v;
      } else {
        Bits bits;
        memcpy(&bits, &v, sizeof(V));
        __stcg(reinterpret_cast<Bits*>(wst + (i - static_cast<int64_t>(c.kres) * U)), bits);
      }
    };
    // rows [0, GH) of the column block starting at K row k0 (a multiple of 16),
    // units u0 + [0, uc): element (row, u) = src[row * ld + u]
    auto put_rows = [&](int k0, const T* src, int64_t ld) {
      if constexpr (sizeof(T) == 2 && bisect_on(kBisectWideWeightStores)) {
        // (FRNN_BISECT) K rows 2r and 2r + 1 of a unit are adjacent: one 32-bit
        // store; row GH (odd GH) is K padding, zero
        for (int i = threadIdx.x; i < (GH + 1) / 2 * uc; i += kBackwardThreads) {
          const int pr = i / uc, u = i - pr * uc, row = 2 * pr;
          const T lo = src[static_cast<int64_t>(row) * ld + u];
          const T hi = row + 1 < GH ? src[static_cast<int64_t>(row + 1) * ld + u] : from_f<T>(0.0f);
          uint16_t blo, bhi;
          memcpy(&blo, &lo, 2);
          memcpy(&bhi, &hi, 2);
          put(k0 + row, u, static_cast<uint32_t>(blo) | (static_cast<uint32_t>(bhi) << 16));
        }
      } else {
        for (int i = threadIdx.x; i < GH * uc; i += kBackwardThreads) {
          const int row = i / uc, u = i - row * uc;
          T v = src[static_cast<int64_t>(row) * ld + u];
          if constexpr (TF32) v = from_f<T>(round_tf32(to_f(v)));
          put(k0 + row, u, v);
        }
      }
    };
    if (!top) {
      const int in_next = D * H;  // input width of layer l + 1
      for (int d2 = 0; d2 < D; ++d2)
        put_rows(d2 * GHp, static_cast<const T*>(p.w_ih[(layer + 1) * D + d2]) + dir * H + u0,
                 in_next);
    }
    put_rows(top ? 0 : c.ka, static_cast<const T*>(p.w_hh[ld_id]) + u0, H);  // (StepK::w0)
  }
  __syncthreads();

  // This warp's K split (the same for all its items: warp = nt * k_splits +
  // ks) and, where they fit (c.reg_tiles > 0), its weight tiles in registers.
  const KSplit wsplit = k_split_of(c, warp % c.k_splits);
  const int warp_nt = warp / c.k_splits;  // this warp's batch tile of a pass
  // (unit, row) pair pi -> (pi % uc, pi / uc) in the epilogue, without a division
  const FastDiv uc_div = FastDiv::make(static_cast<uint32_t>(uc));
  WeightRegs<T, TF32> wregs;
  if (c.reg_tiles > 0) load_weight_regs<T, TF32>(wregs, c, sw, wsplit, U, top ? c.ka / 16 : 0);

  // Clusters (cluster_copy.cuh): each warp's full / empty barrier per stage,
  // initialised by this CTA and visible to the cluster before any use.
  int chunk_seq = 0;  // this warp's chunks so far, mod 2 x stages (the same in each lane)
  ClusterPipe cpipe;
  if (c.cluster > 1) {
#if !FRNN_CLUSTER_CODE
    __trap();  // (the planner asks for clusters on sm_90 and later only)
#endif
    uint64_t* const bars = reinterpret_cast<uint64_t*>(smem + lay.bar);
    const int nb = kBackwardWarps * c.stages;
    if (static_cast<int>(threadIdx.x) < nb) {
      mbar_init(bars + threadIdx.x, 1);              // full: the local expect_tx + the bytes
      mbar_init(bars + nb + threadIdx.x, c.cluster);  // empty: one consumer per CTA
      mbar_init_fence();
    }
    cluster_sync();
    cpipe.rank = cluster_rank();
    cpipe.size = c.cluster;
    cpipe.full = bars + warp * c.stages;
    cpipe.empty = bars + nb + warp * c.stages;
  }

  const T* const reserve = static_cast<const T*>(p.reserve);
  const T* const gout = static_cast<const T*>(p.grad_output);
  const T* const ghy = static_cast<const T*>(p.grad_hy);
  const T* const gcy = static_cast<const T*>(p.grad_cy);
  const T* const hx = static_cast<const T*>(p.hx);
  const T* const cx = static_cast<const T*>(p.cx);
  T* const dg_ih = static_cast<T*>(p.dg_ih);
  T* const dg_hh = static_cast<T*>(p.dg_hh);
  T* const xdrop = static_cast<T*>(p.xdrop);
  const uint64_t seed = p.dropout_active ? static_cast<uint64_t>(*p.seed) : 0;
  const bool drop_here = p.dropout_active && !top;  // this layer's output was dropped

  const int64_t n_steps = bidir ? static_cast<int64_t>(L) * T_len + 1 : T_len + L;
  // The wave step of this CTA's local step 0 (phase records are per wave step).
  const int64_t wave0 = bidir ? static_cast<int64_t>(L - 1 - layer) * T_len : L - 1 - layer;
  const int pass_rows = c.n_tiles * 16;
  const int LD = L * D;
  const int C = c.ctas_per_dir;
  if constexpr (kFlags) {
    for (int64_t w = 0; w < n_steps; ++w)
      if (w < wave0 || w > wave0 + T_len) rec.idle_step(w);
  }

  // [sass:setup] the step's own arithmetic (k, t, the GEMM's K segments, the passes)
  rec.loop_start();
  // grid: every CTA walks all wave steps (idle ones too: grid.sync is
  // collective). flags: a CTA walks its own T + 1 steps only.
  const int64_t n_iter = kFlags ? T_len + 1 : n_steps;
  for (int64_t s = 0; s < n_iter; ++s) {
    const int64_t k = kFlags ? s : s - wave0;  // this layer's local step
    const bool active = k >= 0 && k <= T_len;
    if (active) {
      const bool has_t = k < T_len;
      const int64_t t = has_t ? (dir == 0 ? T_len - 1 - k : k) : -1;
      const int64_t tp = k >= 1 ? (dir == 0 ? T_len - k : k - 1) : -1;  // t of step k - 1
      // t - 1 in forward-time order (the state before t), -1 / T at the boundary
      const int64_t tf = dir == 0 ? t - 1 : t + 1;
      const bool tf_in = has_t && tf >= 0 && tf < T_len;

      StepK sk;
      sk.gt = GHp / 16;
      sk.na = (has_t && !top) ? D : 0;
      sk.has_rec = k >= 1;
      sk.nseg_a = c.ka / GHp;
      sk.w0 = top ? c.ka / 16 : 0;
      sk.dir_stride = TBG;
      // (na > 0: not the top layer, so nseg_a == D == na: the segments are contiguous)
      sk.seg_lo = sk.na > 0 ? 0 : sk.nseg_a;
      sk.seg_hi = sk.has_rec ? sk.nseg_a + 1 : sk.na;
      sk.above = sk.na ? static_cast<const void*>(dg_ih + ((layer + 1) * D) * TBG + t * B * GHp)
                       : nullptr;
      sk.rec = sk.has_rec ? static_cast<const void*>(dg_hh + ld_id * TBG + tp * B * GHp)
                          : nullptr;

      for (int64_t b0 = b_lo; b0 < b_hi; b0 += pass_rows) {
        const int nbv = static_cast<int>(min(static_cast<int64_t>(pass_rows), b_hi - b0));
        const int pairs = uc * nbv;

        // [sass:prefetch] the epilogue's inputs (loads in flight during the wait and the GEMM)
        // 0. the epilogue's inputs, in flight during the GEMM
        auto load_in = [&](int pi) {
          EpiIn in;
          uint32_t u_;
          const int bl = static_cast<int>(uc_div.divmod(static_cast<uint32_t>(pi), u_));
          const int u = static_cast<int>(u_);
          const int64_t b = b0 + bl;
          const int j = u0 + u;
          const int64_t sidx = ld_id * BH + b * H + j;
          if (k == 0) {
            // [sass-path:step0:begin] (the carries from grad_hy / grad_cy at k = 0)
            in.carry = to_f(ghy[sidx]);
            if constexpr (CELL == CellKind::kLSTM) in.dcarry = to_f(gcy[sidx]);
            // [sass-path:step0:end]
          } else {
            in.carry = __ldcg(p.state_dh + sidx);
            if constexpr (CELL == CellKind::kLSTM) in.dcarry = __ldcg(p.state_dc + sidx);
          }
          if (has_t) {
            in.valid = p.lengths == nullptr || t < __ldg(p.lengths + b);
            // [sass-path:top:begin] (grad_output: the top layer)
            if (top) in.dy = to_f(gout[(t * B + b) * (D * H) + dir * H + j]);
            // [sass-path:top:end]
            const T* rsv = reserve + ((ld_id * T_len + t) * B + b) * S;
            const T* rsv_prev = tf_in ? reserve + ((ld_id * T_len + tf) * B + b) * S : rsv;
            if constexpr (CELL == CellKind::kLSTM) {
              in.g0 = to_f(rsv[j]);
              in.g1 = to_f(rsv[H + j]);
              in.g2 = to_f(rsv[2 * H + j]);
              in.g3 = to_f(rsv[3 * H + j]);
              in.c = to_f(rsv[4 * H + j]);
              in.hout = to_f(rsv[5 * H + j]);
              in.prev = tf_in ? to_f(rsv_prev[4 * H + j]) : to_f(cx[sidx]);
            } else if constexpr (CELL == CellKind::kGRU) {
              in.g0 = to_f(rsv[j]);
              in.g1 = to_f(rsv[H + j]);
              in.g2 = to_f(rsv[2 * H + j]);
              in.g3 = to_f(rsv[3 * H + j]);
              in.hout = to_f(rsv[4 * H + j]);
              in.prev = tf_in ? to_f(rsv_prev[4 * H + j]) : to_f(hx[sidx]);
            } else {
              in.g0 = to_f(rsv[j]);
              in.hout = in.g0;
            }
          }
          return in;
        };
        EpiIn pre[kPre];
#pragma unroll
        for (int q = 0; q < kPre; ++q) {
          const int pi = threadIdx.x + q * kBackwardThreads;
          if (pi < pairs) pre[q] = load_in(pi);
        }
        // [sass:sync] the wait for the producers
        if constexpr (kFlags) {
          // Before the step's first pass (its loads above depend on no other
          // CTA and fly during the wait): the producers of what the GEMM reads.
          if (b0 == b_lo) {
            rec.mark(kPhaseGemm);  // (the prefetch issue counts with the GEMM)
            FlagRange own, above0, above1;
            const int64_t own_target = FRNN_EMU_BREAK == 7 ? k - 1 : k;
            if (own_target > 0)
              own = FlagRange{backward_flag_index(c, LD, bslice, ld_id, 0), C,
                              static_cast<int>(own_target)};
            if (sk.na > 0) {  // dg_ih^{l+1,d'}[t] of both directions d' above
              const int64_t slack = FRNN_EMU_BREAK == 6 ? 1 : 0;
              above0 = FlagRange{backward_flag_index(c, LD, bslice, (layer + 1) * D, 0), C,
                                 static_cast<int>(T_len - t - slack)};
              if (bidir)
                above1 = FlagRange{backward_flag_index(c, LD, bslice, (layer + 1) * D + 1, 0), C,
                                   static_cast<int>(t + 1 - slack)};
            }
            wait_for_ranges(p.flags, own, above0, above1, kBackwardThreads);
            rec.mark(kPhaseBarrier);
          }
        }

        // 1. the GEMM: warp item (batch tile nt, K split ks)
        // (cluster: the bulk copies read, through the async proxy, gate
        // gradients that generic stores wrote; this thread has waited for
        // them -- above, or at the previous step's grid.sync -- once per step)
        if (c.cluster > 1 && b0 == b_lo) fence_proxy_async_global();
        // [sass:gemm] the warp items (everything inlined from warp_item), the CTA barrier
        if (sk.seg_hi > sk.seg_lo && !bisect_on(kBisectNoGemm)) {
          const int nt = warp_nt;
          const int rows = min(16, nbv - nt * 16);
          if (rows > 0)
            warp_item<T, TF32>(c, sw, sstage + static_cast<int64_t>(warp) * c.stages * 16 * c.stage_ld,
                               part + static_cast<int64_t>(warp) * 2 * 16 * c.m_pad, sk,
                               b0 + nt * 16, rows, wsplit, U, cpipe, chunk_seq, wregs,
                               // (made here from the parameters: no registers held across the loop)
                               backward_streams(c) ? static_cast<const T*>(p.wstream) +
                                                         blockIdx.x * wst_elems
                                                   : nullptr,
                               sastage + warp * c.stages * backward_astage_elems(c));
        }
        __syncthreads();
        rec.mark(kPhaseGemm);  // (with the prefetch issue: no clean boundary, see phase_timing.h)

        // [sass:epilogue] the partial sums' reduction, the cell's derivative, the stores
        // 2. epilogue: one thread per (unit, row), units fastest
        auto finish = [&](int pi, const EpiIn& in) {
          uint32_t u_;
          const int bl = static_cast<int>(uc_div.divmod(static_cast<uint32_t>(pi), u_));
          const int u = static_cast<int>(u_);
          const int64_t b = b0 + bl;
          const int j = u0 + u;
          const int64_t sidx = ld_id * BH + b * H + j;
          const int nt = bl / 16, n = bl % 16;
          float rec = 0.0f, above = 0.0f;
          for (int q = 0; q < (bisect_on(kBisectNoPartRead) ? 0 : c.k_splits); ++q) {
            const float* pw = part + static_cast<int64_t>(nt * c.k_splits + q) * 2 * 16 * c.m_pad;
            if (sk.has_rec) rec += pw[(16 + n) * c.m_pad + u];
            if (sk.na) above += pw[n * c.m_pad + u];
          }
          const float dh_in = rec + in.carry;
          if (!has_t) {  // k = T: the gradient w.r.t. the initial state
            // [sass-path:final:begin] (k = T: grad_hx / grad_cx)
            static_cast<T*>(p.grad_hx)[sidx] = from_f<T>(dh_in);
            if constexpr (CELL == CellKind::kLSTM)
              static_cast<T*>(p.grad_cx)[sidx] = from_f<T>(in.dcarry);
            return;
            // [sass-path:final:end]
          }
          float dy;
          if (top) {
            // [sass-path:top:begin]
            dy = in.dy;
            // [sass-path:top:end]
          } else if (p.dropout_active) {
            // [sass-path:dropout:begin] (the mask of the layer above's input)
            const bool keep = dropout_keep(seed, p.dropout_threshold, layer, dir,
                                           static_cast<uint32_t>(t), static_cast<uint32_t>(b), j);
            dy = keep ? above * p.dropout_scale : 0.0f;
            // [sass-path:dropout:end]
          } else {
            dy = above;
          }
          if (drop_here) {  // the input of layer + 1 at (t, b), exactly as the forward dropped it
            // [sass-path:dropout:begin] (this layer's dropped output)
            T out = from_f<T>(0.0f);
            if (in.valid &&
                dropout_keep(seed, p.dropout_threshold, layer, dir, static_cast<uint32_t>(t),
                             static_cast<uint32_t>(b), j))
              out = from_f<T>(in.hout * p.dropout_scale);
            xdrop[((static_cast<int64_t>(layer) * T_len + t) * B + b) * (D * H) + dir * H + j] = out;
            // [sass-path:dropout:end]
          }
          T* const gi = dg_ih + ld_id * TBG + (t * B + b) * GHp;
          const bool v = in.valid;
          const float dh_new = v ? dy + dh_in : 0.0f;
          float carry = v ? 0.0f : dh_in;
          if constexpr (CELL == CellKind::kLSTM) {
            float da_i = 0.0f, da_f = 0.0f, da_g = 0.0f, da_o = 0.0f, dc_next = in.dcarry;
            if (v) {
              const float i = in.g0, f = in.g1, g = in.g2, o = in.g3;
              const float tc = tanh_f(in.c);
              const float dc = in.dcarry + dh_new * o * (1.0f - tc * tc);
              da_i = dc * g * i * (1.0f - i);
              da_f = dc * in.prev * f * (1.0f - f);
              da_g = dc * i * (1.0f - g * g);
              da_o = dh_new * tc * o * (1.0f - o);
              dc_next = dc * f;
            }
            gi[j] = from_f<T>(da_i);
            gi[H + j] = from_f<T>(da_f);
            gi[2 * H + j] = from_f<T>(da_g);
            gi[3 * H + j] = from_f<T>(da_o);
            p.state_dc[sidx] = dc_next;
          } else if constexpr (CELL == CellKind::kGRU) {
            float dar = 0.0f, daz = 0.0f, dan = 0.0f, dan_h = 0.0f;
            if (v) {
              const float r = in.g0, z = in.g1, nn = in.g2, hn = in.g3;
              dan = dh_new * (1.0f - z) * (1.0f - nn * nn);
              dar = dan * hn * r * (1.0f - r);
              daz = dh_new * (in.prev - nn) * z * (1.0f - z);
              dan_h = dan * r;
              carry = dh_new * z;
            }
            T* const gh = dg_hh + ld_id * TBG + (t * B + b) * GHp;
            gi[j] = from_f<T>(dar);
            gi[H + j] = from_f<T>(daz);
            gi[2 * H + j] = from_f<T>(dan);
            gh[j] = from_f<T>(dar);
            gh[H + j] = from_f<T>(daz);
            gh[2 * H + j] = from_f<T>(dan_h);
          } else {
            float da = 0.0f;
            if (v) {
              const float h = in.g0;
              const float act = p.mode == static_cast<int>(Mode::kRnnRelu)
                                    ? (h > 0.0f ? 1.0f : 0.0f)
                                    : 1.0f - h * h;
              da = dh_new * act;
            }
            gi[j] = from_f<T>(da);
          }
          p.state_dh[sidx] = carry;
          // the row's padding columns [GH, GHp) are read by the next GEMMs: zeros
          if (j == H - 1) {
            for (int col = GH; col < GHp; ++col) gi[col] = from_f<T>(0.0f);
            if constexpr (CELL == CellKind::kGRU) {
              T* const gh = dg_hh + ld_id * TBG + (t * B + b) * GHp;
              for (int col = GH; col < GHp; ++col) gh[col] = from_f<T>(0.0f);
            }
          }
        };
#pragma unroll
        for (int q = 0; q < kPre; ++q) {
          const int pi = threadIdx.x + q * kBackwardThreads;
          if (pi < pairs) finish(pi, pre[q]);
        }
        for (int pi = threadIdx.x + kPre * kBackwardThreads; pi < pairs; pi += kBackwardThreads)
          finish(pi, load_in(pi));
        // the next pass rewrites the partial sums; a recorded CTA also waits
        // after the last pass, so that its epilogue phase ends with every thread's
        if (b0 + pass_rows < b_hi || rec.cta_on()) __syncthreads();
        rec.mark(kPhaseEpilogue);
      }
      // [sass:sync] the cluster's fence, the publish
      // (cluster: this step's gate gradients will be read by bulk copies)
      if (c.cluster > 1) fence_proxy_async_global();
    }
    if constexpr (kFlags) {
      // Every thread's writes of this step, then one release of the count.
      __syncthreads();
      if (threadIdx.x == 0)
        flag_publish(p.flags + backward_flag_index(c, LD, bslice, ld_id, slice),
                     static_cast<int>(k + 1));
      rec.step_end(wave0 + k, true, true);
    } else {
      // (the grid handle is made here, not held in registers across the loop)
      if (s + 1 < n_steps) cg::this_grid().sync();
      rec.step_end(s, active, s + 1 < n_steps);
    }
  }
  // [sass:end]
  // no CTA leaves while a peer may still arrive on its barriers
  if (c.cluster > 1) cluster_sync();
  rec.finish(n_steps);
}

// ------------------------------------------------------------ launchers

template <typename T, CellKind CELL, bool TF32>
const void* backward_kernel_ptr(SyncPolicy sync) {
  return sync == SyncPolicy::kGrid
             ? reinterpret_cast<const void*>(&rnn_backward_kernel<T, CELL, TF32, SyncPolicy::kGrid>)
             : reinterpret_cast<const void*>(&rnn_backward_kernel<T, CELL, TF32, SyncPolicy::kFlags>);
}

// One cooperative launch on `stream` of the variant of p.cfg.sync (see
// launch_forward_kernel: both policies need every CTA co-resident; the caller
// has zeroed the step counters on the same stream for kFlags).
// With clusters (p.cfg.cluster > 1, sm_90): cudaLaunchKernelEx with both the
// cooperative and the cluster-dimension attributes (the planner checked with
// cudaOccupancyMaxActiveClusters that every cluster is co-resident).
template <typename T, CellKind CELL, bool TF32>
cudaError_t launch_backward_kernel(const BackwardParams& p, cudaStream_t stream) {
  // the plan's register tiles must fit the ones this instantiation holds
  if (p.cfg.reg_tiles > WeightRegs<T, TF32>::kTiles || (p.cfg.reg_tiles > 0 && p.cfg.m_tiles != 1))
    return cudaErrorInvalidValue;
  // streamed weights: cp.async only (no cluster), none in registers, and their share
  if (backward_streams(p.cfg) &&
      (p.cfg.cluster > 1 || p.cfg.reg_tiles > 0 || p.cfg.kres % 16 != 0 || p.wstream == nullptr))
    return cudaErrorInvalidValue;
  const void* fn = backward_kernel_ptr<T, CELL, TF32>(p.cfg.sync);
  void* args[] = {const_cast<BackwardParams*>(&p)};
  if (p.cfg.cluster <= 1)
    return cudaLaunchCooperativeKernel(fn, dim3(p.cfg.grid), dim3(kBackwardThreads), args,
                                       static_cast<size_t>(p.cfg.smem_bytes), stream);
  return launch_cooperative_clusters(fn, p.cfg.grid, kBackwardThreads, p.cfg.smem_bytes,
                                     p.cfg.cluster, args, stream);
}

}  // namespace bwd
}  // namespace fused_rnn

#define FRNN_INSTANTIATE_BACKWARD(T, CELL, TF32)                                             \
  template const void* fused_rnn::bwd::backward_kernel_ptr<T, CELL, TF32>(fused_rnn::SyncPolicy); \
  template cudaError_t fused_rnn::bwd::launch_backward_kernel<T, CELL, TF32>(               \
      const fused_rnn::BackwardParams&, cudaStream_t);
