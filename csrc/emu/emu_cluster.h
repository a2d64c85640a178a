// emu (see emu_cuda.h): thread-block clusters for csrc/kernels/cluster_copy.cuh
// -- the cluster's barrier, each CTA's window on its peers' shared memory
// (mapa), mbarriers with arrival counts, transaction bytes and phases, and the
// bulk copy multicast that fills the same offset in several CTAs' shared
// memory and signals their barriers.
//
// An mbarrier is the 8 bytes the kernel gives it in shared memory, updated
// with GCC __atomic read-modify-writes (acquire-release) and read with
// acquire loads, the orders PTX gives mbarrier arrive (release) and try_wait
// (acquire), so ThreadSanitizer sees exactly the happens-before they provide:
// a consumer that reads a stage without waiting for its barrier, or a
// producer that overwrites one without waiting, is a data race.
//   bits  0..31  pending transaction bytes (int32; negative while copies have
//                landed before the expect_tx that announces them)
//   bits 32..46  pending arrivals of the current phase
//   bits 47..61  arrivals per phase (the init count)
//   bit  62      initialised (shared memory starts as 0xFF bytes: a barrier
//                used before its init, or with garbage, aborts)
//   bit  63      the current phase's parity
// A phase completes when its pending arrivals and bytes are both 0: the
// parity flips and the arrivals are re-armed.
#pragma once

#include <sched.h>
#include <stdint.h>

namespace emu {

struct Cluster {
  Barrier* bar;            // all threads of the cluster's CTAs
  int size = 1;
  unsigned char** smem;    // each rank's shared memory
};

inline int cluster_rank() { return tl_cta->cluster_rank; }
inline void cluster_sync() {
  assert(tl_cta->cluster && "emu: not launched as a cluster");
  tl_cta->cluster->bar->wait("barrier.cluster");
}

// The address at the same offset in the shared memory of cluster rank `rank` (mapa).
template <typename T>
inline T* map_rank(T* local, int rank) {
  Cluster* c = tl_cta->cluster;
  assert(c && rank >= 0 && rank < c->size && "emu: mapa outside the cluster");
  const auto off = reinterpret_cast<unsigned char*>(local) - tl_cta->smem;
  assert(off >= 0 && static_cast<size_t>(off) < tl_cta->smem_bytes && "emu: mapa of a non-shared address");
  return reinterpret_cast<T*>(c->smem[rank] + off);
}

constexpr uint64_t kMbarInit = uint64_t(1) << 62;
constexpr uint64_t kMbarPhase = uint64_t(1) << 63;

inline void mbar_check_shared(const void* bar) {
  const auto off = static_cast<const unsigned char*>(bar) - tl_cta->smem;
  assert(off >= 0 && static_cast<size_t>(off) + 8 <= tl_cta->smem_bytes &&
         "emu: mbarrier outside the CTA's shared memory");
  assert(reinterpret_cast<uintptr_t>(bar) % 8 == 0 && "emu: mbarrier not 8-byte aligned");
}

inline void mbar_init(uint64_t* bar, int count) {
  mbar_check_shared(bar);
  assert(count >= 1 && count < (1 << 15));
  const uint64_t c = static_cast<uint64_t>(count);
  __atomic_store_n(bar, kMbarInit | (c << 47) | (c << 32), __ATOMIC_RELEASE);
}

// `arrivals` arrivals, and `tx` added to the pending transaction bytes:
// expect_tx(n) adds n, complete_tx(n) (a copy landing) adds -n.
inline void mbar_update(uint64_t* bar, int arrivals, int64_t tx) {
  uint64_t old = __atomic_load_n(bar, __ATOMIC_RELAXED);
  for (;;) {
    if (!(old & kMbarInit)) {
      fprintf(stderr, "emu: mbarrier used before its init\n");
      abort();
    }
    const int32_t bytes = static_cast<int32_t>(static_cast<uint32_t>(old)) + static_cast<int32_t>(tx);
    const int64_t count = static_cast<int64_t>((old >> 47) & 0x7FFF);
    int64_t pending = static_cast<int64_t>((old >> 32) & 0x7FFF) - arrivals;
    if (pending < 0) {
      fprintf(stderr, "emu: more mbarrier arrivals than its count in one phase\n");
      abort();
    }
    uint64_t phase = old & kMbarPhase;
    int32_t keep = bytes;
    if (pending == 0 && bytes == 0) {  // the phase completes
      phase ^= kMbarPhase;
      pending = count;
      keep = 0;
    }
    const uint64_t next = phase | kMbarInit | (static_cast<uint64_t>(count) << 47) |
                          (static_cast<uint64_t>(pending) << 32) | static_cast<uint32_t>(keep);
    if (__atomic_compare_exchange_n(bar, &old, next, false, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
      return;
  }
}

// try_wait.parity in a loop: returns once the phase of parity `parity` has
// completed (the current phase has the other parity). `relaxed`: a
// deliberately broken wait (FRNN_EMU_BREAK 10).
inline void mbar_wait(uint64_t* bar, int parity, bool relaxed) {
  mbar_check_shared(bar);
  const int order = relaxed ? __ATOMIC_RELAXED : __ATOMIC_ACQUIRE;
  const int64_t since = globaltimer_ns();
  for (;;) {
    const uint64_t v = __atomic_load_n(bar, order);
    if (!(v & kMbarInit)) {
      fprintf(stderr, "emu: mbarrier waited on before its init\n");
      abort();
    }
    if (static_cast<int>(v >> 63) != parity) return;
    if (globaltimer_ns() - since > watchdog_seconds() * 1000000000LL) {
      fprintf(stderr, "emu: deadlock waiting for an mbarrier phase (parity %d)\n", parity);
      abort();
    }
    sched_yield();
  }
}

// cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster:
// performed at once into every CTA of `mask` (same offset), then complete_tx
// on each destination's barrier (same offset).
inline void bulk_copy_multicast(void* dst, const void* src, int bytes, uint64_t* bar,
                                uint16_t mask) {
  assert(reinterpret_cast<uintptr_t>(dst) % 16 == 0 && "bulk copy: dst must be 16-byte aligned");
  assert(reinterpret_cast<uintptr_t>(src) % 16 == 0 && "bulk copy: src must be 16-byte aligned");
  assert(bytes > 0 && bytes % 16 == 0 && "bulk copy: size must be a positive multiple of 16");
  const auto off = static_cast<unsigned char*>(dst) - tl_cta->smem;
  assert(off >= 0 && static_cast<size_t>(off) + bytes <= tl_cta->smem_bytes &&
         "bulk copy: destination outside shared memory");
  mbar_check_shared(bar);
  Cluster* c = tl_cta->cluster;
  assert(c && "emu: multicast outside a cluster");
  assert(mask != 0 && (mask >> c->size) == 0 && "bulk copy: ctaMask names CTAs outside the cluster");
  for (int r = 0; r < c->size; ++r) {
    if (!(mask >> r & 1)) continue;
    memcpy(map_rank(dst, r), src, static_cast<size_t>(bytes));
    mbar_update(map_rank(bar, r), 0, -static_cast<int64_t>(bytes));
  }
}

// st.async.shared::cluster.mbarrier::complete_tx::bytes: `bytes` (4, 8 or 16,
// aligned to them) written at `dst` (a peer's shared memory, mapped), then
// complete_tx(bytes) on the barrier `bar` there (mapped; an acquire-release
// read-modify-write: the consumer that waits for the phase sees the bytes).
inline void st_async(void* dst, const void* src, int bytes, uint64_t* bar) {
  assert((bytes == 4 || bytes == 8 || bytes == 16) && "st.async: 4, 8 or 16 bytes");
  assert(reinterpret_cast<uintptr_t>(dst) % bytes == 0 && "st.async: address not aligned to its size");
  Cluster* c = tl_cta->cluster;
  assert(c && "emu: st.async outside a cluster");
  bool in_peer = false;
  for (int r = 0; r < c->size && !in_peer; ++r) {
    const auto off = static_cast<unsigned char*>(dst) - c->smem[r];
    in_peer = off >= 0 && static_cast<size_t>(off) + bytes <= tl_cta->smem_bytes;
  }
  assert(in_peer && "st.async: destination outside the cluster's shared memory");
  memcpy(dst, src, static_cast<size_t>(bytes));
  mbar_update(bar, 0, -static_cast<int64_t>(bytes));
}

}  // namespace emu
