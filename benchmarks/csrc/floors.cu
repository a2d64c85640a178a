// Micro-benchmarks of the synchronisation floors of a persistent RNN kernel.
//
// At small batch a fused stack is latency-bound: every wave step ends in one
// inter-CTA synchronisation, so (T + L - 1) x (one barrier) is its floor.
// These kernels measure that barrier on the current GPU:
//   - grid-wide barrier: cooperative_groups grid.sync() in a cooperatively
//     launched persistent kernel, one CTA per SM;
//   - cluster barrier (Hopper, sm_90+): cluster.sync() (barrier.cluster
//     arrive + wait) for a given cluster size, as many clusters as fit.
// With `exchange` set, each CTA also writes a few words for a neighbour before
// the barrier and reads its own after it (global memory for the grid,
// distributed shared memory for the cluster), as h_t is exchanged in the RNN.
//
// And the point-to-point policy of the forward kernel (SyncPolicy::kFlags),
// with its own primitives (csrc/kernels/sync_flags.cuh, included below:
// st.release.gpu publish, ld.acquire.gpu poll bounded by a trap after 2^26
// polls, one thread per counter then __syncthreads()):
//   - flag ping-pong: two CTAs, one per SM, hand a step counter back and
//     forth; one hand-off is half a round trip;
//   - wait for all C slices: C producer CTAs and a few consumer CTAs, one
//     per SM; each step every producer waits for the consumers' previous step
//     (pacing) then publishes its step, every consumer waits for all C
//     counters (thread i polls counter i) then publishes its step; the same
//     launch with one grid.sync() per step instead, for comparison.
// Every CTA of these two kernels asks for the largest dynamic shared memory
// a CTA may have, so no two share an SM; they are launched cooperatively, so
// all are co-resident (a spin on a CTA that never runs cannot happen), and
// they record %smid so the host can check that the SMs are distinct.
//
// And the exchange of a recurrence inside a thread-block cluster (Hopper),
// with the kernels' own primitives (csrc/kernels/cluster_copy.cuh, included
// below: st.async of 16 bytes into a peer CTA's shared memory with
// complete_tx on the peer's mbarrier, arrive.expect_tx by the receiver, a
// parity wait -- unbounded, as in the kernels):
//   - DSMEM ping-pong: a cluster of 2; 16 bytes pushed one way, then back;
//     one hand-off is half a round trip;
//   - DSMEM bandwidth: a cluster of 2; CTA 0 pushes N bytes per step into a
//     double buffer of CTA 1, which arrives remotely on CTA 0's barrier once
//     it has read them (flow control);
//   - DSMEM all-to-all: one cluster of n (16: the recurrence's); every step
//     each CTA pushes N bytes into every peer and waits for the (n - 1) N it
//     receives;
//   - co-resident clusters: cudaOccupancyMaxActiveClusters for a cluster size
//     and a dynamic shared memory size (the recurrence's CTAs hold ~200 KB).
// The DSMEM kernels' CTAs ask for the largest dynamic shared memory too, so
// the CTAs of a cluster sit on distinct SMs and the bytes cross between SMs
// as in the recurrence (they record %smid as well); they check the payload
// after each wait, so a wrong parity shows as an error, not as a fast number.
//
// Pure CUDA, no torch header: CI compiles this file with bare nvcc
// (tests/test_bench.py), and benchmarks/floors.py builds it at run time
// (torch.utils.cpp_extension.load) and calls the extern "C" functions below
// through ctypes. Each call times ONE launch of `iters` barriers with CUDA
// events; floors.py takes the difference of two iteration counts, so launch
// overhead cancels out.

#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <set>
#include <vector>

// The forward kernel's own synchronisation primitives (and, through it,
// csrc/kernels/common.h: no torch header, no CUDA header). Resolved relative
// to this file, so it works for torch's JIT build and for bare nvcc alike.
#include "../../csrc/kernels/sync_flags.cuh"
// The kernels' cluster primitives (mapa, st.async, mbarriers); stubs below
// sm_90, where the DSMEM kernels have no body and the host refuses them first.
#include "../../csrc/kernels/cluster_copy.cuh"

namespace cg = cooperative_groups;
using fused_rnn::flag_publish;
using fused_rnn::FlagRange;
using fused_rnn::lean_publish;
using fused_rnn::lean_wait_geq;
using fused_rnn::wait_for_ranges;
using fused_rnn::cluster_rank;
using fused_rnn::mbar_arrive_expect_tx;
using fused_rnn::mbar_arrive_remote;
using fused_rnn::mbar_init;
using fused_rnn::mbar_init_fence;
using fused_rnn::mbar_wait;
using fused_rnn::st_async_v4;

constexpr int kWords = 32;  // words exchanged per CTA and step (one warp's worth)
constexpr int kLine = 32;   // ints per 128-byte line: the ping-pong's two counters sit on two lines
constexpr int kBarBytes = 128;  // the DSMEM kernels' mbarriers, at the front of their dynamic
                                // shared memory; the slots follow, 16-byte aligned

// ---------------------------------------------------------------- kernels

__global__ void grid_sync_kernel(int iters, int exchange, unsigned* buf, unsigned* sink) {
  cg::grid_group grid = cg::this_grid();
  const unsigned nb = gridDim.x, b = blockIdx.x, next = (b + 1) % nb;
  unsigned acc = 0;
  for (int i = 0; i < iters; ++i) {
    // Double-buffered: slot (i & 1) of CTA `next` is read by it after this
    // barrier; we write that slot again only two barriers later.
    unsigned* slot = buf + ((size_t)(i & 1) * nb) * kWords;
    if (exchange && threadIdx.x < kWords) slot[next * kWords + threadIdx.x] = i + b;
    grid.sync();
    if (exchange && threadIdx.x < kWords) acc += __ldcg(slot + b * kWords + threadIdx.x);
  }
  if (threadIdx.x < kWords) sink[b * kWords + threadIdx.x] = acc;  // keep the reads alive
}

__global__ void cluster_sync_kernel(int iters, int exchange, unsigned* sink) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  __shared__ unsigned slots[2][kWords];
  cg::cluster_group cluster = cg::this_cluster();
  const unsigned n = cluster.num_blocks(), rank = cluster.block_rank();
  unsigned* peer = cluster.map_shared_rank(&slots[0][0], (rank + 1) % n);
  unsigned acc = 0;
  for (int i = 0; i < iters; ++i) {
    if (exchange && threadIdx.x < kWords) peer[(i & 1) * kWords + threadIdx.x] = i + rank;
    cluster.sync();
    if (exchange && threadIdx.x < kWords) acc += slots[i & 1][threadIdx.x];
  }
  cluster.sync();  // no CTA may exit while a peer can still write into its shared memory
  if (threadIdx.x < kWords) sink[blockIdx.x * kWords + threadIdx.x] = acc;
#endif
}

__device__ __forceinline__ int sm_id() {
  int id;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(id));
  return id;
}

// Two CTAs (one per SM), counters flags[0] (CTA 0) and flags[kLine] (CTA 1).
// Step i: CTA 0 publishes i, CTA 1 waits for it and publishes i, CTA 0 waits
// for that. Each side is the forward kernel's step with the work removed:
// wait (one thread polls, CTA barrier), CTA barrier, one thread publishes.
// One step = one round trip = two hand-offs.
__global__ void flag_pingpong_kernel(int iters, int* flags, int* smids) {
  const int me = blockIdx.x;  // 0 or 1: uniform in the CTA, so the barriers below are too
  if (threadIdx.x == 0) smids[me] = sm_id();
  for (int i = 1; i <= iters; ++i) {
    const FlagRange other{(1 - me) * kLine, 1, i};
    if (me == 1) wait_for_ranges(flags, other, FlagRange{}, FlagRange{}, blockDim.x);
    __syncthreads();
    if (threadIdx.x == 0) flag_publish(flags + me * kLine, i);
    if (me == 0) wait_for_ranges(flags, other, FlagRange{}, FlagRange{}, blockDim.x);
  }
}

// Per-CTA counters, polled relaxed with one acquire fence after the wait (the
// variant between the kFlags protocol and the lean one; the lean protocol's
// bounded wait, sync_flags.cuh, on each counter): thread i waits for counter
// first + i; CTA barrier.
__device__ void wait_relaxed_fence(const int* flags, int first, int count, int target) {
  for (int i = threadIdx.x; i < count; i += blockDim.x) lean_wait_geq(flags + first + i, target);
  __syncthreads();
}

// CTAs [0, producers) are producers, [producers, producers + consumers)
// consumers.
//   mode 0 (kWaitAcquire): CTA b's counter is flags[b] (contiguous, as in the
//                 forward kernel: a warp polls 32 producer counters in one
//                 128-byte load). Step k, producer: wait until every consumer
//                 counter >= k - 1 (the step before: pacing), barrier, publish
//                 k; consumer: wait until every producer counter >= k (thread
//                 i polls counter i, acquire per poll), barrier, publish k.
//   mode 1 (kWaitGrid): the same loop, the same CTAs, with one grid.sync() per
//                 step as the only synchronisation (the kGrid policy's step).
//   mode 2 (kWaitRelaxedFence): as mode 0, each poll relaxed and one
//                 fence.acq_rel.gpu after it.
//   mode 3 (kWaitOneCounter): the lean protocol (sync_flags.cuh): one counter
//                 for all producers (flags[0]) and one for the consumers
//                 (flags[kLine]), each on its own line, advanced by
//                 red.release adds; one thread waits for producers x k
//                 (consumers x (k - 1)), relaxed polls, one fence.
__global__ void flag_wait_all_kernel(int iters, int producers, int consumers, int mode, int* flags,
                                     int* smids) {
  const int b = blockIdx.x;
  if (threadIdx.x == 0) smids[b] = sm_id();
  if (mode == 1) {
    cg::grid_group grid = cg::this_grid();
    for (int k = 1; k <= iters; ++k) grid.sync();
    return;
  }
  const bool consumer = b >= producers;  // uniform in the CTA
  for (int k = 1; k <= iters; ++k) {
    if (mode == 3) {
      if (threadIdx.x == 0) {
        if (consumer) lean_wait_geq(flags, producers * k);
        else lean_wait_geq(flags + kLine, consumers * (k - 1));
      }
      __syncthreads();
      __syncthreads();  // (the data barrier before the publish, as below)
      if (threadIdx.x == 0) lean_publish(flags + (consumer ? kLine : 0), 1);
      continue;
    }
    if (mode == 2) {
      if (consumer) wait_relaxed_fence(flags, 0, producers, k);
      else wait_relaxed_fence(flags, producers, consumers, k - 1);
    } else if (consumer) {
      wait_for_ranges(flags, FlagRange{0, producers, k}, FlagRange{}, FlagRange{}, blockDim.x);
    } else {
      wait_for_ranges(flags, FlagRange{producers, consumers, k - 1}, FlagRange{}, FlagRange{}, blockDim.x);
    }
    __syncthreads();
    if (threadIdx.x == 0) flag_publish(flags + b, k);
  }
}

// The ping-pong (flag_pingpong_kernel) with `stores` global stores per thread
// before each publish (distinct words of `scratch`, 256 threads x stores per
// CTA): how long a publish (st.release: a memory barrier that waits for the
// CTA's outstanding stores) takes behind the stores of an epilogue.
__global__ void flag_stores_pingpong_kernel(int iters, int stores, int* flags, int* scratch,
                                            int* smids) {
  const int me = blockIdx.x;
  if (threadIdx.x == 0) smids[me] = sm_id();
  int* mine = scratch + (size_t)me * stores * blockDim.x;
  for (int i = 1; i <= iters; ++i) {
    const FlagRange other{(1 - me) * kLine, 1, i};
    if (me == 1) wait_for_ranges(flags, other, FlagRange{}, FlagRange{}, blockDim.x);
    for (int s = 0; s < stores; ++s) mine[(size_t)s * blockDim.x + threadIdx.x] = i;
    __syncthreads();
    if (threadIdx.x == 0) flag_publish(flags + me * kLine, i);
    if (me == 0) wait_for_ranges(flags, other, FlagRange{}, FlagRange{}, blockDim.x);
  }
}

// ------------------------------------------------ DSMEM pushes (clusters, sm_90)
//
// A receiver's slot s (step i uses slot i & 1) has its own mbarrier, count 1:
// the receiver's arrive.expect_tx(bytes of the step) is its only arrival, the
// senders' st.async complete_tx the bytes. So step i is phase i >> 1 of its
// barrier, and mbar_wait(bar, (i >> 1) & 1) returns once that phase completed.
// A barrier must never run two phases ahead of a thread that waits on it (the
// parity would then name a phase that has not completed): each kernel below
// says why it cannot. Every kernel initialises its barriers, fences the init
// to the cluster and meets the cluster before the first push, and meets it
// again at the end, so no CTA exits while a peer may still push into it.

// Both CTAs of a 2-CTA cluster. Step i: CTA 0 pushes 16 bytes into slot i & 1
// of CTA 1; CTA 1 waits for them and pushes 16 bytes back into the same slot of
// CTA 0, which waits for those. Each side is a recurrence step with the work
// removed: every thread waits (every thread reads h), CTA barrier, one thread
// pushes. One step = one round trip = two hand-offs. The CTA barrier also keeps
// every waiter within a phase of the barrier: the next push into this CTA comes
// after this CTA's own push, which comes after it.
__global__ void dsmem_pingpong_kernel(int iters, int* smids, int* bad) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(16) unsigned char smem[];
  uint64_t* bar = reinterpret_cast<uint64_t*>(smem);        // [2]
  uint4* slot = reinterpret_cast<uint4*>(smem + kBarBytes);  // [2]
  const int me = cluster_rank(), peer = 1 - me;  // uniform in the CTA, so the barriers below are too
  if (threadIdx.x == 0) {
    smids[me] = sm_id();
    mbar_init(bar, 1);
    mbar_init(bar + 1, 1);
    mbar_init_fence();
  }
  fused_rnn::cluster_sync();
  for (int i = 0; i < iters; ++i) {
    const int s = i & 1;
    if (threadIdx.x == 0) {
      mbar_arrive_expect_tx(bar + s, 16);  // (phase (i >> 1) - 1 of it completed two steps ago)
      if (me == 0) st_async_v4(slot + s, peer, make_uint4(i, 0, 0, 0), bar + s);
    }
    mbar_wait(bar + s, (i >> 1) & 1);
    if (threadIdx.x == 0 && slot[s].x != (unsigned)i) atomicAdd(bad, 1);
    __syncthreads();
    if (me == 1 && threadIdx.x == 0) st_async_v4(slot + s, peer, make_uint4(i, 1, 0, 0), bar + s);
  }
  fused_rnn::cluster_sync();
#endif
}

// Both CTAs of a 2-CTA cluster. Step i: CTA 0 pushes `bytes` into buffer i & 1
// of CTA 1, the 16-byte pieces spread over its threads (st.async); CTA 1
// announces them, waits, checks one piece per thread, meets at a CTA barrier
// and arrives remotely on CTA 0's `empty` barrier of that buffer. CTA 0 waits
// for that before it refills the buffer two steps later, so no push overwrites
// bytes CTA 1 has not read. Only CTA 0's threads that push wait on `empty`: its
// next phase needs their pushes, so it cannot run ahead of them (a thread
// without pieces could fall two phases behind). CTA 1's waiters are held by its
// CTA barrier before the remote arrive, as in the ping-pong.
__global__ void dsmem_bandwidth_kernel(int iters, int bytes, int* smids, int* bad) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(16) unsigned char smem[];
  uint64_t* full = reinterpret_cast<uint64_t*>(smem);  // [2], used in CTA 1
  uint64_t* empty = full + 2;                          // [2], used in CTA 0
  const int me = cluster_rank(), vecs = bytes / 16;
  if (threadIdx.x == 0) {
    smids[me] = sm_id();
    for (int s = 0; s < 2; ++s) {
      mbar_init(full + s, 1);
      mbar_init(empty + s, 1);
    }
    mbar_init_fence();
  }
  fused_rnn::cluster_sync();
  for (int i = 0; i < iters; ++i) {
    const int s = i & 1, k = i >> 1;  // fill k of buffer s
    uint4* buf = reinterpret_cast<uint4*>(smem + kBarBytes + (size_t)s * bytes);
    if (me == 0) {
      if ((int)threadIdx.x < vecs) {
        // CTA 1 has read fill k - 1 (phase k - 1 of `empty`); for k = 0 the
        // parity of the phase before the first, which a fresh barrier reports complete
        mbar_wait(empty + s, (k & 1) ^ 1);
        for (int e = threadIdx.x; e < vecs; e += blockDim.x)
          st_async_v4(buf + e, 1, make_uint4(i, e, 0, 0), full + s);
      }
    } else {
      if (threadIdx.x == 0) mbar_arrive_expect_tx(full + s, bytes);
      mbar_wait(full + s, k & 1);
      const int e = threadIdx.x % vecs;
      const uint4 v = buf[e];
      if (v.x != (unsigned)i || v.y != (unsigned)e) atomicAdd(bad, 1);
      __syncthreads();
      if (threadIdx.x == 0) mbar_arrive_remote(empty + s, 0);
    }
  }
  fused_rnn::cluster_sync();
#endif
}

// One cluster of n CTAs, the recurrence's exchange. Step i: every CTA pushes
// `bytes` (its slice of h) into region `rank` of slot i & 1 of each of its
// n - 1 peers (peer rank + 1, rank + 2, ... first, so not all start at rank 0),
// announces the (n - 1) x bytes it receives, waits for them, checks one piece
// per thread, CTA barrier. No back-signal: a peer pushes step i + 2 into a slot
// only after it has received step i + 1 from this CTA, which this CTA pushes
// after its CTA barrier of step i -- after every thread here has read step i
// and has passed its wait (so no waiter falls two phases behind either).
__global__ void dsmem_all_to_all_kernel(int iters, int bytes, int* smids, int* bad) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(16) unsigned char smem[];
  uint64_t* full = reinterpret_cast<uint64_t*>(smem);  // [2]
  const int n = (int)cg::this_cluster().num_blocks(), me = cluster_rank();
  const int vecs = bytes / 16, pieces = (n - 1) * vecs;
  if (threadIdx.x == 0) {
    smids[me] = sm_id();
    mbar_init(full, 1);
    mbar_init(full + 1, 1);
    mbar_init_fence();
  }
  fused_rnn::cluster_sync();
  for (int i = 0; i < iters; ++i) {
    const int s = i & 1;
    uint4* slot = reinterpret_cast<uint4*>(smem + kBarBytes + (size_t)s * n * bytes);  // [n][vecs]
    if (threadIdx.x == 0) mbar_arrive_expect_tx(full + s, pieces * 16);
    for (int j = threadIdx.x; j < pieces; j += blockDim.x) {
      const int p = j / vecs, e = j - p * vecs;
      st_async_v4(slot + me * vecs + e, (me + 1 + p) % n, make_uint4(i, me, e, 0), full + s);
    }
    mbar_wait(full + s, (i >> 1) & 1);
    if (pieces > 0) {
      const int j = threadIdx.x % pieces, p = j / vecs, e = j - p * vecs, src = (me + 1 + p) % n;
      const uint4 v = slot[src * vecs + e];
      if (v.x != (unsigned)i || v.y != (unsigned)src || v.z != (unsigned)e) atomicAdd(bad, 1);
    }
    __syncthreads();
  }
  fused_rnn::cluster_sync();
#endif
}

// ------------------------------------------------------------ host helpers

#define FLOORS_CHECK(expr)                     \
  do {                                         \
    cudaError_t err_ = (expr);                 \
    if (err_ != cudaSuccess) return (int)err_; \
  } while (0)

namespace {

struct Timer {
  cudaEvent_t start = nullptr, stop = nullptr;
  ~Timer() {
    if (start) cudaEventDestroy(start);
    if (stop) cudaEventDestroy(stop);
  }
};

struct DeviceInts {  // a zeroed device array, freed on scope exit
  int* p = nullptr;
  ~DeviceInts() {
    if (p) cudaFree(p);
  }
  cudaError_t alloc(int n) {
    cudaError_t err = cudaMalloc(&p, sizeof(int) * n);
    return err == cudaSuccess ? cudaMemset(p, 0, sizeof(int) * n) : err;
  }
};

// Errors of our own (negative, beside cudaError_t's codes): floors_error_string names them.
constexpr int kErrCounters = -1;  // a counter did not end at the step count: a broken wait
constexpr int kErrPayload = -2;   // a DSMEM payload was not there after its mbarrier wait
constexpr int kErrNoFit = -3;     // no such cluster can be co-resident on this GPU

// Asks for the largest dynamic shared memory a CTA may have, so no two CTAs of
// `func` fit on one SM; checks that the occupancy query agrees (1 per SM).
cudaError_t one_cta_per_sm(const void* func, int device, int threads, int* smem) {
  int optin = 0, per_sm = 0;
  cudaError_t err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err == cudaSuccess) err = cudaFuncSetAttribute(func, cudaFuncAttributeMaxDynamicSharedMemorySize, optin);
  if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, func, threads, optin);
  if (err == cudaSuccess && per_sm != 1) err = per_sm < 1 ? cudaErrorCooperativeLaunchTooLarge : cudaErrorNotSupported;
  *smem = optin;
  return err;
}

// One cooperative launch of `blocks` CTAs between CUDA events; its time in ms.
cudaError_t timed_cooperative_launch(const void* func, int blocks, int threads, int smem, void** args,
                                     float* ms) {
  Timer t;
  cudaError_t err = cudaEventCreate(&t.start);
  if (err == cudaSuccess) err = cudaEventCreate(&t.stop);
  if (err == cudaSuccess) err = cudaEventRecord(t.start, 0);
  if (err == cudaSuccess)
    err = cudaLaunchCooperativeKernel(func, dim3(blocks), dim3(threads), args, (size_t)smem, 0);
  if (err == cudaSuccess) err = cudaEventRecord(t.stop, 0);
  if (err == cudaSuccess) err = cudaEventSynchronize(t.stop);
  if (err == cudaSuccess) err = cudaGetLastError();
  if (err == cudaSuccess) err = cudaEventElapsedTime(ms, t.start, t.stop);
  return err;
}

// Host copy of n device ints.
cudaError_t to_host(std::vector<int>& out, const int* src, int n) {
  out.assign(n, -1);
  return cudaMemcpy(out.data(), src, sizeof(int) * n, cudaMemcpyDeviceToHost);
}

// Thread-block clusters need sm_90; cudaErrorNotSupported below.
cudaError_t needs_clusters(int device) {
  int major = 0;
  cudaError_t err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  return err == cudaSuccess && major < 9 ? cudaErrorNotSupported : err;
}

// Sets `func` up for clusters of `size` CTAs (above 8: non-portable, Hopper
// allows 16) of `threads` threads with `smem` bytes of dynamic shared memory,
// and fills `cfg` (its cluster dimension in `attr`) for `clusters` of them;
// *fit: how many such clusters can be co-resident (the occupancy query).
cudaError_t cluster_config(const void* func, int size, int threads, int smem, int clusters,
                           cudaLaunchAttribute* attr, cudaLaunchConfig_t* cfg, int* fit) {
  *fit = 0;
  cudaError_t err = cudaSuccess;
  if (size > 8) err = cudaFuncSetAttribute(func, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
  if (err == cudaSuccess) err = cudaFuncSetAttribute(func, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  attr->id = cudaLaunchAttributeClusterDimension;
  attr->val.clusterDim.x = size;
  attr->val.clusterDim.y = 1;
  attr->val.clusterDim.z = 1;
  *cfg = cudaLaunchConfig_t{};
  cfg->gridDim = dim3(size * clusters);
  cfg->blockDim = dim3(threads);
  cfg->dynamicSmemBytes = (size_t)smem;
  cfg->attrs = attr;
  cfg->numAttrs = 1;
  if (err == cudaSuccess) err = cudaOccupancyMaxActiveClusters(fit, func, cfg);
  return err;
}

// One launch of ONE cluster of `size` CTAs of `func` between CUDA events, each
// CTA with the largest dynamic shared memory a CTA may have (so no two share an
// SM; at least `need` bytes); its time in ms. kErrNoFit where no such cluster fits.
int timed_cluster_launch(const void* func, int device, int size, int threads, int need, void** args,
                         float* ms) {
  FLOORS_CHECK(needs_clusters(device));
  int optin = 0, fit = 0;
  FLOORS_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  if (need > optin) return (int)cudaErrorInvalidValue;
  cudaLaunchAttribute attr;
  cudaLaunchConfig_t cfg;
  FLOORS_CHECK(cluster_config(func, size, threads, optin, 1, &attr, &cfg, &fit));
  if (fit < 1) return kErrNoFit;
  Timer t;
  FLOORS_CHECK(cudaEventCreate(&t.start));
  FLOORS_CHECK(cudaEventCreate(&t.stop));
  FLOORS_CHECK(cudaEventRecord(t.start, 0));
  FLOORS_CHECK(cudaLaunchKernelExC(&cfg, func, args));
  FLOORS_CHECK(cudaEventRecord(t.stop, 0));
  FLOORS_CHECK(cudaEventSynchronize(t.stop));
  FLOORS_CHECK(cudaGetLastError());
  FLOORS_CHECK(cudaEventElapsedTime(ms, t.start, t.stop));
  return 0;
}

}  // namespace

extern "C" {

// Name of a cudaError_t (or of one of our negative codes) returned by the functions below.
const char* floors_error_string(int code) {
  if (code == kErrCounters) return "a step counter did not end at the step count (broken wait)";
  if (code == kErrPayload) return "a DSMEM payload was not there after its mbarrier wait (broken wait)";
  if (code == kErrNoFit)
    return "no such cluster can be co-resident on this GPU (cudaOccupancyMaxActiveClusters = 0)";
  return cudaGetErrorString((cudaError_t)code);
}

// The device's number of SMs.
int floors_sm_count(int device, int* sms) {
  *sms = 0;
  return (int)cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, device);
}

// One cooperative launch, one CTA of `threads` threads per SM, `iters` grid
// barriers. Writes the launch's time in ms and the number of CTAs.
int floors_grid_sync(int device, int threads, int iters, int exchange, float* ms, int* blocks) {
  FLOORS_CHECK(cudaSetDevice(device));
  int coop = 0, sms = 0, per_sm = 0;
  FLOORS_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device));
  if (!coop) return (int)cudaErrorNotSupported;
  FLOORS_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  FLOORS_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, grid_sync_kernel, threads, 0));
  if (per_sm < 1) return (int)cudaErrorCooperativeLaunchTooLarge;
  *blocks = sms;

  unsigned *buf = nullptr, *sink = nullptr;
  FLOORS_CHECK(cudaMalloc(&buf, sizeof(unsigned) * 2 * sms * kWords));
  cudaError_t err = cudaMalloc(&sink, sizeof(unsigned) * sms * kWords);
  Timer t;
  if (err == cudaSuccess) err = cudaMemset(buf, 0, sizeof(unsigned) * 2 * sms * kWords);
  if (err == cudaSuccess) err = cudaEventCreate(&t.start);
  if (err == cudaSuccess) err = cudaEventCreate(&t.stop);
  void* args[] = {&iters, &exchange, &buf, &sink};
  if (err == cudaSuccess) err = cudaEventRecord(t.start, 0);
  if (err == cudaSuccess)
    err = cudaLaunchCooperativeKernel((void*)grid_sync_kernel, dim3(sms), dim3(threads), args, 0, 0);
  if (err == cudaSuccess) err = cudaEventRecord(t.stop, 0);
  if (err == cudaSuccess) err = cudaEventSynchronize(t.stop);
  if (err == cudaSuccess) err = cudaGetLastError();
  if (err == cudaSuccess) err = cudaEventElapsedTime(ms, t.start, t.stop);
  cudaFree(buf);
  if (sink) cudaFree(sink);
  return (int)err;
}

// One launch of as many co-resident clusters of `cluster_size` CTAs as fit,
// `iters` cluster barriers. Sizes above 8 are non-portable (Hopper allows 16).
// Writes the launch's time in ms and the number of clusters (0 and
// cudaErrorNotSupported where the size cannot be scheduled).
int floors_cluster_sync(int device, int cluster_size, int threads, int iters, int exchange,
                        float* ms, int* clusters) {
  FLOORS_CHECK(cudaSetDevice(device));
  *clusters = 0;
  int major = 0;
  FLOORS_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  if (major < 9) return (int)cudaErrorNotSupported;
  if (cluster_size > 8)
    FLOORS_CHECK(cudaFuncSetAttribute(cluster_sync_kernel,
                                      cudaFuncAttributeNonPortableClusterSizeAllowed, 1));

  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = cluster_size;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(cluster_size);
  cfg.blockDim = dim3(threads);
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  int n = 0;
  FLOORS_CHECK(cudaOccupancyMaxActiveClusters(&n, cluster_sync_kernel, &cfg));
  if (n < 1) return (int)cudaErrorNotSupported;
  *clusters = n;
  cfg.gridDim = dim3(cluster_size * n);

  unsigned* sink = nullptr;
  FLOORS_CHECK(cudaMalloc(&sink, sizeof(unsigned) * cluster_size * n * kWords));
  Timer t;
  cudaError_t err = cudaEventCreate(&t.start);
  if (err == cudaSuccess) err = cudaEventCreate(&t.stop);
  if (err == cudaSuccess) err = cudaEventRecord(t.start, 0);
  if (err == cudaSuccess) err = cudaLaunchKernelEx(&cfg, cluster_sync_kernel, iters, exchange, sink);
  if (err == cudaSuccess) err = cudaEventRecord(t.stop, 0);
  if (err == cudaSuccess) err = cudaEventSynchronize(t.stop);
  if (err == cudaSuccess) err = cudaGetLastError();
  if (err == cudaSuccess) err = cudaEventElapsedTime(ms, t.start, t.stop);
  cudaFree(sink);
  return (int)err;
}

// Flag ping-pong: one cooperative launch of 2 CTAs of `threads` threads, one
// per SM (their SM ids in sm0, sm1), `iters` round trips of a step counter.
// Writes the launch's time in ms.
int floors_flag_pingpong(int device, int threads, int iters, float* ms, int* sm0, int* sm1) {
  *sm0 = *sm1 = -1;
  FLOORS_CHECK(cudaSetDevice(device));
  int coop = 0, smem = 0;
  FLOORS_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device));
  if (!coop) return (int)cudaErrorNotSupported;
  FLOORS_CHECK(one_cta_per_sm((const void*)flag_pingpong_kernel, device, threads, &smem));
  DeviceInts flags, smids;
  FLOORS_CHECK(flags.alloc(2 * kLine));
  FLOORS_CHECK(smids.alloc(2));
  void* args[] = {&iters, &flags.p, &smids.p};
  FLOORS_CHECK(timed_cooperative_launch((const void*)flag_pingpong_kernel, 2, threads, smem, args, ms));
  std::vector<int> f, id;
  FLOORS_CHECK(to_host(f, flags.p, 2 * kLine));
  FLOORS_CHECK(to_host(id, smids.p, 2));
  *sm0 = id[0];
  *sm1 = id[1];
  return f[0] == iters && f[kLine] == iters ? 0 : kErrCounters;
}

// Wait for all C slices: one cooperative launch of `producers` + `consumers`
// CTAs of `threads` threads, one per SM, `iters` steps of flag_wait_all_kernel
// (mode, see there: 0 step counters with acquire polls; 1 one grid.sync() per
// step; 2 step counters, relaxed polls + one fence; 3 one counter per side,
// red.release adds). Writes the launch's time in ms and the number of
// distinct SMs the CTAs ran on.
int floors_flag_wait_all(int device, int producers, int consumers, int threads, int iters, int mode,
                         float* ms, int* distinct_sms) {
  *distinct_sms = 0;
  FLOORS_CHECK(cudaSetDevice(device));
  if (producers < 1 || consumers < 1 || mode < 0 || mode > 3) return (int)cudaErrorInvalidValue;
  const int blocks = producers + consumers;
  int coop = 0, sms = 0, smem = 0;
  FLOORS_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device));
  if (!coop) return (int)cudaErrorNotSupported;
  FLOORS_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  if (blocks > sms) return (int)cudaErrorCooperativeLaunchTooLarge;
  FLOORS_CHECK(one_cta_per_sm((const void*)flag_wait_all_kernel, device, threads, &smem));
  DeviceInts flags, smids;
  const int words = blocks > 2 * kLine ? blocks : 2 * kLine;
  FLOORS_CHECK(flags.alloc(words));
  FLOORS_CHECK(smids.alloc(blocks));
  void* args[] = {&iters, &producers, &consumers, &mode, &flags.p, &smids.p};
  FLOORS_CHECK(timed_cooperative_launch((const void*)flag_wait_all_kernel, blocks, threads, smem, args, ms));
  std::vector<int> f, id;
  FLOORS_CHECK(to_host(f, flags.p, words));
  FLOORS_CHECK(to_host(id, smids.p, blocks));
  *distinct_sms = (int)std::set<int>(id.begin(), id.end()).size();
  if (mode == 3) {
    if (f[0] != producers * iters || f[kLine] != consumers * iters) return kErrCounters;
  } else if (mode != 1) {
    for (int b = 0; b < blocks; ++b)
      if (f[b] != iters) return kErrCounters;
  }
  return 0;
}

// The ping-pong with `stores` global stores per thread before each publish
// (flag_stores_pingpong_kernel): ms of the launch and the two CTAs' SMs.
int floors_flag_stores_pingpong(int device, int threads, int stores, int iters, float* ms, int* sm0,
                                int* sm1) {
  FLOORS_CHECK(cudaSetDevice(device));
  if (stores < 0) return (int)cudaErrorInvalidValue;
  int smem = 0;
  FLOORS_CHECK(one_cta_per_sm((const void*)flag_stores_pingpong_kernel, device, threads, &smem));
  DeviceInts flags, scratch, smids;
  FLOORS_CHECK(flags.alloc(2 * kLine));
  FLOORS_CHECK(scratch.alloc(2 * threads * (stores > 0 ? stores : 1)));
  FLOORS_CHECK(smids.alloc(2));
  void* args[] = {&iters, &stores, &flags.p, &scratch.p, &smids.p};
  FLOORS_CHECK(timed_cooperative_launch((const void*)flag_stores_pingpong_kernel, 2, threads, smem, args, ms));
  std::vector<int> f, id;
  FLOORS_CHECK(to_host(f, flags.p, 2 * kLine));
  FLOORS_CHECK(to_host(id, smids.p, 2));
  *sm0 = id[0];
  *sm1 = id[1];
  return f[0] == iters && f[kLine] == iters ? 0 : kErrCounters;
}

// DSMEM ping-pong: one cluster of 2 CTAs of `threads` threads, each on its own
// SM (their SM ids in sm0, sm1), `iters` round trips of 16 bytes
// (dsmem_pingpong_kernel). Writes the launch's time in ms.
int floors_dsmem_pingpong(int device, int threads, int iters, float* ms, int* sm0, int* sm1) {
  *sm0 = *sm1 = -1;
  FLOORS_CHECK(cudaSetDevice(device));
  DeviceInts smids, bad;
  FLOORS_CHECK(smids.alloc(2));
  FLOORS_CHECK(bad.alloc(1));
  void* args[] = {&iters, &smids.p, &bad.p};
  const int need = kBarBytes + 2 * 16;
  if (int err = timed_cluster_launch((const void*)dsmem_pingpong_kernel, device, 2, threads, need, args, ms))
    return err;
  std::vector<int> id, b;
  FLOORS_CHECK(to_host(id, smids.p, 2));
  FLOORS_CHECK(to_host(b, bad.p, 1));
  *sm0 = id[0];
  *sm1 = id[1];
  return b[0] == 0 ? 0 : kErrPayload;
}

// DSMEM bandwidth: one cluster of 2 CTAs of `threads` threads, each on its own
// SM, `iters` steps of `bytes` (a multiple of 16) pushed from CTA 0 into CTA 1
// (dsmem_bandwidth_kernel). Writes the launch's time in ms and the SM ids.
int floors_dsmem_bandwidth(int device, int threads, int bytes, int iters, float* ms, int* sm0, int* sm1) {
  *sm0 = *sm1 = -1;
  FLOORS_CHECK(cudaSetDevice(device));
  // (an mbarrier's transaction count holds less than 2^20 bytes)
  if (bytes < 16 || bytes % 16 || bytes >= (1 << 20)) return (int)cudaErrorInvalidValue;
  DeviceInts smids, bad;
  FLOORS_CHECK(smids.alloc(2));
  FLOORS_CHECK(bad.alloc(1));
  void* args[] = {&iters, &bytes, &smids.p, &bad.p};
  const int need = kBarBytes + 2 * bytes;
  if (int err = timed_cluster_launch((const void*)dsmem_bandwidth_kernel, device, 2, threads, need, args, ms))
    return err;
  std::vector<int> id, b;
  FLOORS_CHECK(to_host(id, smids.p, 2));
  FLOORS_CHECK(to_host(b, bad.p, 1));
  *sm0 = id[0];
  *sm1 = id[1];
  return b[0] == 0 ? 0 : kErrPayload;
}

// DSMEM all-to-all: one cluster of `cluster_size` CTAs of `threads` threads,
// each on its own SM, `iters` steps in which every CTA pushes `bytes` (a
// multiple of 16) into each of its peers (dsmem_all_to_all_kernel). Writes the
// launch's time in ms and the number of distinct SMs the CTAs ran on.
int floors_dsmem_all_to_all(int device, int cluster_size, int threads, int bytes, int iters, float* ms,
                            int* distinct_sms) {
  *distinct_sms = 0;
  FLOORS_CHECK(cudaSetDevice(device));
  if (cluster_size < 2 || cluster_size > 16 || bytes < 16 || bytes % 16 ||
      (cluster_size - 1) * bytes >= (1 << 20))
    return (int)cudaErrorInvalidValue;
  DeviceInts smids, bad;
  FLOORS_CHECK(smids.alloc(cluster_size));
  FLOORS_CHECK(bad.alloc(1));
  void* args[] = {&iters, &bytes, &smids.p, &bad.p};
  const int need = kBarBytes + 2 * cluster_size * bytes;
  if (int err = timed_cluster_launch((const void*)dsmem_all_to_all_kernel, device, cluster_size, threads,
                                     need, args, ms))
    return err;
  std::vector<int> id, b;
  FLOORS_CHECK(to_host(id, smids.p, cluster_size));
  FLOORS_CHECK(to_host(b, bad.p, 1));
  *distinct_sms = (int)std::set<int>(id.begin(), id.end()).size();
  return b[0] == 0 ? 0 : kErrPayload;
}

// The largest number of co-resident clusters of `cluster_size` CTAs of
// `threads` threads with `smem` bytes of dynamic shared memory each
// (cudaOccupancyMaxActiveClusters; on the all-to-all kernel, a recurrence step
// without its work: the count is set by the shared memory). Nothing is launched.
int floors_max_active_clusters(int device, int cluster_size, int threads, int smem, int* clusters) {
  *clusters = 0;
  FLOORS_CHECK(cudaSetDevice(device));
  FLOORS_CHECK(needs_clusters(device));
  cudaLaunchAttribute attr;
  cudaLaunchConfig_t cfg;
  return (int)cluster_config((const void*)dsmem_all_to_all_kernel, cluster_size, threads, smem, 1, &attr,
                             &cfg, clusters);
}

}  // extern "C"
