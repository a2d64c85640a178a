// The forward planner: does the fused kernel cover a call, and with which
// configuration? Pure C++ (g++-compilable); the device facts it needs come in
// as DeviceLimits and an occupancy callback, so tests can run it with an
// H100's numbers on a CPU machine. plan_forward_on_device (forward_api.h)
// fills both from the CUDA runtime.
//
// Choice, in order:
//  1. coverage: dtype, proj_size, layer count, compute capability, sizes;
//  2. units per CTA U: the smallest U (most CTAs, least shared memory per
//     CTA) whose grid LD * ceil(H / U) is co-resident (cooperative launch);
//     U >= floor(16 / G) so that a 16-row tensor-core tile is mostly useful;
//  3. batch tile NB, a multiple of 8 (tensor cores; 16 for FP32 FMA) up to 64:
//     the largest that still fits, with the fp32 state resident in shared
//     memory for all B rows if that fits too (else staged per tile from the
//     workspace);
//  4. K chunk per warp item: minimises the critical warp's MMA count, else
//     (when that does not fit) the split that needs the least shared memory.
//     Tensor cores: each warp's first item keeps register_tiles() weight
//     tiles in registers (common.h); only the rest takes shared memory;
//  5. synchronisation: the request (FUSED_RNN_SYNC), else point-to-point flags
//     ("lean": the flags kernel's lean protocol, where its counters cannot
//     overflow). It does not change the shared memory, so it never changes coverage.
//     "cluster" (opt-in): first plan_cluster_rec, the recurrence in a thread-block
//     cluster per layer-direction, with its own choice of U (a power of two, C <= 16)
//     and one batch tile; where that does not fit, the plan above with flags, the
//     reason in its summary.
// Rejection says why in words (the module reports it as the fallback reason).
#pragma once

#include <stdio.h>

#include <string>

#include "common.h"
#include "forward_params.h"

namespace fused_rnn {

struct DeviceLimits {
  int sm_count = 0;
  int64_t smem_optin_per_block = 0;  // cudaDevAttrMaxSharedMemoryPerBlockOptin
  int64_t smem_per_sm = 0;           // cudaDevAttrMaxSharedMemoryPerMultiprocessor
  int cc_major = 0;
  int cc_minor = 0;
};

// How many clusters of `cluster` CTAs (of `smem_bytes` each, a grid of `grid`)
// the device holds at once; the device-aware planners ask the CUDA runtime
// (cudaOccupancyMaxActiveClusters). Null: an estimate (see plan_cluster_rec).
using ClusterOccupancyFn = int (*)(const void* ctx, int64_t smem_bytes, int grid, int cluster);

// Blocks of the forward kernel that fit on one SM with `smem_bytes` of
// dynamic shared memory (the CUDA occupancy API on a device, an estimate in
// tests). `ctx` is passed through.
using OccupancyFn = int (*)(const void* ctx, int64_t smem_bytes);

// Estimate without a device: shared memory (+1 KB reserved per block) and the
// register file (64K registers per SM; ptxas reports 135-232 registers per
// thread for the variants, see csrc/kernels/README.md, so 1 block per SM).
inline int estimate_occupancy(const DeviceLimits& dev, int64_t smem_bytes,
                              int regs_per_thread = 232) {
  const int64_t per_block = smem_bytes + 1024;
  const int64_t by_smem = per_block > 0 ? dev.smem_per_sm / per_block : 0;
  const int64_t by_regs = 65536 / (static_cast<int64_t>(kForwardThreads) * regs_per_thread);
  return static_cast<int>(by_smem < by_regs ? by_smem : by_regs);
}

struct PlanResult {
  bool ok = false;
  std::string reason;  // why not (ok == false) or a one-line summary (ok == true)
  ForwardConfig cfg;
};

namespace plan_detail {

inline std::string kb(int64_t bytes) {
  char buf[32];
  snprintf(buf, sizeof(buf), "%.1f KB", bytes / 1024.0);
  return buf;
}

// The tensor-core paths' shared-memory fragment tiles for the current split.
inline void set_weight_tiles(ForwardConfig& c) {
  c.w_tiles = c.reg_tiles > 0 ? frag_tile_offset(c, frag_items(c)) : 0;
}

// K chunk (in 16-wide tiles) and, for tensor cores, row tiles per item
// (m_group) for given rows / batch tile: minimises the critical warp's time,
// ties to fewer splits (less shared memory) and to m_group 1.
//   FP32 FMA: an item covers 16 batch columns; 4 units per 16-wide K tile.
//   Tensor cores: an item covers all batch columns; per K tile one ldmatrix
//   of activations (shared by the item's m_group row tiles) and per weight
//   tile one mma, plus a 16-byte-per-lane load for each tile not in
//   registers (the critical warp's first item holds min(reg_tiles, its
//   tiles) in registers) -- 4 units each; and each tile not in registers
//   also takes a share of the CTA's shared-memory pipe (4 units / 8 warps).
// Plus 1 unit per partial sum the epilogue reads (splits).
inline void choose_k_chunk(ForwardConfig& c, int kt_x, int kt_h) {
  const int mt = c.m_pad / kTile;
  const int kt_max = kt_x > kt_h ? kt_x : kt_h;
  const int mg_max = c.reg_tiles > 0 && mt % 2 == 0 ? 2 : 1;
  int64_t best = -1;
  for (int mg = 1; mg <= mg_max; ++mg) {
    for (int kc = kt_max; kc >= 1; --kc) {
      const int sx = static_cast<int>(ceil_div(kt_x, kc));
      const int sh = static_cast<int>(ceil_div(kt_h, kc));
      int64_t cost;
      if (c.reg_tiles > 0) {
        const int64_t items = static_cast<int64_t>(mt / mg) * (sx + sh);
        const int64_t rounds = ceil_div(items, kForwardWarps);
        const int64_t tiles = rounds * kc * mg;  // of the critical warp
        const int64_t in_regs = kc * mg < c.reg_tiles ? kc * mg : c.reg_tiles;
        // every tile not in registers also takes the CTA's shared-memory pipe,
        // which the 8 warps share
        ForwardConfig cand = c;
        cand.k_chunk = kc;
        cand.x_splits = sx;
        cand.h_splits = sh;
        cand.m_group = mg;
        const int64_t shared_tiles = frag_tile_offset(cand, frag_items(cand));
        cost = 4 * (rounds * kc + tiles + (tiles - in_regs)) + 4 * shared_tiles / kForwardWarps +
               (sx + sh);
      } else {
        const int64_t items = static_cast<int64_t>(mt) * (c.batch_tile / kTile) * (sx + sh);
        cost = ceil_div(items, kForwardWarps) * kc * 4 + (sx + sh);
      }
      if (best < 0 || cost < best) {
        best = cost;
        c.k_chunk = kc;
        c.x_splits = sx;
        c.h_splits = sh;
        c.m_group = mg;
      }
    }
  }
  set_weight_tiles(c);
}

inline void fill_minimal_split(ForwardConfig& c, int kt_x, int kt_h) {
  c.k_chunk = kt_x > kt_h ? kt_x : kt_h;
  c.x_splits = kt_x > 0 ? 1 : 0;  // no x part at all: one layer, projection outside
  c.h_splits = 1;
  c.m_group = 1;
  set_weight_tiles(c);
}

// The split with the least shared memory. FP32 FMA: the fewest splits (least
// partial-sum memory). Tensor cores: more, shorter chunks put more warps'
// first items -- and so more register tiles -- to work, up to 8 items (one
// per warp); past that only the partial sums grow. Returns the bytes.
inline int64_t fill_smallest_split(ForwardConfig& c, int kt_x, int kt_h) {
  fill_minimal_split(c, kt_x, kt_h);
  if (c.reg_tiles == 0) return smem_layout(c).total;
  ForwardConfig best = c;
  int64_t best_bytes = smem_layout(c).total;
  const int mt = c.m_pad / kTile;
  const int kt_max = kt_x > kt_h ? kt_x : kt_h;
  for (int mg = 1; mg <= (mt % 2 == 0 ? 2 : 1); ++mg) {
    for (int kc = kt_max; kc >= 1; --kc) {
      c.m_group = mg;
      c.k_chunk = kc;
      c.x_splits = kt_x > 0 ? static_cast<int>(ceil_div(kt_x, kc)) : 0;
      c.h_splits = static_cast<int>(ceil_div(kt_h, kc));
      if (static_cast<int64_t>(mt / mg) * (c.x_splits + c.h_splits) > kForwardWarps) break;
      set_weight_tiles(c);
      const int64_t bytes = smem_layout(c).total;
      if (bytes < best_bytes) {
        best = c;
        best_bytes = bytes;
      }
    }
  }
  c = best;
  return best_bytes;
}

}  // namespace plan_detail

// FUSED_RNN_SYNC's values: "grid", "flags", "lean", "auto" (or empty / unset: auto).
// False for anything else (the caller reports it).
inline bool parse_sync(const char* s, SyncPolicy* out) {
  const std::string v = s ? s : "";
  if (v.empty() || v == "auto") *out = SyncPolicy::kAuto;
  else if (v == "grid") *out = SyncPolicy::kGrid;
  else if (v == "flags") *out = SyncPolicy::kFlags;
  else if (v == "lean") *out = SyncPolicy::kLean;
  else if (v == "cluster") *out = SyncPolicy::kCluster;
  else return false;
  return true;
}

// FUSED_RNN_CLUSTER: "" or "auto" -> 0, "1" / "2" / "4" / "8" -> that; false otherwise.
inline bool parse_cluster(const char* s, int* out) {
  const std::string v = s ? s : "";
  if (v.empty() || v == "auto") *out = 0;
  else if (v == "1" || v == "2" || v == "4" || v == "8") *out = v[0] - '0';
  else return false;
  return true;
}

// Summary of an accepted plan, e.g. for fused_rnn.backend_info / last_backend.
inline std::string describe(const ForwardProblem& p, const ForwardConfig& c) {
  char buf[1024];
  const char* math = p.dtype == DType::kFloat32 ? (c.use_tf32 ? "tf32 tensor cores" : "fp32 FMA")
                                                : (p.dtype == DType::kFloat16 ? "fp16 tensor cores"
                                                                             : "bf16 tensor cores");
  const int64_t steps = p.bidirectional ? p.num_layers * p.seq_len
                                        : p.seq_len + p.num_layers - 1;
  // the weight tiles actually held in registers (each warp's first item)
  int reg_used = 0;
  if (c.reg_tiles > 0)
    for (int it = 0; it < kForwardWarps && it < frag_items(c); ++it) reg_used += item_reg_tiles(c, it);
  int lean = 0;
  for (int it = 0; it < frag_items(c); ++it) lean += lean_item(c, it) ? 1 : 0;
  char regs[192] = "";
  if (c.reg_tiles > 0)
    snprintf(regs, sizeof(regs),
             ", weights %s in registers + %s in shared memory, %d row tile%s per warp item, "
             "%d of %d items unrolled (lean GEMM)",
             plan_detail::kb(static_cast<int64_t>(reg_used) * kTile * kTile * c.elem_bytes).c_str(),
             plan_detail::kb(c.w_tiles * kTile * kTile * c.elem_bytes).c_str(), c.m_group,
             c.m_group > 1 ? "s" : "", lean, frag_items(c));
  snprintf(buf, sizeof(buf),
           "fused: %s %s L=%d D=%d H=%lld I=%lld B=%lld T=%lld; %d CTAs (%d per layer-direction, "
           "%d units each), batch tile %d, K chunk %d (%d+%d splits), smem %s/CTA, %d CTA/SM, "
           "%s, %lld wave steps, %s sync (ring %d), state %s%s%s%s",
           mode_name(p.mode), dtype_name(p.dtype), p.num_layers, p.num_dirs(),
           static_cast<long long>(p.hidden_size), static_cast<long long>(p.input_size),
           static_cast<long long>(p.batch), static_cast<long long>(p.seq_len), c.grid,
           c.ctas_per_dir, c.units_per_cta, c.batch_tile, c.k_chunk, c.x_splits, c.h_splits,
           plan_detail::kb(c.smem_bytes).c_str(), c.blocks_per_sm, math,
           static_cast<long long>(steps),
           c.lean_sync ? "lean" : c.cluster_rec ? "cluster" : sync_name(c.sync), c.ring,
           c.state_resident ? "in shared memory" : "staged per tile",
           c.x_proj ? ", layer-0 input projection before the loop" : "", regs,
           c.fast_tanh ? ", hardware tanh" : "");
  std::string out = buf;
  if (c.cluster_rec)
    out += ", recurrence in clusters of " + std::to_string(c.ctas_per_dir) +
           " CTAs (h pushed through distributed shared memory)";
  return out;
}

// The recurrence in a thread-block cluster (ForwardConfig::cluster_rec; FUSED_RNN_SYNC=
// cluster). Requires sm_90, a 16-bit dtype, one batch tile for all B (B <= 64), U a power
// of two >= 8 with 2 <= C = ceil(H / U) <= 16 (16 is a non-portable cluster size), the state
// resident, and every cluster co-resident: `cluster_occupancy` (the CUDA runtime's
// cudaOccupancyMaxActiveClusters) clusters of C, at least L * D; without it an estimate
// (SMs x blocks per SM / C, which ignores how the GPCs cut the SMs). The smallest U
// that fits (most CTAs, least work per step on the critical path). Returns ok with
// the config, or not ok with the reason.
inline PlanResult plan_cluster_rec(const ForwardProblem& p, const DeviceLimits& dev,
                                   const ForwardConfig& base, OccupancyFn occupancy,
                                   const void* occ_ctx, ClusterOccupancyFn cluster_occupancy,
                                   const void* cl_ctx) {
  PlanResult r;
  auto no = [&r](const char* why) {
    r.ok = false;
    r.reason = why;
    return r;
  };
  if (p.dtype == DType::kFloat32) return no("16-bit dtypes only");
  if (dev.cc_major < 9) return no("thread-block clusters need sm_90");
  if (p.batch > 64) return no("B > 64 (one batch tile for all rows)");
  if (p.seq_len * p.batch >= (int64_t(1) << 31)) return no("T * B >= 2^31");
  const int G = p.gates();
  const int LD = p.layer_dirs();
  const int H = static_cast<int>(p.hidden_size);
  const int kt_x = base.kx_pad / kTile, kt_h = base.kh_pad / kTile;
  // (a cluster of 1 would exchange nothing: plain flags is that, without a second X tile)
  if (H <= 8) return no("H <= 8: one CTA holds the layer, nothing to exchange");
  const char* why = "no unit split of H into at most 16 CTAs fits shared memory";
  int u = 8;
  while (ceil_div(H, u) > 16) u *= 2;
  for (; ceil_div(H, u) >= 2; u *= 2) {
    ForwardConfig cfg = base;
    cfg.cluster_rec = true;
    cfg.units_per_cta = u;
    cfg.ctas_per_dir = static_cast<int>(ceil_div(H, u));
    cfg.grid = LD * cfg.ctas_per_dir;
    cfg.m_pad = static_cast<int>(round_up(static_cast<int64_t>(G) * u, kTile));
    cfg.batch_tile = static_cast<int>(round_up(p.batch, 8));
    cfg.state_resident = true;
    cfg.state_rows = p.batch;
    plan_detail::choose_k_chunk(cfg, kt_x, kt_h);
    int64_t smem = smem_layout(cfg).total;
    if (smem > dev.smem_optin_per_block) smem = plan_detail::fill_smallest_split(cfg, kt_x, kt_h);
    if (smem > dev.smem_optin_per_block) continue;
    const int occ = occupancy(occ_ctx, smem);
    if (occ < 1 || static_cast<int64_t>(occ) * dev.sm_count < cfg.grid) {
      why = "the grid is not co-resident";
      continue;
    }
    const int64_t clusters =
        cluster_occupancy ? cluster_occupancy(cl_ctx, smem, cfg.grid, cfg.ctas_per_dir)
                          : static_cast<int64_t>(dev.sm_count) * occ / cfg.ctas_per_dir;
    if (clusters < LD) {
      why = "its clusters are not all co-resident";
      continue;
    }
    cfg.smem_bytes = smem;
    cfg.blocks_per_sm = occ;
    r.ok = true;
    r.cfg = cfg;
    r.reason = describe(p, cfg);
    return r;
  }
  return no(why);
}

inline PlanResult plan_forward(const ForwardProblem& p, const DeviceLimits& dev,
                               OccupancyFn occupancy, const void* occ_ctx,
                               ClusterOccupancyFn cluster_occupancy = nullptr,
                               const void* cl_ctx = nullptr) {
  using plan_detail::kb;
  PlanResult r;
  auto reject = [&r](std::string why) {
    r.ok = false;
    r.reason = std::move(why);
    return r;
  };
  char buf[512];

  // 1. coverage
  if (p.proj_size > 0)
    return reject("proj_size > 0 (LSTM with projections) is not covered by the fused kernel yet");
  if (p.num_layers < 1 || p.hidden_size < 1 || p.input_size < 1 || p.batch < 1 || p.seq_len < 1)
    return reject("empty problem (num_layers, hidden_size, input_size, batch and seq_len must be >= 1)");
  if (p.layer_dirs() > kMaxLayerDirs) {
    snprintf(buf, sizeof(buf),
             "num_layers * directions = %d exceeds the fused kernel's limit of %d",
             p.layer_dirs(), kMaxLayerDirs);
    return reject(buf);
  }
  if (dev.cc_major < 8) {
    snprintf(buf, sizeof(buf),
             "the fused kernel needs compute capability >= 8.0 (bf16/TF32 tensor cores); "
             "this device is sm_%d%d", dev.cc_major, dev.cc_minor);
    return reject(buf);
  }
  // Philox counters and the in-kernel loop use 32-bit t, b, j.
  if (p.seq_len >= (int64_t(1) << 31) || p.batch >= (int64_t(1) << 31))
    return reject("seq_len or batch >= 2^31 is not covered by the fused kernel");
  if (p.hidden_size > 65536 || p.input_size > 65536)
    return reject("hidden_size or input_size > 65536 is not covered by the fused kernel");

  const int G = p.gates();
  const int LD = p.layer_dirs();
  const int H = static_cast<int>(p.hidden_size);
  ForwardConfig base;
  base.elem_bytes = dtype_size(p.dtype);
  base.use_tf32 = p.dtype == DType::kFloat32 && p.allow_tf32;
  base.x_proj = p.projects_input();
  base.sync = p.sync == SyncPolicy::kGrid ? SyncPolicy::kGrid : SyncPolicy::kFlags;
  base.ring = base.sync == SyncPolicy::kGrid ? kRingGrid : kRingFlags;
  base.fast_tanh = p.fast_tanh && p.dtype == DType::kBFloat16;
  base.reg_tiles = register_tiles(p.dtype, base.use_tf32);
  base.kx_pad = static_cast<int>(round_up(p.max_layer_input(), kTile));
  base.kh_pad = static_cast<int>(round_up(H, kTile));
  // +16 bytes per row: rows land on different banks (conflict-free ldmatrix),
  // and every 16-wide tile start stays 32-byte aligned for wmma.
  base.ld = base.kx_pad + base.kh_pad + 16 / base.elem_bytes;
  const int kt_x = base.kx_pad / kTile, kt_h = base.kh_pad / kTile;

  // The recurrence in clusters, where asked for and where it fits; else the plan
  // below, saying why not.
  std::string cluster_note;
  if (p.sync == SyncPolicy::kCluster) {
    PlanResult cr = plan_cluster_rec(p, dev, base, occupancy, occ_ctx, cluster_occupancy, cl_ctx);
    if (cr.ok) return cr;
    cluster_note = "; no cluster recurrence (requested: " + cr.reason + ")";
  }

  const int u_lo = [&] {
    const int u = 16 / G;
    return u < 1 ? 1 : (u > H ? H : u);
  }();
  // batch tiles: multiples of the GEMM's column tile (mma.sync: 8; FMA: 16)
  const int nb_step = base.reg_tiles > 0 ? 8 : kTile;
  const int64_t max_nb = round_up(p.batch, nb_step) < 64 ? round_up(p.batch, nb_step) : 64;

  // A bound on how many CTAs per layer-direction can ever be co-resident:
  // occupancy only falls as U (and shared memory) grows.
  int c_start = static_cast<int>(ceil_div(H, u_lo));
  {
    ForwardConfig probe = base;
    probe.units_per_cta = u_lo;
    probe.m_pad = static_cast<int>(round_up(static_cast<int64_t>(G) * u_lo, kTile));
    probe.batch_tile = nb_step;
    probe.state_rows = nb_step;
    const int64_t smem = plan_detail::fill_smallest_split(probe, kt_x, kt_h);
    const int occ = smem <= dev.smem_optin_per_block ? occupancy(occ_ctx, smem) : 1;
    const int64_t cap = static_cast<int64_t>(dev.sm_count) * (occ > 0 ? occ : 1) / LD;
    if (cap < 1) {
      snprintf(buf, sizeof(buf),
               "num_layers * directions = %d needs %d co-resident CTAs, the device holds %lld",
               LD, LD, static_cast<long long>(static_cast<int64_t>(dev.sm_count) * (occ > 0 ? occ : 1)));
      return reject(buf);
    }
    if (cap < c_start) c_start = static_cast<int>(cap);
  }

  int64_t smallest_smem = -1;  // for the rejection message
  int smallest_u = 0;
  int prev_u = -1;
  for (int c = c_start; c >= 1; --c) {
    const int U = static_cast<int>(ceil_div(H, c));
    if (U == prev_u) continue;
    prev_u = U;
    ForwardConfig cfg = base;
    cfg.units_per_cta = U;
    cfg.ctas_per_dir = static_cast<int>(ceil_div(H, U));
    cfg.grid = LD * cfg.ctas_per_dir;
    cfg.m_pad = static_cast<int>(round_up(static_cast<int64_t>(G) * U, kTile));
    for (int64_t nb = max_nb; nb >= nb_step; nb -= nb_step) {
      cfg.batch_tile = static_cast<int>(nb);
      // The state resident for all B rows first; staged per tile otherwise
      // (a single tile holding every row is resident at no extra cost).
      for (int resident = 1; resident >= 0; --resident) {
        cfg.state_resident = resident != 0 || p.batch <= nb;
        cfg.state_rows = cfg.state_resident ? p.batch : nb;
        plan_detail::choose_k_chunk(cfg, kt_x, kt_h);
        int64_t smem = smem_layout(cfg).total;
        if (smem > dev.smem_optin_per_block)  // the split that needs the least memory
          smem = plan_detail::fill_smallest_split(cfg, kt_x, kt_h);
        if (smallest_smem < 0 || smem < smallest_smem) {
          smallest_smem = smem;
          smallest_u = U;
        }
        if (smem > dev.smem_optin_per_block) continue;
        const int occ = occupancy(occ_ctx, smem);
        if (occ < 1 || static_cast<int64_t>(occ) * dev.sm_count < cfg.grid) continue;
        cfg.smem_bytes = smem;
        cfg.blocks_per_sm = occ;
        // The lean protocol's counters count the steps of a whole layer-direction
        // (C per step): they must stay below 2^31.
        cfg.lean_sync = p.sync == SyncPolicy::kLean &&
                        static_cast<int64_t>(cfg.ctas_per_dir) * p.seq_len < (int64_t(1) << 31);
        r.ok = true;
        r.cfg = cfg;
        r.reason = describe(p, cfg) + cluster_note;
        return r;
      }
    }
  }
  snprintf(buf, sizeof(buf),
           "weights need %s of shared memory per CTA (%d units x %d gates x K=%lld %s, batch "
           "tile %d, %d KB of them in registers) to fit %d layer-directions on %d SMs; the "
           "device allows %s per CTA",
           kb(smallest_smem).c_str(), smallest_u, G,
           static_cast<long long>(p.max_layer_input() + p.hidden_size), dtype_name(p.dtype),
           nb_step, base.reg_tiles * kForwardWarps * kTile * kTile * base.elem_bytes / 1024, LD,
           dev.sm_count, kb(dev.smem_optin_per_block).c_str());
  return reject(buf);
}

}  // namespace fused_rnn
