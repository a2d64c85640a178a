// The persistent forward kernel: a whole LSTM / GRU / RNN stack, every layer
// and every timestep, in one cooperative launch.
//
// Schedule: at its local step k, layer l computes t = k (reverse direction:
// T-1-k) from its input h^{l-1}_t and its state h^l_{t-1}.
//   unidirectional  a wavefront: layer l's step k is wave step s = l + k,
//                   T + L - 1 wave steps in all.
//   bidirectional   layer l runs at wave steps [l*T, (l+1)*T), both directions
//                   at once: layer l + 1 needs all T outputs of layer l.
// Synchronisation, a template parameter (SyncPolicy, common.h), chosen per call:
//   kGrid   one grid.sync() per wave step: every CTA of the grid in lock-step
//           (idle layers too); h rings of 2 slots.
//   kFlags  point-to-point (sync_flags.cuh): before step k a CTA waits, with
//           acquire loads on per-CTA step counters, for exactly
//             - the C slices of its own (layer, direction) to have done k steps
//               (h_{t-1} complete),
//             - the slices of the layer below to have done k+1 steps
//               (unidirectional), or all T (bidirectional, at k = 0),
//             - unidirectional: the slices of the layer above to have done
//               k-R+1 steps, i.e. finished reading the ring slot k % R this
//               step overwrites (R = 4: a layer may run up to 3 steps ahead);
//           and after the step publishes k+1 (release store). Layers run ahead
//           of each other as far as the data allows, instead of in lock-step.
//           With ForwardConfig::cluster_rec (FUSED_RNN_SYNC=cluster, opt-in):
//           the C CTAs of a (layer, direction) are one thread-block cluster and
//           hand h_t to each other through distributed shared memory (see
//           "recurrence in a cluster" below); the wait for its own layer's
//           counters goes, those for the layers below and above stay.
//
// Per step, a CTA (owner of units [u0, u0 + Uc) of one (layer, direction)), for
// each batch tile of NB rows:
//   1. gathers X = [x_t ; h_{t-1}] (NB x K) into shared memory in one batch of
//      asynchronous copies (cp.async.cg, 16 bytes each, through L2: the data
//      was written by other CTAs in this launch and L1 is not coherent across
//      SMs; a register path where sizes or alignment do not allow it, and for
//      TF32, whose operands are rounded on the way). Layer 0's x_t depends on
//      no other CTA: with flags its copies are issued before the wait;
//   2. gates = W X on tensor cores (mma.sync, fp32 accumulate; the weights
//      held as A fragments for the whole launch -- each warp's first tiles in
//      registers, the rest in shared memory in fragment order -- and the
//      activations read with ldmatrix, once per warp that needs them) or FP32
//      FMA (weights in shared memory), the x part and the h part as separate
//      partial sums;
//   3. epilogue, one thread per (unit, batch row): sums partials + biases,
//      gate nonlinearities and cell update in fp32 from the exact fp32 state
//      (owner-only: resident in shared memory for the whole launch, or staged
//      per tile from the workspace when B rows do not fit), length masking;
//      writes h_t (ring), the layer output (dropped copy for the next layer:
//      each mask bit is computed once, by the owner), the reserve, h_n / c_n.
//
// No torch header: compiled by bare nvcc in CI (tests/test_compile_kernels.py)
// and run on host threads by csrc/emu/ (FRNN_EMULATION).
#pragma once

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <type_traits>

#include "async_copy.cuh"
#include "cluster_copy.cuh"
#include "common.h"
#include "forward_params.h"
#include "gate_math.h"
#include "mma_frag.cuh"
#include "phase_timing.h"
#include "philox.cuh"
#include "sync_flags.cuh"

// The kernel's dynamic shared memory. A hook so that the host emulation
// (csrc/emu/) can run this exact source with one block of memory per CTA.
#ifndef FRNN_DECLARE_DYNAMIC_SMEM
#define FRNN_DECLARE_DYNAMIC_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
#endif

namespace fused_rnn {
namespace fwd {

namespace cg = cooperative_groups;
namespace wmma = nvcuda::wmma;

// ------------------------------------------------------------ element access

template <typename T> FRNN_DEVICE float to_f(T v);
template <> FRNN_DEVICE float to_f<float>(float v) { return v; }
template <> FRNN_DEVICE float to_f<__half>(__half v) { return __half2float(v); }
template <> FRNN_DEVICE float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> FRNN_DEVICE T from_f(float v);
template <> FRNN_DEVICE float from_f<float>(float v) { return v; }
template <> FRNN_DEVICE __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> FRNN_DEVICE __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Scalar load through L2 only (never the non-coherent L1 / texture path).
template <typename T> FRNN_DEVICE T ld_cg(const T* p);
template <> FRNN_DEVICE float ld_cg<float>(const float* p) { return __ldcg(p); }
template <> FRNN_DEVICE __half ld_cg<__half>(const __half* p) {
  return __ushort_as_half(__ldcg(reinterpret_cast<const unsigned short*>(p)));
}
template <> FRNN_DEVICE __nv_bfloat16 ld_cg<__nv_bfloat16>(const __nv_bfloat16* p) {
  return __ushort_as_bfloat16(__ldcg(reinterpret_cast<const unsigned short*>(p)));
}

FRNN_DEVICE float round_tf32(float v) { return wmma::__float_to_tf32(v); }

FRNN_DEVICE uint4 round_tf32_4(uint4 v) {
  v.x = __float_as_uint(round_tf32(__uint_as_float(v.x)));
  v.y = __float_as_uint(round_tf32(__uint_as_float(v.y)));
  v.z = __float_as_uint(round_tf32(__uint_as_float(v.z)));
  v.w = __float_as_uint(round_tf32(__uint_as_float(v.w)));
  return v;
}

// Copies `rows` global rows (`n` elements each, row stride src_ld) into shared
// rows of stride ldd, through registers: 16-byte vectors when the source
// allows it (any row length / alignment works: the scalar path covers the
// rest), four loads in flight per thread before their stores. ROUND rounds
// fp32 to TF32 on the way, so the TF32 MMA reads pre-rounded operands.
// Must be called by the whole CTA; done on return.
// `per_row` (optional): FastDiv by n / (16 / sizeof(T)), made before the step loop, so
// that the vector path divides without a division instruction.
template <typename T, bool ROUND>
FRNN_DEVICE void load_rows(T* dst, int ldd, const T* src, int64_t src_ld, int rows, int n,
                           const FastDiv* per_row = nullptr) {
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kBatch = 4;
  const bool vec = (reinterpret_cast<uintptr_t>(src) % 16 == 0) && (src_ld % kVec == 0) &&
                   (n % kVec == 0);
  if (vec) {
    const FastDiv fd = per_row ? *per_row : FastDiv::make(n / kVec);
    const int total = rows * static_cast<int>(fd.d);
#pragma unroll 1
    for (int i0 = threadIdx.x; i0 < total; i0 += kBatch * kForwardThreads) {
      uint4 v[kBatch];
      int off[kBatch];
#pragma unroll
      for (int q = 0; q < kBatch; ++q) {
        const int i = i0 + q * kForwardThreads;
        if (i < total) {
          uint32_t col;
          const int r = static_cast<int>(fd.divmod(static_cast<uint32_t>(i), col));
          v[q] = __ldcg(reinterpret_cast<const uint4*>(src + r * src_ld) + col);
          off[q] = r * ldd + static_cast<int>(col) * kVec;
        }
      }
#pragma unroll
      for (int q = 0; q < kBatch; ++q) {
        const int i = i0 + q * kForwardThreads;
        if (i < total) *reinterpret_cast<uint4*>(dst + off[q]) = ROUND ? round_tf32_4(v[q]) : v[q];
      }
    }
  } else {
    // [sass-path:unaligned:begin] (rows that are not 16-byte vectors)
    const int total = rows * n;
    for (int i = threadIdx.x; i < total; i += kForwardThreads) {
      const int r = i / n;
      const int c = i - r * n;
      T v = ld_cg(src + r * src_ld + c);
      if (ROUND) v = from_f<T>(round_tf32(to_f(v)));
      dst[static_cast<int64_t>(r) * ldd + c] = v;
    }
    // [sass-path:unaligned:end]
  }
}

// The gather's copy of `rows` rows (as load_rows): issued as cp.async.cg
// 16-byte copies when the source allows it and nothing is rounded -- they
// land by the caller's cp_async_wait(0) -- else through registers (done on
// return). The shared rows are 16-byte aligned (ForwardConfig::ld).
// `per_row`: FastDiv by n / (16 / sizeof(T)) (the step loop's, made before it).
template <typename T, bool ROUND>
FRNN_DEVICE void issue_rows(T* dst, int ldd, const T* src, int64_t src_ld, int rows, int n,
                            const FastDiv& per_row) {
  constexpr int kVec = 16 / sizeof(T);
  const bool vec = (reinterpret_cast<uintptr_t>(src) % 16 == 0) && (src_ld % kVec == 0) &&
                   (n % kVec == 0);
  if (ROUND) {  // (TF32: rounded on the way, through registers)
    load_rows<T, ROUND>(dst, ldd, src, src_ld, rows, n, &per_row);
    return;
  }
  if (!vec) {
    // [sass-path:unaligned:begin] (rows that are not 16-byte vectors)
    load_rows<T, ROUND>(dst, ldd, src, src_ld, rows, n, &per_row);
    return;
    // [sass-path:unaligned:end]
  }
  const int total = rows * static_cast<int>(per_row.d);
#pragma unroll 1
  for (int i = threadIdx.x; i < total; i += kForwardThreads) {
    uint32_t c;
    const int r = static_cast<int>(per_row.divmod(static_cast<uint32_t>(i), c));
    cp_async16(dst + r * ldd + static_cast<int>(c) * kVec, src + r * src_ld + c * kVec);
  }
}

// ------------------------------------------------------------ the GEMM

// Warp work item `it` -> (m tile, n tile, K split); the K range in 16-tiles
// and the first column of its part (x part at 0, h part at kx_pad).
struct WorkItem {
  int mt, nt, split, kt0, kt1, col;
};

FRNN_DEVICE WorkItem work_item(const ForwardConfig& c, int it, int kt_x_layer, int kt_h) {
  const int splits = c.x_splits + c.h_splits;
  const int nts = c.batch_tile / kTile;
  WorkItem w;
  w.split = it % splits;
  const int mn = it / splits;
  w.nt = mn % nts;
  w.mt = mn / nts;
  if (w.split < c.x_splits) {
    w.kt0 = w.split * c.k_chunk;
    w.kt1 = min(kt_x_layer, w.kt0 + c.k_chunk);  // layers with narrower input skip zero tiles
    w.col = 0;
  } else {
    w.kt0 = (w.split - c.x_splits) * c.k_chunk;
    w.kt1 = min(kt_h, w.kt0 + c.k_chunk);
    w.col = c.kx_pad;
  }
  return w;
}

// Where item results go: part[split][n][m] (column-major per split) so the
// epilogue reads consecutive gate rows for consecutive units: no bank conflicts.
FRNN_DEVICE float* part_tile(float* part, const ForwardConfig& c, const WorkItem& w) {
  return part + (static_cast<int64_t>(w.split) * c.batch_tile + w.nt * kTile) * c.m_pad +
         w.mt * kTile;
}

// ---- tensor cores: the weights as mma.sync A fragments (mma_frag.cuh)

// A tensor-core work item (forward_params.h): its first row tile (of
// c.m_group), K chunk (x chunks first), first K tile, weight tiles in this
// layer (K tiles x m_group; a layer with a narrower input has shorter or
// empty x chunks) and first column in the X tile. Its tile j is (K tile
// kt0 + j / m_group, row tile mt + j % m_group).
struct FragItem {
  int mt, split, kt0, nk, col;
};

FRNN_DEVICE FragItem frag_item(const ForwardConfig& c, int it, int kt_x_layer, int kt_h) {
  const int splits = c.x_splits + c.h_splits;
  FragItem w;
  w.split = it % splits;
  w.mt = it / splits * c.m_group;
  int kts;
  if (w.split < c.x_splits) {
    w.kt0 = w.split * c.k_chunk;
    const int end = min(kt_x_layer, w.kt0 + c.k_chunk);
    kts = end > w.kt0 ? end - w.kt0 : 0;
    w.col = 0;
  } else {
    w.kt0 = (w.split - c.x_splits) * c.k_chunk;
    kts = min(kt_h, w.kt0 + c.k_chunk) - w.kt0;
    w.col = c.kx_pad;
  }
  w.nk = kts * c.m_group;
  return w;
}

// This CTA's weights as the GEMM's A operand: gate row r = g * U + u (unit
// u0 + u), column k of the x part (W_ih) or of the h part (W_hh); 0 for
// padding rows and columns.
template <typename T>
struct WeightRows {
  const T* wih;
  const T* whh;
  int U, uc, G, H, in_l, u0;
  FRNN_DEVICE T at(int r, bool x_part, int k) const {
    const int g = r / U, u = r - g * U;
    if (g >= G || u >= uc) return from_f<T>(0.0f);
    const int64_t row = static_cast<int64_t>(g) * H + u0 + u;
    if (x_part) return k < in_l ? ld_cg(wih + row * in_l + k) : from_f<T>(0.0f);
    return k < H ? ld_cg(whh + row * H + k) : from_f<T>(0.0f);
  }
};

// An operand's register bits: 16-bit raw, or fp32 rounded to TF32.
FRNN_DEVICE uint32_t operand_bits(__half v) { return __half_as_ushort(v); }
FRNN_DEVICE uint32_t operand_bits(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }
FRNN_DEVICE uint32_t operand_bits(float v) { return __float_as_uint(round_tf32(v)); }

// This lane's kRegsPerTile registers of the weight tile (row tile mt, K tile
// kt of the x or h part), in the layout of frag_a_coord.
template <typename T, bool TF32>
FRNN_DEVICE void load_weight_fragment(uint32_t* regs, const WeightRows<T>& w, int mt, bool x_part,
                                      int kt, int lane) {
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const FragCoord f = frag_a_coord<TF32>(lane, e);
    const uint32_t v = operand_bits(w.at(mt * kTile + f.row, x_part, kt * kTile + f.col));
    if (TF32) regs[e] = v;
    else if (e % 2 == 0) regs[e / 2] = v;
    else regs[e / 2] |= v << 16;
  }
}

// The activations' B fragments of the X tile's K columns [k, k + 16), for
// column tile n8 (and n8 + 1 if `two`), from shared memory with ldmatrix (X
// rows are batch rows, K contiguous: the column-major B operand).
//   16-bit: matrix i = column tile n8 + i / 2, K half i % 2; registers 0, 1
//           are tile n8's fragment, 2, 3 tile n8 + 1's.
//   TF32:   per column tile n, one .x4 whose matrix i holds K columns
//           [k + 4i, + 4) of its 8 rows: registers 4n + 0, 1 are the first
//           m16n8k8 step's fragment, 4n + 2, 3 the second's.
template <typename T, bool TF32>
FRNN_DEVICE void load_b(uint32_t* b, const T* sx, int ld, int n8, int k, bool two, int lane) {
  if constexpr (TF32) {
    for (int n = 0; n < 2; ++n) {
      if (n == 1 && !two) break;
      ldmatrix_x4(b + 4 * n, sx + static_cast<int64_t>((n8 + n) * 8 + lane % 8) * ld + k +
                                 4 * (lane / 8));
    }
  } else {
    const int i = (lane / 8) & (two ? 3 : 1);
    const T* row = sx + static_cast<int64_t>((n8 + i / 2) * 8 + lane % 8) * ld + k + 8 * (i % 2);
    if (two) ldmatrix_x4(b, row);
    else ldmatrix_x2(b, row);
  }
}

// acc[n] += A * B[n] for the column tiles loaded by load_b (A: one weight
// tile's kRegsPerTile fragment registers).
template <typename T, bool TF32>
FRNN_DEVICE void mma_b(float (&acc)[2][4], const uint32_t* a, const uint32_t* b, bool two) {
  if constexpr (TF32) {
    for (int n = 0; n < 2; ++n) {
      if (n == 1 && !two) break;
      mma_1688_tf32(acc[n], a, b + 4 * n);
      mma_1688_tf32(acc[n], a + 4, b + 4 * n + 2);
    }
  } else {
    mma_16816<T>(acc[0], a, b);
    if (two) mma_16816<T>(acc[1], a, b + 2);
  }
}

// Tensor-core GEMM of one batch tile (nbv real rows): each warp runs its work
// items; an item multiplies its weight tiles -- the first ones from
// registers (`wreg`, the warp's first item only), the rest from shared
// memory (`sw`, one 16-byte load per quad) -- with every column tile of the
// X tile, each X element read once per warp (and used for the item's
// m_group row tiles), and writes its partial sums. Two accumulator sets:
// m_group 1, even / odd K tiles (halves the dependent-MMA chain); m_group 2,
// one per row tile.
// `first_off`: frag_tile_offset of the warp's first item (hoisted out of the loop).
template <typename T, bool TF32, int NREG>
FRNN_DEVICE void gemm_fragments(const uint32_t* wreg, const unsigned char* sw, const T* sx,
                                float* part, const ForwardConfig& c, int kt_x_layer, int kt_h,
                                int nbv, int first_off) {
  // [sass-path:generic-gemm:begin]
  constexpr int kRegs = kRegsPerTile<TF32>;
  constexpr int64_t kTileBytes = kTile * kTile * sizeof(T);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int items = frag_items(c);
  const bool pair = c.m_group == 2;
  const int n8_count = (nbv + 7) / 8;  // column tiles holding a real batch row
  for (int it = warp; it < items; it += kForwardWarps) {
    const FragItem w = frag_item(c, it, kt_x_layer, kt_h);
    const int reg_cfg = item_reg_tiles(c, it);
    const int nreg = min(reg_cfg, w.nk);
    // shared tile j (j >= reg_cfg) of this item: tile base + j, this lane's quads
    const int base =
        (it < kForwardWarps ? first_off : static_cast<int>(frag_tile_offset(c, it))) - reg_cfg;
    const unsigned char* ws = sw + lane * 16;
    const int k0 = w.col + w.kt0 * kTile;
    // the X columns of tile j
    auto k_of = [&](int j) { return k0 + (pair ? j / 2 : j) * kTile; };
    for (int n8 = 0; n8 < n8_count; n8 += 2) {
      const bool two = n8 + 1 < n8_count;
      float acc[2][2][4];  // [K tile parity, or row tile of the pair][column tile][register]
#pragma unroll
      for (int q = 0; q < 16; ++q) acc[q / 8][(q / 4) % 2][q % 4] = 0.0f;
      uint32_t b[TF32 ? 8 : 4];
#pragma unroll
      for (int j = 0; j < NREG; ++j) {
        if (j < nreg) {
          // m_group 2: tiles 2i and 2i + 1 are one K tile's two row tiles
          if (!pair || j % 2 == 0) load_b<T, TF32>(b, sx, c.ld, n8, k_of(j), two, lane);
          mma_b<T, TF32>(acc[j % 2], wreg + j * kRegs, b, two);
        }
      }
      auto shared_tile = [&](int j, uint32_t* a) {
#pragma unroll
        for (int q = 0; q < kRegs / 4; ++q) {
          const uint4 v = lds128(ws + (base + j) * static_cast<int>(kTileBytes) + q * 512);
          a[4 * q] = v.x;
          a[4 * q + 1] = v.y;
          a[4 * q + 2] = v.z;
          a[4 * q + 3] = v.w;
        }
      };
      // (nreg is even when pair: register tiles end at a K tile's boundary)
      // (one A fragment live at a time: the registers are nearly all taken)
      int j = nreg;
      for (; j + 1 < w.nk; j += 2) {
        uint32_t a[kRegs];
        shared_tile(j, a);
        load_b<T, TF32>(b, sx, c.ld, n8, k_of(j), two, lane);
        mma_b<T, TF32>(acc[0], a, b, two);
        shared_tile(j + 1, a);
        if (!pair) load_b<T, TF32>(b, sx, c.ld, n8, k_of(j + 1), two, lane);
        mma_b<T, TF32>(acc[1], a, b, two);
      }
      if (j < w.nk) {  // (m_group 1 only: an odd count)
        uint32_t a[kRegs];
        shared_tile(j, a);
        load_b<T, TF32>(b, sx, c.ld, n8, k_of(j), two, lane);
        mma_b<T, TF32>(acc[0], a, b, two);
      }
      // partial sums part[split][n][m], in the accumulator's layout
#pragma unroll
      for (int n = 0; n < 2; ++n) {
        if (n == 1 && !two) break;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const FragCoord f = frag_c_coord(lane, i);
          const int64_t col = static_cast<int64_t>(w.split) * c.batch_tile + (n8 + n) * 8 + f.col;
          float* dst = part + col * c.m_pad + w.mt * kTile + f.row;
          if (pair) {
            dst[0] = acc[0][n][i];
            dst[kTile] = acc[1][n][i];
          } else {
            dst[0] = acc[0][n][i] + acc[1][n][i];
          }
        }
      }
    }
  }
  // [sass-path:generic-gemm:end]
}

// ---- the lean GEMM: a warp's one work item with its trip counts known at compile time
//
// The plans the planner picks for the common shapes give every warp at most one work item
// of NT weight tiles (frag_items <= 8; NT = k_chunk * m_group), the first NREG =
// min(register tiles, NT) of them in registers. Where NT is one of kLeanTiles (16, 32:
// bf16 / TF32 H=512 stacks on an H100 / H200 at every batch; H=256 at small batch) and
// the item is full length in its layer, it runs fully unrolled, without a run-time
// guard per tile:
//   - the activations' B fragments of 2 K tiles are loaded (ldmatrix) before the MMAs
//     that use them, and the next 2's while those MMAs run (two buffers): all of them
//     at once would take 64-128 more registers than the weight tiles leave;
//   - a shared-memory weight tile is loaded one tile ahead of its MMA;
//   - 4 independent accumulator chains (TF32: 2): (row tile of the pair) x (column
//     tile) x (K parity), as many parities as it takes;
//   - one store of the partial sums per register; the sum over the K splits is the
//     epilogue's one cross-warp reduction.
// Any other item (more than 8 per CTA, another length) runs gemm_fragments.
// (kLeanTilesLong / Short and lean_item(): forward_params.h)
constexpr int lean_regs(int nreg, int nt) { return nreg < nt ? nreg : nt; }

// One column-tile group (TWO: tiles n8, n8 + 1; else n8 only) of the warp's item.
// `brow`: this lane's ldmatrix row address of K tile 0 (load_b's addressing, hoisted);
// `ws`: this lane's 16 bytes of shared weight tile 0 of the item (tile j at j * kTileBytes).
template <typename T, bool TF32, int NREG, int NT, int MG, bool TWO>
FRNN_DEVICE void gemm_lean_columns(const uint32_t* wreg, const unsigned char* ws, const T* brow,
                                   int ld, float* dst, int m_pad, int lane) {
  // [sass-path:lean-gemm:begin] (benchmarks/sass_report.py counts each instantiation apart)
  constexpr int kRegs = kRegsPerTile<TF32>;
  constexpr int kTileBytes = kTile * kTile * sizeof(T);
  constexpr int KT = NT / MG;             // K tiles
  constexpr int NC = TWO ? 2 : 1;         // column tiles
  // independent accumulator chains: 4 (TF32: 2, each MMA two dependent k8 steps; the
  // registers are nearly all taken)
  constexpr int kChains = TF32 ? 2 : 4;
  constexpr int NPAR = kChains / (MG * NC) > 1 ? kChains / (MG * NC) : 1;  // K parities
  constexpr int BR = TF32 ? 4 * NC : 2 * NC;                    // B registers per K tile
  constexpr int PF = 2;                   // K tiles per prefetch group
  constexpr int GROUPS = (KT + PF - 1) / PF;
  static_assert(NT % MG == 0 && NREG <= NT, "a full item");
  float acc[NPAR][MG][NC][4];
#pragma unroll
  for (int q = 0; q < NPAR * MG * NC * 4; ++q) (&acc[0][0][0][0])[q] = 0.0f;
  uint32_t b[2][PF][BR];
  auto load_group = [&](int g, uint32_t (&dstb)[PF][BR]) {
#pragma unroll
    for (int i = 0; i < PF; ++i) {
      const int kt = g * PF + i;
      if (kt < KT) {
        const T* row = brow + kt * kTile;
        if constexpr (TF32) {
          ldmatrix_x4(dstb[i], row);
          if (TWO) ldmatrix_x4(dstb[i] + 4, row + 8 * ld);
        } else if (TWO) {
          ldmatrix_x4(dstb[i], row);
        } else {
          ldmatrix_x2(dstb[i], row);
        }
      }
    }
  };
  // a shared-memory A tile, one tile ahead of its MMA
  uint32_t ash[2][kRegs];
  auto load_shared = [&](int j, uint32_t (&a)[kRegs]) {
#pragma unroll
    for (int q = 0; q < kRegs / 4; ++q) {
      const uint4 v = lds128(ws + j * kTileBytes + q * 512);
      a[4 * q] = v.x;
      a[4 * q + 1] = v.y;
      a[4 * q + 2] = v.z;
      a[4 * q + 3] = v.w;
    }
  };
  if (NREG < NT && NREG == 0) load_shared(0, ash[0]);
  load_group(0, b[0]);
#pragma unroll
  for (int g = 0; g < GROUPS; ++g) {
    if (g + 1 < GROUPS) load_group(g + 1, b[(g + 1) % 2]);
#pragma unroll
    for (int i = 0; i < PF; ++i) {
      const int kt = g * PF + i;
      if (kt < KT) {
#pragma unroll
        for (int r = 0; r < MG; ++r) {
          const int j = kt * MG + r;
          if (j + 1 >= NREG && j + 1 < NT) load_shared(j + 1, ash[(j + 1) % 2]);
          const uint32_t* a = j < NREG ? wreg + j * kRegs : ash[j % 2];
          float (&c)[NC][4] = acc[kt % NPAR][r];
          if constexpr (TF32) {
#pragma unroll
            for (int n = 0; n < NC; ++n) {
              mma_1688_tf32(c[n], a, b[g % 2][i] + 4 * n);
              mma_1688_tf32(c[n], a + 4, b[g % 2][i] + 4 * n + 2);
            }
          } else {
#pragma unroll
            for (int n = 0; n < NC; ++n) mma_16816<T>(c[n], a, b[g % 2][i] + 2 * n);
          }
        }
      }
    }
  }
  // partial sums part[split][n][m] (dst: this item's split, column tile n8, row tile mt)
#pragma unroll
  for (int r = 0; r < MG; ++r)
#pragma unroll
    for (int n = 0; n < NC; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float v = acc[0][r][n][i];
#pragma unroll
        for (int q = 1; q < NPAR; ++q) v += acc[q][r][n][i];
        const FragCoord f = frag_c_coord(lane, i);
        dst[(n * 8 + f.col) * m_pad + r * kTile + f.row] = v;
      }
  // [sass-path:lean-gemm:end]
}

// The warp's item (see above) over every column tile of the batch tile (nbv real rows).
// `k0`: the item's first X column; `dst_off`: its partial sums' offset in `part` (split,
// row tile); `first_off`: frag_tile_offset of the item (its shared tiles follow NREG
// register ones).
template <typename T, bool TF32, int NREG, int NT, int MG>
FRNN_DEVICE void gemm_lean(const uint32_t* wreg, const unsigned char* sw, const T* sx,
                           float* part, int ld, int m_pad, int k0, int dst_off, int first_off,
                           int nbv) {
  constexpr int kTileBytes = kTile * kTile * sizeof(T);
  const int lane = threadIdx.x % 32;
  // shared tile j (j >= NREG) of the item: tile first_off + j - NREG
  const unsigned char* ws0 = sw + lane * 16 + (first_off - NREG) * kTileBytes;
  float* const dst0 = part + dst_off;
  const int n8_count = (nbv + 7) / 8;
  // this lane's ldmatrix row (load_b's addressing): 16-bit, matrix i = lane / 8 is column
  // tile i / 2 (i % 2 with one column tile), K half i % 2; TF32, K columns 4 i of column
  // tile 0's row lane % 8 (column tile 1: 8 rows further)
  const int i = lane / 8;
  int n8 = 0;
  for (; n8 + 1 < n8_count; n8 += 2) {
    const T* brow = TF32 ? sx + (n8 * 8 + lane % 8) * ld + k0 + 4 * i
                         : sx + ((n8 + i / 2) * 8 + lane % 8) * ld + k0 + 8 * (i % 2);
    gemm_lean_columns<T, TF32, NREG, NT, MG, true>(wreg, ws0, brow, ld,
                                                           dst0 + n8 * 8 * m_pad, m_pad, lane);
  }
  if (n8 < n8_count) {
    const T* brow = TF32 ? sx + (n8 * 8 + lane % 8) * ld + k0 + 4 * i
                         : sx + (n8 * 8 + lane % 8) * ld + k0 + 8 * (i % 2);
    gemm_lean_columns<T, TF32, NREG, NT, MG, false>(wreg, ws0, brow, ld,
                                                            dst0 + n8 * 8 * m_pad, m_pad, lane);
  }
}

// gemm_lean for the plan's row tiles per item (1 or 2).
template <typename T, bool TF32, int NREG, int NT>
FRNN_DEVICE void gemm_lean_any(int m_group, const uint32_t* wreg, const unsigned char* sw,
                               const T* sx, float* part, int ld, int m_pad, int k0, int dst_off,
                               int first_off, int nbv) {
  if (m_group == 2)
    gemm_lean<T, TF32, NREG, NT, 2>(wreg, sw, sx, part, ld, m_pad, k0, dst_off, first_off, nbv);
  else
    gemm_lean<T, TF32, NREG, NT, 1>(wreg, sw, sx, part, ld, m_pad, k0, dst_off, first_off, nbv);
}

// Exact fp32 GEMM (float32 without TF32): same work items; lane -> row
// lane % 16 and 8 batch columns, float4 loads along K (conflict-free: rows
// are 16 bytes apart modulo 128).
FRNN_DEVICE void gemm_fp32_fma(const float* sw, const float* sx, float* part,
                               const ForwardConfig& c, int kt_x_layer, int kt_h) {
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int m = lane % 16;
  const int n0 = (lane / 16) * 8;
  const int items = (c.m_pad / kTile) * (c.batch_tile / kTile) * (c.x_splits + c.h_splits);
  for (int it = warp; it < items; it += kForwardWarps) {
    const WorkItem w = work_item(c, it, kt_x_layer, kt_h);
    float acc[8];
#pragma unroll
    for (int q = 0; q < 8; ++q) acc[q] = 0.0f;
    const float* a = sw + static_cast<int64_t>(w.mt * kTile + m) * c.ld + w.col;
    const float* b = sx + static_cast<int64_t>(w.nt * kTile + n0) * c.ld + w.col;
    const int k_end = w.kt1 * kTile;
    for (int k = w.kt0 * kTile; k < k_end; k += 4) {
      const float4 av = *reinterpret_cast<const float4*>(a + k);
#pragma unroll
      for (int q = 0; q < 8; ++q) {
        const float4 bv = *reinterpret_cast<const float4*>(b + static_cast<int64_t>(q) * c.ld + k);
        acc[q] = fmaf(av.x, bv.x, acc[q]);
        acc[q] = fmaf(av.y, bv.y, acc[q]);
        acc[q] = fmaf(av.z, bv.z, acc[q]);
        acc[q] = fmaf(av.w, bv.w, acc[q]);
      }
    }
    float* out = part_tile(part, c, w);
#pragma unroll
    for (int q = 0; q < 8; ++q) out[static_cast<int64_t>(n0 + q) * c.m_pad + m] = acc[q];
  }
}

// ------------------------------------------------------------ the kernel

template <CellKind CELL> constexpr int kGates = CELL == CellKind::kLSTM ? 4
                                              : CELL == CellKind::kGRU  ? 3 : 1;

template <typename T, CellKind CELL, bool TF32, SyncPolicy SYNC>
__global__ void __launch_bounds__(kForwardThreads, 1)
rnn_forward_kernel(const __grid_constant__ ForwardParams p) {
  static_assert(SYNC == SyncPolicy::kGrid || SYNC == SyncPolicy::kFlags ||
                    SYNC == SyncPolicy::kCluster,
                "a resolved policy");
  // kCluster: the flags kernel with the recurrence in a cluster (its own instantiation,
  // 16-bit only, so that the other kernels' code and registers stay as they are)
  constexpr bool kFlags = SYNC == SyncPolicy::kFlags || SYNC == SyncPolicy::kCluster;
  constexpr int G = kGates<CELL>;
  constexpr bool kRound = TF32;  // keep TF32 operands pre-rounded in shared memory
  // bf16 with fast_tanh (opt-in): the hardware's tanh in the epilogue (gate_math.h)
  constexpr bool kFastAct = std::is_same<T, __nv_bfloat16>::value;
  const bool fast_act = kFastAct && p.cfg.fast_tanh;
  // Tensor cores: weights as mma.sync fragments, kNReg tiles per warp in
  // registers (the planner's cfg.reg_tiles; the launcher checks they agree).
  constexpr bool kFrag = !(sizeof(T) == 4 && !TF32);
  constexpr int kNReg = kFrag ? (TF32 ? kRegTilesTf32 : kRegTiles16) : 0;
  FRNN_DECLARE_DYNAMIC_SMEM(smem);
  const ForwardConfig& c = p.cfg;
  const SmemLayout lay = smem_layout(c, SYNC == SyncPolicy::kCluster);
  T* const sw = reinterpret_cast<T*>(smem + lay.w);  // FP32 FMA: (m_pad, ld) rows
  T* const sx = reinterpret_cast<T*>(smem + lay.x);
  float* const part = reinterpret_cast<float*>(smem + lay.part);
  float* const bias_x = reinterpret_cast<float*>(smem + lay.bias);
  float* const bias_h = bias_x + c.m_pad;
  // fp32 state [row * U + u]: all B rows (state_resident) or this tile's rows
  float* const s_h = reinterpret_cast<float*>(smem + lay.state);
  float* const s_c = s_h + c.state_rows * c.units_per_cta;
  int* const s_valid = reinterpret_cast<int*>(smem + lay.valid);      // [bl]
  float* const s_xp = reinterpret_cast<float*>(smem + lay.xp);        // [bl * m_pad + row]

  const int H = p.hidden;
  const int D = p.num_dirs;
  const int L = p.num_layers;
  const int64_t B = p.batch;
  const int64_t T_len = p.seq_len;
  const int U = c.units_per_cta;
  const int C = c.ctas_per_dir;
  // ring slots (the planner's c.ring; the launcher checks): a power of two
  constexpr int R = kFlags ? kRingFlags : kRingGrid;
  static_assert((R & (R - 1)) == 0, "ring slots: a power of two");
  const int ld_id = blockIdx.x / C;  // (layer, direction) row l * D + d
  const int slice = blockIdx.x - ld_id * C;
  const int layer = ld_id / D;
  const int dir = ld_id - layer * D;
  const int u0 = slice * U;
  const int uc = min(U, H - u0);  // units of this CTA (the last slice may have fewer)
  const int in_l = layer == 0 ? p.input_size : D * H;
  // Layer 0 with its input projection done before the launch has no x part.
  const bool x_proj = layer == 0 && c.x_proj;
  const int kt_x_layer = x_proj ? 0 : (in_l + kTile - 1) / kTile;
  const int kt_h = c.kh_pad / kTile;
  const bool bidir = D == 2;
  // Per-phase timing (FRNN_PHASE_TIMING builds only; otherwise every rec.*
  // call is empty): unit slice 0 of each layer-direction records.
  // Its state lives in shared memory: the weights hold most registers.
  static_assert(kPhaseStateWords == 8, "smem_layout's phase region holds 8 int64");
  // (lay.phase == 0: the first bytes of the dynamic shared memory.)
  PhaseRecorderT<true> rec(p.phase_buf, p.phase_cap, slice == 0 ? ld_id : -1, kPhaseKindForward,
                           L, D, T_len);

  // ---- prologue: zero the tiles (padding must be 0, not stale NaNs), then
  // load this CTA's weight rows and biases once for the whole launch.
  {
    uint4* z = reinterpret_cast<uint4*>(smem + lay.w);
    const int64_t n16 = (lay.part - lay.w) / 16;  // the w and x regions (not the recorder's)
    for (int64_t i = threadIdx.x; i < n16; i += kForwardThreads) z[i] = make_uint4(0, 0, 0, 0);
  }
  __syncthreads();
  // Tensor cores: this warp's register tiles (of its first work item), kept
  // for the whole launch, and every item's remaining tiles in shared memory.
  uint32_t wreg[kNReg > 0 ? kNReg * kRegsPerTile<TF32> : 1];
#pragma unroll
  for (int i = 0; i < (kNReg > 0 ? kNReg * kRegsPerTile<TF32> : 1); ++i) wreg[i] = 0;
  int first_off = 0;  // frag_tile_offset of the warp's first item (< 2^31: shared-memory tiles)
  // This warp's GEMM per step: kGemmGeneric gemm_fragments, kGemmLean gemm_lean (its one
  // item of lean_nt tiles), kGemmNone nothing (an x item of layer 0 whose input was
  // projected before the launch: the epilogue reads no x part).
  constexpr int kGemmGeneric = 0, kGemmLean = 1, kGemmNone = 2;
  int gemm_kind = kGemmGeneric;
  int lean_nt = 0;
  int lean_k0 = 0, lean_dst = 0;  // gemm_lean's first X column and partial-sum offset
  if constexpr (kFrag) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const WeightRows<T> wr{static_cast<const T*>(p.w_ih[ld_id]),
                           static_cast<const T*>(p.w_hh[ld_id]), U, uc, G, H, in_l, u0};
    const int items = frag_items(c);
    if (warp < items) {
      first_off = static_cast<int>(frag_tile_offset(c, warp));
      const FragItem w = frag_item(c, warp, kt_x_layer, kt_h);
      const int nreg = min(item_reg_tiles(c, warp), w.nk);
      if (lean_item(c, warp)) {
        // (a full-length item in this layer: its tiles in registers are min(kNReg, nk))
        if (w.nk == item_tiles(c, warp)) {
          gemm_kind = kGemmLean;
          lean_nt = w.nk;
          lean_k0 = w.col + w.kt0 * kTile;
          lean_dst = (w.split * c.batch_tile) * c.m_pad + w.mt * kTile;
        } else if (x_proj && w.split < c.x_splits) {
          gemm_kind = kGemmNone;
        }
      }
#pragma unroll
      for (int j = 0; j < kNReg; ++j)
        if (j < nreg)
          load_weight_fragment<T, TF32>(wreg + j * kRegsPerTile<TF32>, wr, w.mt + j % c.m_group,
                                        w.split < c.x_splits, w.kt0 + j / c.m_group, lane);
    }
    unsigned char* const swb = smem + lay.w;
    for (int it = warp; it < items; it += kForwardWarps) {
      const FragItem w = frag_item(c, it, kt_x_layer, kt_h);
      const int reg_cfg = item_reg_tiles(c, it);
      const int64_t base = frag_tile_offset(c, it) - reg_cfg;
      for (int j = min(reg_cfg, w.nk); j < w.nk; ++j) {
        uint32_t regs[kRegsPerTile<TF32>];
        load_weight_fragment<T, TF32>(regs, wr, w.mt + j % c.m_group, w.split < c.x_splits,
                                      w.kt0 + j / c.m_group, lane);
        uint4* dst = reinterpret_cast<uint4*>(swb + (base + j) * kTile * kTile * sizeof(T));
#pragma unroll
        for (int q = 0; q < kRegsPerTile<TF32> / 4; ++q)
          dst[q * 32 + lane] = make_uint4(regs[4 * q], regs[4 * q + 1], regs[4 * q + 2], regs[4 * q + 3]);
      }
    }
  }
  {
    const T* wih = static_cast<const T*>(p.w_ih[ld_id]);
    const T* whh = static_cast<const T*>(p.w_hh[ld_id]);
    for (int g = 0; g < G && !kFrag; ++g) {
      const int64_t row0 = static_cast<int64_t>(g) * H + u0;
      if (!x_proj)
        load_rows<T, kRound>(sw + static_cast<int64_t>(g) * U * c.ld, c.ld, wih + row0 * in_l,
                             in_l, uc, in_l);
      load_rows<T, kRound>(sw + static_cast<int64_t>(g) * U * c.ld + c.kx_pad, c.ld,
                           whh + row0 * H, H, uc, H);
    }
    const T* bih = static_cast<const T*>(p.b_ih[ld_id]);
    const T* bhh = static_cast<const T*>(p.b_hh[ld_id]);
    for (int r = threadIdx.x; r < c.m_pad; r += kForwardThreads) {
      const int g = r / U, u = r - g * U;
      const bool real = g < G && u < uc;
      const int64_t w_row = static_cast<int64_t>(g) * H + u0 + u;
      bias_x[r] = real && bih ? to_f(bih[w_row]) : 0.0f;
      bias_h[r] = real && bhh ? to_f(bhh[w_row]) : 0.0f;
    }
  }
  // The step loop's divisors (FastDiv), made once: in the 64 bytes after the phase
  // recorder's state (smem_layout: the weights start at 128).
  constexpr int kVec = 16 / sizeof(T);
  FastDiv* const fdiv = reinterpret_cast<FastDiv*>(smem + kStepDivisorsOffset);
  if (threadIdx.x == 0) {
    fdiv[0] = FastDiv::make(static_cast<uint32_t>(uc));                    // units
    fdiv[1] = FastDiv::make(static_cast<uint32_t>(G * uc));                // x_proj rows
    fdiv[2] = FastDiv::make(static_cast<uint32_t>(in_l >= kVec ? in_l / kVec : 1));  // x row, 16 B
    fdiv[3] = FastDiv::make(static_cast<uint32_t>(H >= kVec ? H / kVec : 1));     // h row, 16 B
    // the recurrence in a cluster: a step's pushes, (peer, row, chunk) -> peer, (row, chunk)
    if constexpr (SYNC == SyncPolicy::kCluster)
      fdiv[4] = FastDiv::make(static_cast<uint32_t>(B * (U / 8)));
  }
  // The epilogue's lanes per (unit, batch row) pair: as many as keep all 256 threads of
  // one round busy. eg_lanes >= G (a power of two): lane q of a pair's group reads the
  // partial sums of gate q / e_spl, splits q % e_spl (+ e_spl, ...), and the gate's
  // lanes reduce them with shuffles (e_spl: a power of two <= 8); eg_lanes = 1 (when the
  // pairs fill the CTA without help, from 256 / G pairs per tile on): one thread per pair.
  const int e_xs = x_proj ? 0 : c.x_splits;  // x splits read (projected: none)
  const int e_reads = e_xs + c.h_splits;
  const int e_pairs = uc * static_cast<int>(min(B, static_cast<int64_t>(c.batch_tile)));
  int e_spl = 1, eg_lanes = 1;
  {
    int full = 1;  // lanes for every (gate, split) of a pair
    while (full < e_reads && full < 8) full *= 2;
    for (int spl = full; spl >= 1; spl /= 2) {
      int lanes = 1;
      while (lanes < G * spl) lanes *= 2;
      if (static_cast<int64_t>(lanes) * e_pairs <= kForwardThreads || spl == 1) {
        e_spl = spl;
        eg_lanes = lanes;
        break;
      }
    }
    if (static_cast<int64_t>(eg_lanes) * e_pairs > kForwardThreads) eg_lanes = 1;  // (e_spl unused)
  }
  int e_spl_log = 0, eg_log = 0;  // (powers of two: shifts, not divisions, per step)
  while ((1 << e_spl_log) < e_spl) ++e_spl_log;
  while ((1 << eg_log) < eg_lanes) ++eg_log;
  // ---- the recurrence in a cluster (c.cluster_rec; kFlags, sm_90, 16-bit, B <= NB,
  // U a power of two >= 8: the planner's plan_cluster_rec). The C CTAs of this
  // (layer, direction) are one cluster, rank = slice. Two X tiles: step k reads
  // tile k & 1. In step k's epilogue each CTA writes its units' h_t into the h part
  // of its own tile (k + 1) & 1, then (after the CTA barrier) pushes those 16-byte
  // chunks -- B rows x ceil(uc / 8) -- into the same place of every peer's tile with
  // st.async, each signalling (complete_tx) the peer's mbarrier bar[(k + 1) & 1].
  // In step k (k >= 1) thread 0 announces, with the gather, the bytes it expects
  // from its C - 1 peers on bar[k & 1] (arrive.expect_tx: the barrier's one
  // arrival); after the gather's CTA barrier, the warps whose items multiply part
  // of the h part wait for the phase (every lane: acquire at cluster scope) while
  // the x part's warps multiply. Bar b's n-th phase serves step 2n + 2 - b, so
  // step k waits for parity ((k - 1) >> 1) & 1. Bytes may land before the announcement (the count
  // goes negative; the phase cannot complete without the arrival). Why a peer never
  // writes a tile still being read: its push of step k + 1 (into tile k & 1) comes
  // after its wait at step k + 1, which needed this CTA's push of step k, which this
  // CTA issues after its step k GEMM read tile k & 1. The x part of a tile is this
  // CTA's own (layer 0: the projection, in s_xp). The last step pushes nothing, so
  // every push lands in a CTA that waits for it; the cluster meets once after the
  // mbarrier inits and the tiles' zeroing, and once at the end.
  // (What the step loop needs of it is remade per step from c, or kept in shared
  // memory: the weights hold most registers.)
  constexpr bool cluster_rec = SYNC == SyncPolicy::kCluster;
  int* const s_push_bytes = reinterpret_cast<int*>(smem + kPushBytesOffset);
  if (cluster_rec) {
#if !FRNN_CLUSTER_CODE
    __trap();  // (the planner asks for clusters on sm_90 and later only)
#endif
    if (threadIdx.x == 0) {
      int bytes = 0;  // expected per step from the peers
      for (int sl = 0; sl < C; ++sl)
        if (sl != slice) bytes += static_cast<int>(B) * ((min(U, H - sl * U) + 7) / 8) * 16;
      *s_push_bytes = bytes;
      uint64_t* const hbar = reinterpret_cast<uint64_t*>(smem + lay.bar);
      mbar_init(hbar, 1);
      mbar_init(hbar + 1, 1);
      mbar_init_fence();
    }
  }
  __syncthreads();
  if (cluster_rec) cluster_sync();  // peers' barriers initialised, their tiles zeroed

  const T* const x_in = static_cast<const T*>(p.x);
  const T* const hx = static_cast<const T*>(p.hx);
  const T* const cx = static_cast<const T*>(p.cx);
  T* const hring = static_cast<T*>(p.hring);
  T* const xring = static_cast<T*>(p.xring);
  T* const y = static_cast<T*>(p.y);
  T* const layer_buf = static_cast<T*>(p.layer_buf);
  T* const reserve = static_cast<T*>(p.reserve);
  const int64_t BH = B * H;
  // Bidirectional layer outputs ping-pong between y and layer_buf so that the
  // last layer lands in y: layer l writes y iff (L - 1 - l) is even.
  auto bidir_dest = [&](int l) -> T* { return ((L - 1 - l) % 2 == 0) ? y : layer_buf; };
  // Ring slot of (layer-direction row r, local step k): (R, B, H) per row. The rows this
  // CTA reads and writes every step, made once: its own h ring, the ring it reads its
  // input from (the layer below's h, or its dropped copy).
  auto ring_row = [&](T* ring, int64_t r) -> T* { return ring + r * R * BH; };
  T* const h_ring_own = ring_row(hring, ld_id);
  const T* const x_ring_below =
      layer > 0 && !bidir ? ring_row(p.dropout_active ? xring : hring, layer - 1) : nullptr;
  auto slot_off = [&](int64_t k) -> int64_t { return (k & (R - 1)) * BH; };
  // Without lengths every row is valid at every step: set once.
  if (p.lengths == nullptr)
    for (int bl = threadIdx.x; bl < c.batch_tile; bl += kForwardThreads) s_valid[bl] = 1;

  const int64_t n_steps = bidir ? static_cast<int64_t>(L) * T_len : T_len + L - 1;
  // The wave step of this CTA's local step 0 (phase records are per wave step).
  const int64_t wave0 = bidir ? static_cast<int64_t>(layer) * T_len : layer;
  if constexpr (kFlags) {
    for (int64_t w = 0; w < n_steps; ++w)
      if (w < wave0 || w >= wave0 + T_len) rec.idle_step(w);
  }

  rec.loop_start();
  // grid: every CTA walks all wave steps (idle ones too: grid.sync is collective).
  // flags: a CTA walks its own T steps only.
  const int64_t n_iter = kFlags ? T_len : n_steps;
  // [sass:setup]
  for (int64_t s = 0; s < n_iter; ++s) {
    const int64_t k = kFlags ? s : s - wave0;  // this layer's local step
    const bool active = k >= 0 && k < T_len;
    // This step's X tile and, cluster_rec, the next step's (whose h part this step fills)
    T* const sxk = cluster_rec ? sx + (k & 1) * c.batch_tile * c.ld : sx;
    T* const sxn = cluster_rec ? sx + ((k + 1) & 1) * c.batch_tile * c.ld : sx;
    const bool push = cluster_rec && k + 1 < T_len;
    const int64_t t = dir == 0 ? k : T_len - 1 - k;
    // Layer input rows at time t (row stride in_l) and h_{t-1} rows (stride H).
    const T* xsrc = nullptr;
    const T* hsrc = nullptr;
    T* hdst = nullptr;
    if (active) {
      if (layer == 0) {
        xsrc = x_in + t * B * in_l;
      } else if (bidir) {
        xsrc = bidir_dest(layer - 1) + t * B * in_l;
      } else {
        xsrc = x_ring_below + slot_off(k);
      }
      hsrc = k == 0 ? hx + ld_id * BH : h_ring_own + slot_off(k - 1);
      hdst = h_ring_own + slot_off(k);
    }
    // The x part of a tile's gather: the rows of x_t, or (x_proj) this tile's
    // input pre-activations -- G * uc fp32 per row, written by a kernel that
    // ran before this launch, hence read-only here.
    auto gather_x = [&](int64_t b0, int nbv) {
      if (!x_proj) {
        issue_rows<T, kRound>(sxk, c.ld, xsrc + b0 * in_l, in_l, nbv, in_l, fdiv[2]);
        return;
      }
      // [sass-path:layer0:begin] (the report's plans are for layers >= 1)
      const float* xp = p.xproj[dir] + (t * B + b0) * G * H + u0;
      const FastDiv fd_rows = fdiv[1], fd_u = fdiv[0];
      for (int pi = threadIdx.x; pi < nbv * G * uc; pi += kForwardThreads) {
        uint32_t r, u;
        const int bl = static_cast<int>(fd_rows.divmod(static_cast<uint32_t>(pi), r));
        const int g = static_cast<int>(fd_u.divmod(r, u));
        s_xp[bl * c.m_pad + g * U + static_cast<int>(u)] =
            __ldg(xp + static_cast<int64_t>(bl) * G * H + g * H + u);
      }
      // [sass-path:layer0:end]
    };
    // [sass:gather]
    // Layer 0's input depends on no CTA: its first tile is read before the wait.
    // (lean: every layer's is, between the wait for the layer below and the wait for
    // its own layer's h_{t-1})
    const bool x_early = kFlags && layer == 0;
    if (x_early) {
      // [sass-path:layer0:begin]
      gather_x(0, static_cast<int>(min(static_cast<int64_t>(c.batch_tile), B)));
      // [sass-path:layer0:end]
    }
    // [sass:sync]
    if constexpr (kFlags) {
      // The layer above reads ring slot k % R (hring, or xring with dropout)
      // at its step k - R; it must have finished that step before this one
      // overwrites the slot.
      const int64_t above_target = FRNN_EMU_BREAK == 3 ? k - R : k - R + 1;
      const bool wait_above = !bidir && layer + 1 < L && above_target > 0 && FRNN_EMU_BREAK != 2;
      if (c.lean_sync) {
        // [sass-path:sync-lean:begin]
        // counters: (layer, direction) ld at [ld * kLeanCounterStride], C per step
        // (slots 0, 1: the layer below, or both its directions; 2: the layer above)
        LeanWait first, own;
        if (layer > 0 && !bidir) {
          first.idx0 = layer - 1;
          first.tgt0 = static_cast<int>((k + 1) * C);
        }
        if (layer > 0 && bidir && k == 0) {
          first.idx0 = (layer - 1) * D;
          first.idx1 = (layer - 1) * D + 1;
          first.tgt0 = first.tgt1 = static_cast<int>(T_len * C);
        }
        if (wait_above) {
          first.idx2 = layer + 1;
          first.tgt2 = static_cast<int>(above_target * C);
        }
        own.idx0 = ld_id;
        own.tgt0 = static_cast<int>(k * C);  // (k = 0: nothing)
        if (layer > 0) {
          lean_wait(p.flags, first, kLeanCounterStride);
          // [sass:gather]
          gather_x(0, static_cast<int>(min(static_cast<int64_t>(c.batch_tile), B)));
          // [sass:sync]
        } else {
          own.idx2 = first.idx2;  // layer 0: one wait (its x was issued before it)
          own.tgt2 = first.tgt2;
        }
        lean_wait(p.flags, own, kLeanCounterStride);
        // [sass-path:sync-lean:end]
      } else {
        // [sass-path:sync-flags:begin]
        FlagRange own, below, above;
        if (k > 0 && !cluster_rec) own = FlagRange{ld_id * C, C, static_cast<int>(k)};
        if (layer > 0 && !bidir) below = FlagRange{(layer - 1) * C, C, static_cast<int>(k + 1)};
        if (layer > 0 && bidir && k == 0)
          below = FlagRange{(layer - 1) * D * C, D * C, static_cast<int>(T_len)};
        if (wait_above) above = FlagRange{(layer + 1) * C, C, static_cast<int>(above_target)};
        wait_for_ranges(p.flags, own, below, above, kForwardThreads);
        // [sass-path:sync-flags:end]
      }
      rec.mark(kPhaseBarrier);
    }
    // [sass:gather]
    // the x part issued before a wait (x_early; lean: every layer)
    const bool x_issued = kFlags && (layer == 0 || c.lean_sync);
    if (active) {
      for (int64_t b0 = 0; b0 < B; b0 += c.batch_tile) {
        const int nbv = static_cast<int>(min(static_cast<int64_t>(c.batch_tile), B - b0));
        // 1. gather X: one batch of asynchronous copies (rows >= nbv keep
        //    stale data: they only feed discarded columns) ...
        if (!(x_issued && b0 == 0)) gather_x(b0, nbv);
        // (cluster_rec: h_{t-1} is pushed into the tile by the cluster, from k = 1)
        if (!cluster_rec || k == 0)
          issue_rows<T, kRound>(sxk + c.kx_pad, c.ld, hsrc + b0 * H, H, nbv, H, fdiv[3]);
        cp_async_commit();
        //    ... while this tile's exact fp32 state (owner-only data) is read:
        //    at k = 0 from hx / cx, later from the workspace unless resident.
        const int64_t srow0 = c.state_resident ? b0 : 0;
        if (k == 0 || !c.state_resident) {
          // [sass-path:step0:begin] (resident state: step 0 only)
          const FastDiv fd_u = fdiv[0];
          for (int pi = threadIdx.x; pi < uc * nbv; pi += kForwardThreads) {
            uint32_t u;
            const int bl = static_cast<int>(fd_u.divmod(static_cast<uint32_t>(pi), u));
            const int64_t sidx = ld_id * BH + (b0 + bl) * H + u0 + u;
            const int64_t si = (srow0 + bl) * U + u;
            s_h[si] = k == 0 ? to_f(hx[sidx]) : __ldcg(p.state_h + sidx);
            if constexpr (CELL == CellKind::kLSTM)
              s_c[si] = k == 0 ? to_f(cx[sidx]) : __ldcg(p.state_c + sidx);
          }
          // [sass-path:step0:end]
        }
        if (p.lengths != nullptr) {
          // [sass-path:lengths:begin]
          for (int bl = threadIdx.x; bl < nbv; bl += kForwardThreads)
            s_valid[bl] = t < __ldg(p.lengths + b0 + bl);
          // [sass-path:lengths:end]
        }
        if (cluster_rec && k > 0 && threadIdx.x == 0) {
          // [sass-path:sync-cluster:begin]
          // h_{t-1}: the bytes the peers push into this tile (see "the recurrence in a
          // cluster"), announced here; the warps that multiply the h part wait below
          uint64_t* const bar = reinterpret_cast<uint64_t*>(smem + lay.bar) + (k & 1);
          if (FRNN_EMU_BREAK == 11) mbar_arrive_expect_tx(bar, 0);
          else if (FRNN_EMU_BREAK != 13) mbar_arrive_expect_tx(bar, *s_push_bytes);
          // [sass-path:sync-cluster:end]
        }
        cp_async_wait(0);
        __syncthreads();
        rec.mark(kPhaseGather);
        if (cluster_rec && k > 0) {
          // [sass-path:sync-cluster:begin]
          // Only the warps with h-part work wait for the pushes (acquire at cluster
          // scope, each lane): the x part's warps multiply meanwhile. (A warp's items:
          // it = warp, warp + 8, ...; chunk it % splits, the x chunks first.)
          bool warp_h = !kFrag;
          for (int it = threadIdx.x / 32; it < frag_items(c); it += kForwardWarps)
            if (it % (c.x_splits + c.h_splits) >= c.x_splits) warp_h = true;
          if (warp_h) {
            const int parity = static_cast<int>(((k - 1) >> 1) & 1);
            mbar_wait_bounded(reinterpret_cast<uint64_t*>(smem + lay.bar) + (k & 1),
                              FRNN_EMU_BREAK == 12 ? parity ^ 1 : parity);
          }
          // [sass-path:sync-cluster:end]
        }
        // [sass:gemm]
        // 2. gate pre-activations
        if constexpr (kFrag) {
          if (gemm_kind == kGemmLean) {
            constexpr int kL = kLeanTilesLong, kS = kLeanTilesShort;
            if (lean_nt == kL)
              gemm_lean_any<T, TF32, lean_regs(kNReg, kL), kL>(
                  c.m_group, wreg, smem + lay.w, sxk, part, c.ld, c.m_pad, lean_k0, lean_dst,
                  first_off, nbv);
            else
              gemm_lean_any<T, TF32, lean_regs(kNReg, kS), kS>(
                  c.m_group, wreg, smem + lay.w, sxk, part, c.ld, c.m_pad, lean_k0, lean_dst,
                  first_off, nbv);
          } else if (gemm_kind == kGemmGeneric) {
            gemm_fragments<T, TF32, kNReg>(wreg, smem + lay.w, sxk, part, c, kt_x_layer, kt_h,
                                           nbv, first_off);
          }
        } else {
          gemm_fp32_fma(sw, sxk, part, c, kt_x_layer, kt_h);
        }
        __syncthreads();
        rec.mark(kPhaseGemm);
        // [sass:epilogue]
        // 3. epilogue, per (unit, batch row) pair, units fastest (coalesced stores
        //    of h rows): the sum of the partial sums over the K splits (the GEMM's
        //    one cross-warp reduction) and the biases, the gates' nonlinearities
        //    and the cell update in fp32, the stores. eg_lanes > 1: a group of lanes
        //    per pair (every lane of the CTA takes part in every round: the
        //    shuffles need whole warps; those past the last pair read and write
        //    nothing); lane q sums gate q / e_spl's splits q % e_spl, + e_spl, ...
        //    (x and h apart: GRU's n gate needs them so), the gate's lanes reduce
        //    them with shuffles, its first lane adds the biases and applies the
        //    nonlinearity, the group's lane 0 gathers the gates and updates the
        //    cell, and its last lane draws the dropout bit meanwhile. eg_lanes = 1:
        //    one thread per pair does all of it.
        //    The next tile's gather writes sx (no one reads it after the GEMM) and
        //    the staged state (read here): hence the barrier at the end of the tile.
        {
          const int pairs = uc * nbv;
          const bool last = layer == L - 1;
          const bool drop = !last && p.dropout_active;
          const FastDiv fd_u = fdiv[0];
          // (x, h) partial-sum totals of gate row `row`, batch row bl, over the splits
          // sp0, sp0 + step, ... of the e_reads read (x splits first)
          auto split_sums = [&](int row, int bl, int sp0, int step, float& vx, float& vh) {
            for (int sp = sp0; sp < e_reads; sp += step) {
              const bool xpart = sp < e_xs;
              const int slot = xpart ? sp : sp - e_xs + c.x_splits;
              const float v = part[(slot * c.batch_tile + bl) * c.m_pad + row];
              if (xpart) vx += v;
              else vh += v;
            }
          };
          auto keep_bit = [&](int64_t b, int j) {
            // [sass-path:dropout:begin] (training with dropout only)
            // The seed is read on the device (no host sync, CUDA-graph safe), where
            // it is used: no register holds it across the loop.
            const uint64_t seed = static_cast<uint64_t>(__ldg(p.seed));
            return dropout_keep(seed, p.dropout_threshold, layer, dir, static_cast<uint32_t>(t),
                                static_cast<uint32_t>(b), j);
            // [sass-path:dropout:end]
          };
          // Gate g's activation from its x and h parts (biases included); r: GRU's
          // activated r gate, for its n gate (gate_math.h; fast_act: the hardware tanh)
          auto gate_act = [&](int g, float ax, float ah, float r) -> float {
            if constexpr (CELL == CellKind::kLSTM) return lstm_gate(g, ax + ah, fast_act);
            else if constexpr (CELL == CellKind::kGRU) return gru_gate(g, ax, ah, r, fast_act);
            else return rnn_gate(ax + ah, p.mode == static_cast<int>(Mode::kRnnRelu), fast_act);
          };
          // The pair's cell update and stores, from its activated gates gv (LSTM i f g
          // o, GRU r z n, RNN h) and its dropout bit; `gates`: also store the gates
          // (and GRU's hn) in the reserve (else their lanes did).
          auto finish = [&](int u, int bl, const float (&gv)[G], float hn, bool keep,
                            bool gates) {
            const int64_t b = b0 + bl;
            const int j = u0 + u;
            const int64_t sidx = ld_id * BH + b * H + j;  // (ld, b, j) in hx / cx / hy / cy / state
            const int64_t si = (srow0 + bl) * U + u;     // the same in the shared state
            const float h_prev = s_h[si];
            const bool valid = s_valid[bl] != 0;
            T* const rsv = reserve ? reserve + ((ld_id * T_len + t) * B + b) * p.reserve_width
                                   : nullptr;
            // Gates are written for frozen steps too (finite values from the frozen
            // state): every reserve element is defined, so a backward that multiplies
            // them by a zero mask never meets NaN garbage.
            if (CELL != CellKind::kRNN && rsv && gates) {
              // [sass-path:reserve:begin] (training only)
#pragma unroll
              for (int g = 0; g < G; ++g) rsv[g * H + j] = from_f<T>(gv[g]);
              if (CELL == CellKind::kGRU) rsv[3 * H + j] = from_f<T>(hn);
              // [sass-path:reserve:end]
            }
            float h_new;
            if constexpr (CELL == CellKind::kLSTM) {
              const float c_prev = s_c[si];
              const LstmState cell = lstm_state(gv[0], gv[1], gv[2], gv[3], c_prev, fast_act);
              h_new = valid ? cell.h : h_prev;
              const float c_new = valid ? cell.c : c_prev;
              s_c[si] = c_new;
              if (!c.state_resident) p.state_c[sidx] = c_new;
              if (rsv) {
                // [sass-path:reserve:begin]
                rsv[4 * H + j] = from_f<T>(c_new);
                rsv[5 * H + j] = from_f<T>(h_new);
                // [sass-path:reserve:end]
              }
              if (k == T_len - 1) static_cast<T*>(p.cy)[sidx] = from_f<T>(c_new);
            } else if constexpr (CELL == CellKind::kGRU) {
              h_new = valid ? gru_state(gv[1], gv[2], h_prev) : h_prev;
              if (rsv) rsv[4 * H + j] = from_f<T>(h_new);
            } else {
              h_new = valid ? gv[0] : h_prev;
              if (rsv) rsv[j] = from_f<T>(h_new);
            }
            s_h[si] = h_new;
            if (!c.state_resident) p.state_h[sidx] = h_new;
            const T h_t = from_f<T>(h_new);
            // (cluster_rec: the ring only where the layer above reads it)
            if (!cluster_rec || (!bidir && !last && !p.dropout_active)) hdst[b * H + j] = h_t;
            if (push) sxn[bl * c.ld + c.kx_pad + j] = h_t;  // (b0 = 0: one batch tile)
            if (k == T_len - 1) static_cast<T*>(p.hy)[sidx] = h_t;
            // The layer's output at t: zero past the sequence's length; for every
            // layer but the last, dropped (mask bit computed once per element).
            T out = valid ? h_t : from_f<T>(0.0f);
            if (drop && valid) out = keep ? from_f<T>(to_f(h_t) * p.dropout_scale) : from_f<T>(0.0f);
            if (bidir) {
              bidir_dest(layer)[(t * B + b) * (2 * H) + dir * H + j] = out;
            } else if (last) {
              y[(t * B + b) * H + j] = out;
            } else if (p.dropout_active) {
              ring_row(xring, layer)[slot_off(k) + b * H + j] = out;
            }
            // (unidirectional, no dropout: layer + 1 reads hring directly)
          };
          if (eg_lanes == 1) {
            // [sass-path:epilogue-pairs:begin]
            for (int pi = threadIdx.x; pi < pairs; pi += kForwardThreads) {
              uint32_t u;
              const int bl = static_cast<int>(fd_u.divmod(static_cast<uint32_t>(pi), u));
              float gv[G];
              float hn = 0.0f;
#pragma unroll
              for (int g = 0; g < G; ++g) {
                const int row = g * U + static_cast<int>(u);
                float ax = bias_x[row], ah = bias_h[row];
                if (x_proj) ax += s_xp[bl * c.m_pad + row];
                split_sums(row, bl, 0, 1, ax, ah);
                gv[g] = gate_act(g, ax, ah, g == 2 ? gv[0] : 0.0f);
                if (CELL == CellKind::kGRU && g == 2) hn = ah;  // (GRU's n: ah is hn)
              }
              const bool keep = drop && s_valid[bl] != 0 ? keep_bit(b0 + bl, u0 + static_cast<int>(u))
                                                         : true;
              finish(static_cast<int>(u), bl, gv, hn, keep, true);
            }
            // [sass-path:epilogue-pairs:end]
          } else {
            // [sass-path:epilogue-groups:begin]
            const int per_round = kForwardThreads >> eg_log;  // groups
            const int lane = threadIdx.x % 32;
            const int q = threadIdx.x & (eg_lanes - 1);
            const int group_lane0 = lane - q;
            const int eg = q >> e_spl_log;   // this lane's gate
            const int es = q & (e_spl - 1);  // its first split
            for (int p0 = 0; p0 < pairs; p0 += per_round) {
              const int pi = p0 + (static_cast<int>(threadIdx.x) >> eg_log);
              const bool on = pi < pairs;
              uint32_t u_ = 0;
              const int bl = on ? static_cast<int>(fd_u.divmod(static_cast<uint32_t>(pi), u_)) : 0;
              const int u = static_cast<int>(u_);
              const int row = eg * U + u;
              float vx = 0.0f, vh = 0.0f;
              if (on && eg < G) split_sums(row, bl, es, e_spl, vx, vh);
              for (int m = e_spl / 2; m >= 1; m /= 2) {
                vx += __shfl_xor_sync(0xffffffffu, vx, m);
                vh += __shfl_xor_sync(0xffffffffu, vh, m);
              }
              // the gate's first lane: biases, projected input, nonlinearity
              const bool gate_lead = on && eg < G && es == 0;
              float ax = 0.0f, ah = 0.0f;
              if (gate_lead) {
                ax = vx + bias_x[row];
                ah = vh + bias_h[row];
                if (x_proj) ax += s_xp[bl * c.m_pad + row];
              }
              float act = 0.0f;
              if constexpr (CELL == CellKind::kGRU) {
                // (n needs r: the group's lane 0 has it)
                if (gate_lead && eg < 2) act = gate_act(eg, ax, ah, 0.0f);
                const float r = __shfl_sync(0xffffffffu, act, group_lane0);
                if (gate_lead && eg == 2) act = gate_act(2, ax, ah, r);  // (ah: hn)
              } else if (gate_lead) {
                act = gate_act(eg, ax, ah, 0.0f);
              }
              // the dropout bit, drawn by the group's last lane meanwhile
              bool keep = true;
              if (drop) {
                int kbit = 1;
                if (q == eg_lanes - 1 && on && s_valid[bl] != 0) kbit = keep_bit(b0 + bl, u0 + u) ? 1 : 0;
                keep = __shfl_sync(0xffffffffu, kbit, group_lane0 + eg_lanes - 1) != 0;
              }
              float gv[G];
#pragma unroll
              for (int g = 0; g < G; ++g) gv[g] = __shfl_sync(0xffffffffu, act, group_lane0 + g * e_spl);
              // each gate's reserve entries by its own lane, the rest by lane 0
              if (CELL != CellKind::kRNN && reserve && gate_lead) {
                // [sass-path:reserve:begin]
                T* const rsv = reserve + ((ld_id * T_len + t) * B + b0 + bl) * p.reserve_width;
                rsv[eg * H + u0 + u] = from_f<T>(act);
                if (CELL == CellKind::kGRU && eg == 2) rsv[3 * H + u0 + u] = from_f<T>(ah);
                // [sass-path:reserve:end]
              }
              if (on && q == 0) finish(u, bl, gv, 0.0f, keep, false);
            }
            // [sass-path:epilogue-groups:end]
          }
        }
        // (after the last tile: the step's synchronisation; a recorded CTA
        // waits here too, so that its epilogue phase ends when every thread's
        // epilogue has)
        if (b0 + c.batch_tile < B || rec.cta_on()) __syncthreads();
        rec.mark(kPhaseEpilogue);
      }
    }
    // [sass:sync]
    if constexpr (kFlags) {
      // Every thread's writes of this step, then one release of the count.
      __syncthreads();
      if (push) {
        // [sass-path:sync-cluster:begin]
        // this CTA's h_t chunks (B rows x ceil(uc / 8) of 16 bytes, from its own next
        // tile) into every peer's next tile, peer ranks slice + 1, ... (mod C)
        const int nq = U >> 3;  // (a power of two)
        int push_log = 0;
        while ((1 << push_log) < nq) ++push_log;
        const int per_peer = static_cast<int>(B) << push_log;
        uint64_t* const bar = reinterpret_cast<uint64_t*>(smem + lay.bar) + ((k + 1) & 1);
        const FastDiv fd_peer = fdiv[4];
        for (int i = threadIdx.x; i < (C - 1) * per_peer; i += kForwardThreads) {
          uint32_t rem;
          const int po = static_cast<int>(fd_peer.divmod(static_cast<uint32_t>(i), rem));
          const int row = static_cast<int>(rem) >> push_log;
          const int q = static_cast<int>(rem) & (nq - 1);
          if (q * 8 >= uc) continue;
          int rank = slice + 1 + po;
          if (rank >= C) rank -= C;
          T* const at = sxn + row * c.ld + c.kx_pad + u0 + q * 8;
          st_async_v4(at, rank, *reinterpret_cast<const uint4*>(at), bar);
        }
        // [sass-path:sync-cluster:end]
      }
      if (threadIdx.x == 0) {
        if (c.lean_sync) {
          // [sass-path:sync-lean:begin]
          lean_publish(p.flags + ld_id * kLeanCounterStride, 1);
          // [sass-path:sync-lean:end]
        } else {
          // [sass-path:sync-flags:begin]
          flag_publish(p.flags + blockIdx.x, static_cast<int>(k + 1));
          // [sass-path:sync-flags:end]
        }
      }
      rec.step_end(wave0 + k, true, true);
    } else {
      // (the grid handle is made here, not held in registers across the loop)
      if (s + 1 < n_steps) cg::this_grid().sync();
      rec.step_end(s, active, s + 1 < n_steps);
    }
  }
  // [sass:end]
  if (cluster_rec) cluster_sync();  // (no CTA leaves while a peer may still address it)
  rec.finish(n_steps);
}

// ------------------------------------------------------------ launchers

// The kernel of a resolved policy: kGrid, kFlags, or (16-bit only: the other dtypes have
// no such instantiation, and ask for kFlags) kCluster, the flags kernel with the
// recurrence in a cluster (ForwardConfig::cluster_rec).
template <typename T, CellKind CELL, bool TF32>
const void* forward_kernel_ptr(SyncPolicy sync) {
  if constexpr (sizeof(T) == 2) {
    if (sync == SyncPolicy::kCluster)
      return reinterpret_cast<const void*>(&rnn_forward_kernel<T, CELL, TF32, SyncPolicy::kCluster>);
  }
  return sync == SyncPolicy::kGrid
             ? reinterpret_cast<const void*>(&rnn_forward_kernel<T, CELL, TF32, SyncPolicy::kGrid>)
             : reinterpret_cast<const void*>(&rnn_forward_kernel<T, CELL, TF32, SyncPolicy::kFlags>);
}

// One cooperative launch on `stream` of the variant of p.cfg.sync. Both
// policies need every CTA co-resident (a CTA spinning on a flag must not
// keep its producer from being scheduled): the cooperative launch guarantees
// it, or fails with cudaErrorCooperativeLaunchTooLarge -- an error, never a
// hang. The caller (launch_forward in forward_dispatch.cu) has raised the
// variant's dynamic shared-memory limit on this device and, for kFlags,
// zeroed the step counters on the same stream.
template <typename T, CellKind CELL, bool TF32>
cudaError_t launch_forward_kernel(const ForwardParams& p, cudaStream_t stream) {
  // the plan's register tiles must be the ones this instantiation holds
  if (p.cfg.reg_tiles != (sizeof(T) == 2 ? kRegTiles16 : TF32 ? kRegTilesTf32 : 0))
    return cudaErrorInvalidValue;
  // ... and its ring the one the policy's kernel is compiled for
  if (p.cfg.ring != (p.cfg.sync == SyncPolicy::kGrid ? kRingGrid : kRingFlags))
    return cudaErrorInvalidValue;
  // ... and the recurrence in a cluster only as the planner makes it
  if (p.cfg.cluster_rec &&
      (p.cfg.sync != SyncPolicy::kFlags || p.cfg.lean_sync || sizeof(T) != 2 ||
       p.cfg.ctas_per_dir < 1 || p.cfg.ctas_per_dir > 16 || p.batch > p.cfg.batch_tile ||
       p.cfg.units_per_cta < 8 || (p.cfg.units_per_cta & (p.cfg.units_per_cta - 1)) != 0))
    return cudaErrorInvalidValue;
  const void* fn =
      forward_kernel_ptr<T, CELL, TF32>(p.cfg.cluster_rec ? SyncPolicy::kCluster : p.cfg.sync);
  void* args[] = {const_cast<ForwardParams*>(&p)};
  if (!p.cfg.cluster_rec)
    return cudaLaunchCooperativeKernel(fn, dim3(p.cfg.grid), dim3(kForwardThreads), args,
                                       static_cast<size_t>(p.cfg.smem_bytes), stream);
  // One cluster per (layer, direction): its C CTAs are consecutive. Cooperative too,
  // so that every CTA is co-resident (the layers still wait for each other's flags).
  return launch_cooperative_clusters(fn, p.cfg.grid, kForwardThreads, p.cfg.smem_bytes,
                                     p.cfg.ctas_per_dir, args, stream);
}

}  // namespace fwd
}  // namespace fused_rnn

// Explicit instantiation of one (dtype, cell, tf32) variant: the kernel (both
// synchronisation policies, and for 16 bits the recurrence in a cluster), its symbol
// getter and its launcher (used by forward_<dtype>.cu).
#define FRNN_INSTANTIATE_FORWARD(T, CELL, TF32)                                              \
  template const void* fused_rnn::fwd::forward_kernel_ptr<T, CELL, TF32>(fused_rnn::SyncPolicy); \
  template cudaError_t fused_rnn::fwd::launch_forward_kernel<T, CELL, TF32>(                \
      const fused_rnn::ForwardParams&, cudaStream_t);
