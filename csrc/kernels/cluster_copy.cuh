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
FRNN_DEVICE void bulk_copy_multicast(void* dst, const void* src, int bytes, uint64_t* bar,
                                     uint16_t mask) {
  ::emu::bulk_copy_multicast(dst, src, bytes, bar, mask);
}
FRNN_DEVICE void fence_proxy_async_global() {}

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

#else  // sm_80 (the planner never asks for a cluster there) and host passes

FRNN_DEVICE int cluster_rank() { return 0; }
FRNN_DEVICE void cluster_sync() {}
FRNN_DEVICE void mbar_init(uint64_t*, int) {}
FRNN_DEVICE void mbar_init_fence() {}
FRNN_DEVICE void mbar_arrive_expect_tx(uint64_t*, int) {}
FRNN_DEVICE void mbar_arrive_remote(uint64_t*, int) {}
FRNN_DEVICE void mbar_wait(uint64_t*, int) {}
FRNN_DEVICE void bulk_copy_multicast(void*, const void*, int, uint64_t*, uint16_t) {}
FRNN_DEVICE void fence_proxy_async_global() {}

#endif

}  // namespace fused_rnn
