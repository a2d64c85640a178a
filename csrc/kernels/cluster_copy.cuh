// Thread-block clusters (sm_90): one L2 read of a chunk feeds every CTA of a
// cluster. The backward's CTAs that need the same gate-gradient rows (the unit
// slices of one layer-direction and batch slice) form a cluster; for each
// chunk, each CTA copies a share of its rows with the bulk copy engine
// (cp.async.bulk ... .multicast::cluster) into the same shared-memory offset
// of EVERY CTA of the cluster, and the copies signal an mbarrier at that
// offset in each destination. So L2 serves each chunk once per cluster
// instead of once per CTA (backward_kernel.cuh, warp_item).
//
// Per warp and pipeline stage, two mbarriers in each CTA:
//   full   count 1: the local consumer warp's arrive.expect_tx(bytes of the
//          chunk) plus the complete_tx of every row copy that lands here (from
//          any CTA of the cluster). Its phase completing = the stage holds the chunk.
//   empty  count = cluster size: every consumer warp of the cluster (this
//          warp in each CTA) arrives, remotely (mapa), once it has read the
//          stage. A producer waits for it before it overwrites the stage in
//          every CTA -- the multicast writes into its peers' shared memory.
//          (For a stage's first fill it waits for the parity of the phase
//          "before" the first, which a fresh barrier reports as complete.)
// Before first use every CTA initialises its barriers, fences the init to the
// cluster and meets the cluster at a barrier; at the end the cluster meets
// again, so that no CTA exits while a peer may still arrive on its barriers.
//
// Gate gradients are written by ordinary (generic-proxy) stores and read by
// the bulk copies (async proxy): the writer fences (fence.proxy.async.global)
// before its step is published, the reader after it has waited.
//
// The host emulation (csrc/emu/emu_cluster.h, FRNN_EMULATION) models the
// cluster's barrier, shared-memory windows, mbarriers (arrival counts,
// transaction bytes, phases; GCC __atomic with the PTX orders, which
// ThreadSanitizer follows) and the multicast copy. FRNN_EMU_BREAK (common.h):
//   8  a producer does not wait for the empty barrier (overwrites a stage a
//      peer may still read)
//   9  a consumer does not wait for the full barrier (reads before the chunk landed)
//   10 the barrier waits are relaxed instead of acquire
//
// The forward's recurrence in a cluster (forward_kernel.cuh, ForwardConfig::
// cluster_rec) uses two more: st_async_v4 (st.async: 16 bytes into the same
// offset of a peer CTA's shared memory, with complete_tx(16) on the mbarrier at
// the same offset there -- the write and its signal in one instruction, the
// signal a release at cluster scope) and mbar_arrive_expect_tx by the receiver,
// which announces the bytes of a step before it waits. Broken variants in the
// emulation (FRNN_EMU_BREAK, forward_kernel.cuh): 11 the receiver arrives
// without announcing the bytes (no expect_tx), 12 it waits for the wrong parity,
// 13 it never arrives.
#pragma once

#include "common.h"

namespace fused_rnn {

// Whether this build can run the cluster path at all (the device code exists
// for sm_90 and later, and in the emulation).
#if defined(FRNN_EMULATION) || !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
#define FRNN_CLUSTER_CODE 1
#else
#define FRNN_CLUSTER_CODE 0
#endif

#if defined(FRNN_EMULATION)

FRNN_DEVICE int cluster_rank() { return ::emu::cluster_rank(); }
FRNN_DEVICE void cluster_sync() { ::emu::cluster_sync(); }
FRNN_DEVICE void mbar_init(uint64_t* bar, int count) { ::emu::mbar_init(bar, count); }
FRNN_DEVICE void mbar_init_fence() {}
FRNN_DEVICE void mbar_arrive_expect_tx(uint64_t* bar, int bytes) {
  ::emu::mbar_update(bar, 1, bytes);
}
FRNN_DEVICE void mbar_arrive_remote(uint64_t* bar, int rank) {
  ::emu::mbar_update(::emu::map_rank(bar, rank), 1, 0);
}
FRNN_DEVICE void mbar_wait(uint64_t* bar, int parity) {
  ::emu::mbar_wait(bar, parity, FRNN_EMU_BREAK == 10);
}
// (the emulation's watchdog bounds every wait)
FRNN_DEVICE void mbar_wait_bounded(uint64_t* bar, int parity) { mbar_wait(bar, parity); }
FRNN_DEVICE void bulk_copy_multicast(void* dst, const void* src, int bytes, uint64_t* bar,
                                     uint16_t mask) {
  ::emu::bulk_copy_multicast(dst, src, bytes, bar, mask);
}
FRNN_DEVICE void fence_proxy_async_global() {}
FRNN_DEVICE void st_async_v4(void* dst, int rank, uint4 v, uint64_t* bar) {
  ::emu::st_async(::emu::map_rank(dst, rank), &v, 16, ::emu::map_rank(bar, rank));
}

#elif FRNN_CLUSTER_CODE && defined(__CUDA_ARCH__)

FRNN_DEVICE uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
FRNN_DEVICE int cluster_rank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return static_cast<int>(r);
}
// Every thread of every CTA of the cluster; release / acquire at cluster scope.
FRNN_DEVICE void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;"
               ::: "memory");
}
FRNN_DEVICE void mbar_init(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)), "r"(count)
               : "memory");
}
// Makes this thread's mbarrier inits visible to the cluster (before the cluster barrier).
FRNN_DEVICE void mbar_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}
FRNN_DEVICE void mbar_arrive_expect_tx(uint64_t* bar, int bytes) {
  asm volatile("mbarrier.arrive.expect_tx.release.cta.shared::cta.b64 _, [%0], %1;"
               ::"r"(smem_u32(bar)), "r"(bytes) : "memory");
}
// Arrives on the barrier at the same offset in the shared memory of CTA `rank`.
FRNN_DEVICE void mbar_arrive_remote(uint64_t* bar, int rank) {
  asm volatile(
      "{\n\t.reg .b32 remote;\n\t"
      "mapa.shared::cluster.u32 remote, %0, %1;\n\t"
      "mbarrier.arrive.release.cluster.shared::cluster.b64 _, [remote];\n\t}"
      ::"r"(smem_u32(bar)), "r"(rank) : "memory");
}
// Returns once the phase of parity `parity` has completed (acquire, cluster scope).
FRNN_DEVICE void mbar_wait(uint64_t* bar, int parity) {
  asm volatile(
      "{\n\t.reg .pred done;\n\t"
      "WAIT_%=:\n\t"
      "mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 done, [%0], %1;\n\t"
      "@!done bra WAIT_%=;\n\t}"
      ::"r"(smem_u32(bar)), "r"(parity) : "memory");
}
// As mbar_wait, but a phase that does not complete within 2^26 tries (each try may
// suspend the thread for a hardware-chosen time) traps the kernel: an error, never a hung
// GPU (the forward's recurrence in a cluster, whose waits span only the skew between the
// CTAs of one layer; the flags' bound is of the same kind, sync_flags.cuh).
FRNN_DEVICE void mbar_wait_bounded(uint64_t* bar, int parity) {
  for (uint32_t tries = 0;; ++tries) {
    uint32_t done;
    asm volatile(
        "{\n\t.reg .pred p;\n\t"
        "mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2;\n\t"
        "selp.u32 %0, 1, 0, p;\n\t}"
        : "=r"(done) : "r"(smem_u32(bar)), "r"(parity) : "memory");
    if (done) return;
    if (tries == (1u << 26)) __trap();
  }
}
// `bytes` (a multiple of 16; both addresses 16-byte aligned) from global `src`
// to offset `dst` of the shared memory of every CTA in `mask`, signalling the
// barrier at offset `bar` in each of them with complete_tx(bytes).
FRNN_DEVICE void bulk_copy_multicast(void* dst, const void* src, int bytes, uint64_t* bar,
                                     uint16_t mask) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster "
      "[%0], [%1], %2, [%3], %4;" ::"r"(smem_u32(dst)), "l"(src), "r"(bytes),
      "r"(smem_u32(bar)), "h"(mask) : "memory");
}
// Orders this thread's generic-proxy global accesses with later (or, before a
// release, earlier) async-proxy ones: the bulk copies' reads of gate gradients.
FRNN_DEVICE void fence_proxy_async_global() {
  asm volatile("fence.proxy.async.global;" ::: "memory");
}
// st.async: the 16 bytes `v` to offset `dst` (16-byte aligned) of the shared
// memory of cluster CTA `rank`, and complete_tx(16) on the mbarrier at offset
// `bar` there (PTX ISA 8.1, sm_90). The store is weak; the complete_tx is a
// release at cluster scope, so a thread of `rank` that has waited for the
// barrier's phase (acquire) sees the bytes.
FRNN_DEVICE void st_async_v4(void* dst, int rank, uint4 v, uint64_t* bar) {
  asm volatile(
      "{\n\t.reg .b32 rdst, rbar;\n\t"
      "mapa.shared::cluster.u32 rdst, %0, %2;\n\t"
      "mapa.shared::cluster.u32 rbar, %1, %2;\n\t"
      "st.async.weak.shared::cluster.mbarrier::complete_tx::bytes.v4.b32 [rdst], "
      "{%3, %4, %5, %6}, [rbar];\n\t}"
      ::"r"(smem_u32(dst)), "r"(smem_u32(bar)), "r"(rank), "r"(v.x), "r"(v.y), "r"(v.z),
        "r"(v.w) : "memory");
}

#else  // sm_80 (the planner never asks for a cluster there) and host passes

FRNN_DEVICE int cluster_rank() { return 0; }
FRNN_DEVICE void cluster_sync() {}
FRNN_DEVICE void mbar_init(uint64_t*, int) {}
FRNN_DEVICE void mbar_init_fence() {}
FRNN_DEVICE void mbar_arrive_expect_tx(uint64_t*, int) {}
FRNN_DEVICE void mbar_arrive_remote(uint64_t*, int) {}
FRNN_DEVICE void mbar_wait(uint64_t*, int) {}
FRNN_DEVICE void mbar_wait_bounded(uint64_t*, int) {}
FRNN_DEVICE void bulk_copy_multicast(void*, const void*, int, uint64_t*, uint16_t) {}
FRNN_DEVICE void fence_proxy_async_global() {}
FRNN_DEVICE void st_async_v4(void*, int, uint4, uint64_t*) {}

#endif

// One cooperative launch of `fn` on `stream` in clusters of `cluster` consecutive CTAs
// (sm_90): cudaLaunchKernelEx with both the cluster-dimension and the cooperative
// attributes, so that every CTA is co-resident (the caller's planner checked with
// cudaOccupancyMaxActiveClusters that every cluster is). The emulation runs it on host
// threads (emu::launch_cooperative_cluster, defined by each driver).
inline cudaError_t launch_cooperative_clusters(const void* fn, int grid, int threads,
                                               int64_t smem_bytes, int cluster, void** args,
                                               cudaStream_t stream) {
#if defined(FRNN_EMULATION)
  return ::emu::launch_cooperative_cluster(fn, dim3(grid), dim3(threads), args,
                                           static_cast<size_t>(smem_bytes), stream, cluster);
#else
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(grid);
  config.blockDim = dim3(threads);
  config.dynamicSmemBytes = static_cast<size_t>(smem_bytes);
  config.stream = stream;
  cudaLaunchAttribute attrs[2];
  attrs[0].id = cudaLaunchAttributeClusterDimension;
  attrs[0].val.clusterDim.x = static_cast<unsigned>(cluster);
  attrs[0].val.clusterDim.y = 1;
  attrs[0].val.clusterDim.z = 1;
  attrs[1].id = cudaLaunchAttributeCooperative;
  attrs[1].val.cooperative = 1;
  config.attrs = attrs;
  config.numAttrs = 2;
  return cudaLaunchKernelExC(&config, fn, args);
#endif
}

}  // namespace fused_rnn
