// The backward planner: does the fused backward kernel cover a call, and with
// which configuration? Pure C++ (g++-compilable), device facts passed in, as
// for plan_forward (forward_plan.h), whose coverage checks it shares.
//
// Choice, in order:
//  1. coverage: the forward's checks (dtype, proj_size, layer count, compute
//     capability, sizes);
//  2. units per CTA U: every CTA streams the whole K = (D+1)*G*H of its
//     batch rows per step whatever U is (up to 16 units share one 16-row MMA
//     tile), so U = min(16, H) is preferred; smaller U (more CTAs, smaller
//     weight tiles) when 16 does not fit shared memory, larger U (up to 32)
//     when the grid would not be co-resident;
//  3. batch slices: idle SMs take a share of the batch rows (a CTA's stream
//     is proportional to its rows), in slices of 16 rows;
//  4. batch tiles per pass (1, 2, 4, 8 tiles of 16 rows, K split over the
//     rest of the 8 warps) and the deepest cp.async pipeline that fits;
//  5. the synchronisation policy: the request (FUSED_RNN_SYNC) resolved as
//     the forward resolves it, auto -> flags;
//  6. thread-block clusters on sm_90 (choose_cluster): the unit slices that
//     stream the same gate-gradient rows share each L2 read.
// Rejection says why in words.
#pragma once

#include <stdio.h>

#include <string>

#include "backward_params.h"
#include "common.h"
#include "forward_plan.h"

namespace fused_rnn {

// (ClusterOccupancyFn: forward_plan.h)

// A cluster's multicast pays where the per-step stream, not its latency,
// dominates a CTA's GEMM: from this many bytes of gate gradients per CTA per
// step (64 KB: ~1.4 us of one SM's share of L2 bandwidth, about the three
// dependent L2 round trips of a small batch's stream).
constexpr int64_t kClusterMinStreamBytes = 64 * 1024;

struct BackwardPlanResult {
  bool ok = false;
  std::string reason;  // why not (ok == false) or a one-line summary (ok == true)
  BackwardConfig cfg;
};

inline std::string describe_backward(const ForwardProblem& p, const BackwardConfig& c,
                                     const std::string& cluster_note = "") {
  char buf[1024];
  const std::string cluster =
      c.cluster > 1 ? "K stream multicast in clusters of " + std::to_string(c.cluster) + " CTAs, "
                    : cluster_note;
  const char* math = p.dtype == DType::kFloat32 ? (c.use_tf32 ? "tf32 tensor cores" : "fp32 FMA")
                                                : (p.dtype == DType::kFloat16 ? "fp16 tensor cores"
                                                                             : "bf16 tensor cores");
  std::string weights =
      c.reg_tiles > 0 ? "weights in registers (" + std::to_string(c.reg_tiles) + " tiles per warp)"
                      : "weights in shared memory";
  if (backward_streams(c)) {
    const int64_t tile = static_cast<int64_t>(c.units_per_cta) * c.elem_bytes;
    weights += " (" + plan_detail::kb(tile * c.kres) + " of " + plan_detail::kb(tile * c.kw) +
               ", the rest, " + plan_detail::kb(tile * (c.kw - c.kres)) +
               " per CTA per step, streamed from L2)";
  }
  const int64_t steps = p.bidirectional ? p.num_layers * p.seq_len + 1
                                        : p.seq_len + p.num_layers;
  snprintf(buf, sizeof(buf),
           "fused backward: %s %s L=%d D=%d H=%lld I=%lld B=%lld T=%lld; %d CTAs (%d per "
           "layer-direction x %d batch slices of %d rows, %d units each), %d batch tiles x %d K "
           "splits per pass, %d-stage cp.async, smem %s/CTA, %d CTA/SM, %s, %s, %s%lld wave "
           "steps, %s sync",
           mode_name(p.mode), dtype_name(p.dtype), p.num_layers, p.num_dirs(),
           static_cast<long long>(p.hidden_size), static_cast<long long>(p.input_size),
           static_cast<long long>(p.batch), static_cast<long long>(p.seq_len), c.grid,
           c.ctas_per_dir, c.batch_slices, c.rows_per_slice, c.units_per_cta, c.n_tiles,
           c.k_splits, c.stages, plan_detail::kb(c.smem_bytes).c_str(), c.blocks_per_sm, math,
           weights.c_str(), cluster.c_str(), static_cast<long long>(steps), sync_name(c.sync));
  return buf;
}

// The coverage checks shared with the forward planner (everything that does
// not depend on the configuration). Returns false with `why` set.
inline bool backward_coverage(const ForwardProblem& p, const DeviceLimits& dev, std::string* why) {
  char buf[256];
  if (p.proj_size > 0) {
    *why = "proj_size > 0 (LSTM with projections) is not covered by the fused backward kernel yet";
    return false;
  }
  if (p.num_layers < 1 || p.hidden_size < 1 || p.input_size < 1 || p.batch < 1 || p.seq_len < 1) {
    *why = "empty problem (num_layers, hidden_size, input_size, batch and seq_len must be >= 1)";
    return false;
  }
  if (p.layer_dirs() > kMaxLayerDirs) {
    snprintf(buf, sizeof(buf),
             "num_layers * directions = %d exceeds the fused kernel's limit of %d", p.layer_dirs(),
             kMaxLayerDirs);
    *why = buf;
    return false;
  }
  if (dev.cc_major < 8) {
    snprintf(buf, sizeof(buf),
             "the fused backward kernel needs compute capability >= 8.0 (cp.async, bf16/TF32 "
             "tensor cores); this device is sm_%d%d", dev.cc_major, dev.cc_minor);
    *why = buf;
    return false;
  }
  // (the flags policy's step counters count to seq_len + 1 in an int32)
  if (p.seq_len >= (int64_t(1) << 31) - 1 || p.batch >= (int64_t(1) << 31)) {
    *why = "seq_len or batch >= 2^31 is not covered by the fused kernel";
    return false;
  }
  if (p.hidden_size > 65536 || p.input_size > 65536) {
    *why = "hidden_size or input_size > 65536 is not covered by the fused kernel";
    return false;
  }
  return true;
}

// Fills the configuration for U units per CTA and `slices` batch slices;
// picks the deepest pipeline (>= min_stages) that fits shared memory.
inline bool backward_try(const ForwardProblem& p, const DeviceLimits& dev, int U, int slices,
                         int min_stages, BackwardConfig* out) {
  const int G = p.gates();
  const int H = static_cast<int>(p.hidden_size);
  BackwardConfig c;
  c.elem_bytes = dtype_size(p.dtype);
  c.use_tf32 = p.dtype == DType::kFloat32 && p.allow_tf32;
  // the requested policy, resolved as for the forward: auto -> flags
  c.sync = p.sync == SyncPolicy::kGrid ? SyncPolicy::kGrid : SyncPolicy::kFlags;
  c.units_per_cta = U;
  c.ctas_per_dir = static_cast<int>(ceil_div(H, U));
  c.m_tiles = static_cast<int>(ceil_div(U, 16));
  c.m_pad = 16 * c.m_tiles;
  c.gh_pad = static_cast<int>(round_up(static_cast<int64_t>(G) * H, kTile));
  c.ka = (p.num_layers > 1 ? p.num_dirs() : 0) * c.gh_pad;
  c.kw = c.ka + c.gh_pad;
  c.kblock = c.elem_bytes == 2 ? 16 : 8;
  c.stage_k = kStageRowBytes / c.elem_bytes;
  c.stage_ld = c.stage_k + 16 / c.elem_bytes;
  // rows: one slice of all B rows, or slices of whole 16-row tiles
  if (slices <= 1) {
    c.batch_slices = 1;
    c.rows_per_slice = static_cast<int>(p.batch);
  } else {
    c.rows_per_slice = static_cast<int>(round_up(ceil_div(p.batch, slices), 16));
    c.batch_slices = static_cast<int>(ceil_div(p.batch, c.rows_per_slice));
  }
  const int64_t tiles = ceil_div(c.rows_per_slice, 16);
  c.n_tiles = tiles >= 8 ? 8 : tiles >= 4 ? 4 : tiles >= 2 ? 2 : 1;
  // (3 tiles -> 2 per pass + 1: keeps K split evenly over 8 warps)
  c.k_splits = kBackwardWarps / c.n_tiles;
  c.grid = p.layer_dirs() * c.ctas_per_dir * c.batch_slices;
  c.kres = c.kw;
  c.reg_tiles = backward_reg_tiles(c);
  for (int st = 4; st >= min_stages; --st) {
    c.stages = st;
    const int64_t smem = backward_smem_layout(c).total;
    c.smem_bytes = smem;
    if (smem <= dev.smem_optin_per_block) {
      *out = c;
      return true;
    }
  }
  *out = c;  // (the shallowest pipeline tried, for messages)
  return false;
}

// Where no configuration holds its whole weight tile (fp32 L=4 H=512: U=16
// units x K=4096 x 4 bytes = 256 KB per CTA for the grid to be co-resident):
// U units per CTA, one batch slice, `stages` deep, and the largest resident
// prefix kres (a multiple of 16) that fits shared memory next to the B and A
// staging; the rest of the tile is streamed (BackwardConfig::kres). False
// when not even the staging fits.
inline bool backward_try_streamed(const ForwardProblem& p, const DeviceLimits& dev, int U,
                                  int stages, BackwardConfig* out) {
  BackwardConfig c;
  backward_try(p, dev, U, 1, 2, &c);
  c.stages = stages;
  c.reg_tiles = 0;
  const int64_t per_tile = 16 * static_cast<int64_t>(U) * c.elem_bytes;  // bytes of 16 K
  c.kres = 0;
  const int64_t base = backward_smem_layout(c).total;
  if (base > dev.smem_optin_per_block) return false;
  int64_t tiles = (dev.smem_optin_per_block - base) / per_tile;
  if (tiles >= c.kw / 16) return false;  // (it would fit whole: not a streamed plan)
  for (; tiles >= 0; --tiles) {  // (alignment: at most a step or two down)
    c.kres = static_cast<int>(16 * tiles);
    c.smem_bytes = backward_smem_layout(c).total;
    if (c.smem_bytes <= dev.smem_optin_per_block) {
      *out = c;
      return true;
    }
  }
  return false;
}

// Whether configuration c wants clusters: asked for (FUSED_RNN_CLUSTER 2 / 4
// / 8) or, under auto, where the per-CTA stream is at least
// kClusterMinStreamBytes per step; never before sm_90 or when 1 is asked for.
inline bool cluster_wanted(const ForwardProblem& p, const DeviceLimits& dev,
                           const BackwardConfig& c) {
  if (p.cluster == 1 || dev.cc_major < 9) return false;
  if (p.cluster > 1) return true;
  const int64_t rows = c.rows_per_slice < p.batch ? c.rows_per_slice : p.batch;
  return rows * c.kw * c.elem_bytes >= kClusterMinStreamBytes;
}

// Thread-block clusters (sm_90): the largest size of 8, 4, 2 (or the one
// requested, p.cluster) that divides the unit slices per layer-direction,
// fits shared memory with the cluster's barriers, and whose clusters are all
// co-resident; under auto only where the per-CTA stream is at least
// kClusterMinStreamBytes per step. Sets c->cluster (1: none) and returns a
// note for the plan string when a requested size could not be used.
inline std::string choose_cluster(const ForwardProblem& p, const DeviceLimits& dev,
                                  OccupancyFn occupancy, const void* occ_ctx,
                                  ClusterOccupancyFn cluster_occupancy, const void* cl_ctx,
                                  BackwardConfig* c) {
  c->cluster = 1;
  const int req = p.cluster;
  if (req == 1) return "";
  char note[160];
  auto refuse = [&](const char* why) -> std::string {
    if (req == 0) return "";
    snprintf(note, sizeof(note), "no cluster (%d requested: %s), ", req, why);
    return note;
  };
  if (dev.cc_major < 9) return refuse("clusters need sm_90");
  if (backward_streams(*c)) return refuse("part of the weights is streamed");
  if (!cluster_wanted(p, dev, *c)) return "";
  const int sizes[] = {8, 4, 2};
  for (int cs : sizes) {
    if (req != 0 && cs != req) continue;
    if (c->ctas_per_dir % cs != 0) {
      if (req != 0) return refuse("it does not divide the unit slices per layer-direction");
      continue;
    }
    BackwardConfig t = *c;
    t.cluster = cs;
    t.smem_bytes = backward_smem_layout(t).total;
    if (t.smem_bytes > dev.smem_optin_per_block) {
      if (req != 0) return refuse("its barriers do not fit shared memory");
      continue;
    }
    const int occ = occupancy(occ_ctx, t.smem_bytes);
    if (occ < 1) continue;
    const int64_t clusters = cluster_occupancy
                                 ? cluster_occupancy(cl_ctx, t.smem_bytes, t.grid, cs)
                                 : static_cast<int64_t>(dev.sm_count) * occ / cs;
    if (clusters * cs < t.grid) {
      if (req != 0) return refuse("its clusters are not all co-resident");
      continue;
    }
    t.blocks_per_sm = occ;
    *c = t;
    return "";
  }
  return refuse("not possible");
}

inline BackwardPlanResult plan_backward(const ForwardProblem& p, const DeviceLimits& dev,
                                        OccupancyFn occupancy, const void* occ_ctx,
                                        ClusterOccupancyFn cluster_occupancy = nullptr,
                                        const void* cl_ctx = nullptr) {
  using plan_detail::kb;
  BackwardPlanResult r;
  std::string why;
  if (!backward_coverage(p, dev, &why)) {
    r.reason = why;
    return r;
  }
  const int H = static_cast<int>(p.hidden_size);
  const int LD = p.layer_dirs();
  const int u_pref = H < 16 ? H : 16;
  const int u_max = H < 16 * kBackwardMaxMTiles ? H : 16 * kBackwardMaxMTiles;

  // Candidate U in order of preference: u_pref, then smaller (down to 1: more
  // CTAs, less shared memory each), then larger (up to u_max: fewer CTAs);
  // first with a pipeline of >= 3 stages (latency hiding), then >= 2.
  auto fits = [&](int U, int min_stages, BackwardConfig* cfg) -> bool {
    if (!backward_try(p, dev, U, 1, min_stages, cfg)) return false;
    const int occ = occupancy(occ_ctx, cfg->smem_bytes);
    if (occ < 1 || static_cast<int64_t>(occ) * dev.sm_count < cfg->grid) return false;
    cfg->blocks_per_sm = occ;
    return true;
  };
  BackwardConfig best;
  bool found = false;
  for (int min_stages = 3; min_stages >= 2 && !found; --min_stages) {
    int prev_u = -1;
    for (int C = static_cast<int>(ceil_div(H, u_pref)); C <= H && !found; ++C) {
      const int U = static_cast<int>(ceil_div(H, C));
      if (U == prev_u) continue;
      prev_u = U;
      // (a grid beyond every SM's capacity only grows from here)
      if (static_cast<int64_t>(LD) * C > static_cast<int64_t>(dev.sm_count) * 4) break;
      found = fits(U, min_stages, &best);
    }
    prev_u = -1;
    for (int C = static_cast<int>(ceil_div(H, u_pref)) - 1; C >= 1 && !found; --C) {
      const int U = static_cast<int>(ceil_div(H, C));
      if (U > u_max) break;
      if (U == prev_u || U <= u_pref) continue;
      prev_u = U;
      found = fits(U, min_stages, &best);
    }
  }
  // Clusters (choose_cluster) need a slice count with a divisor 8, 4 or 2.
  // Where the first fit has none (TF32 L=2 H=512: 57 slices of 9 units) and
  // clusters are wanted, take the nearest larger slice count that has one
  // (8 units: 64 slices) -- the same stream per CTA, a few more CTAs.
  if (found && best.ctas_per_dir % 2 != 0 && cluster_wanted(p, dev, best)) {
    bool moved = false;
    for (int div = 8; div >= 2 && !moved; div /= 2) {
      if (p.cluster > 1 && div != p.cluster) continue;
      for (int C = best.ctas_per_dir + 1; C <= 2 * best.ctas_per_dir && C <= H && !moved; ++C) {
        const int U = static_cast<int>(ceil_div(H, C));
        if (C % div != 0 || ceil_div(H, U) != C) continue;  // C slices of U units exactly
        BackwardConfig cand;
        if (fits(U, best.stages, &cand)) {
          best = cand;
          moved = true;
        }
      }
    }
  }
  // Nothing holds its whole weight tile: stream a share of it. The most unit
  // slices whose grid is co-resident (more SMs hold more of the weights), 3
  // stages where they fit (a streamed chunk is an L2 round trip), else 2.
  bool streamed = false;
  if (!found) {
    for (int st = 3; st >= 2 && !found; --st) {
      int prev_u = -1;
      const int64_t c_hi = static_cast<int64_t>(dev.sm_count) * 4 / LD;
      for (int64_t C = c_hi < H ? c_hi : H; C >= 1 && !found; --C) {
        const int U = static_cast<int>(ceil_div(H, C));
        if (U == prev_u) continue;
        prev_u = U;
        if (U > u_max) break;
        BackwardConfig cand;
        if (!backward_try_streamed(p, dev, U, st, &cand)) continue;
        const int occ = occupancy(occ_ctx, cand.smem_bytes);
        if (occ < 1 || static_cast<int64_t>(occ) * dev.sm_count < cand.grid) continue;
        cand.blocks_per_sm = occ;
        best = cand;
        found = streamed = true;
      }
    }
  }
  if (!found) {
    // Report the fewest units per CTA for which the grid fits (one CTA per SM)
    // and what that needs.
    const int64_t per_dir = dev.sm_count / LD;
    char buf[512];
    if (per_dir < 1) {
      snprintf(buf, sizeof(buf),
               "num_layers * directions = %d needs at least %d co-resident CTAs; the device has "
               "%d SMs", LD, LD, dev.sm_count);
      r.reason = buf;
      return r;
    }
    const int u_grid = static_cast<int>(ceil_div(H, per_dir));
    BackwardConfig probe;
    backward_try(p, dev, u_grid < 1 ? 1 : u_grid, 1, 2, &probe);
    snprintf(buf, sizeof(buf),
             "backward weights need %s of shared memory per CTA: at least %d units per CTA for "
             "%d layer-directions to fit on %d SMs, times K=%lld %s (the columns of W_hh and of "
             "the next layer's W_ih)%s; the device allows %s per CTA",
             kb(probe.smem_bytes).c_str(), u_grid, LD, dev.sm_count,
             static_cast<long long>(probe.kw), dtype_name(p.dtype),
             u_grid > u_max ? ", and the kernel takes at most 32 units per CTA" : "",
             kb(dev.smem_optin_per_block).c_str());
    r.reason = buf;
    return r;
  }
  // Batch slices: spread idle SMs over the batch (16-row slices); not with
  // streamed weights (their SMs are taken by the unit slices).
  if (!streamed) {
    const int64_t resident = static_cast<int64_t>(best.blocks_per_sm) * dev.sm_count;
    const int64_t max_slices = ceil_div(p.batch, 16);
    int64_t slices = resident / best.grid;
    if (slices > max_slices) slices = max_slices;
    for (; slices >= 2; --slices) {
      BackwardConfig c;
      if (!backward_try(p, dev, best.units_per_cta, static_cast<int>(slices), best.stages, &c))
        continue;
      const int occ = occupancy(occ_ctx, c.smem_bytes);
      if (occ < 1 || static_cast<int64_t>(occ) * dev.sm_count < c.grid) continue;
      c.blocks_per_sm = occ;
      best = c;
      break;
    }
  }
  const std::string note =
      choose_cluster(p, dev, occupancy, occ_ctx, cluster_occupancy, cl_ctx, &best);
  r.ok = true;
  r.cfg = best;
  r.reason = describe_backward(p, best, note);
  return r;
}

}  // namespace fused_rnn
