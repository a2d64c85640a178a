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

namespace cg = cooperative_groups;
using fused_rnn::flag_publish;
using fused_rnn::FlagRange;
using fused_rnn::lean_publish;
using fused_rnn::lean_wait_geq;
using fused_rnn::wait_for_ranges;

constexpr int kWords = 32;  // words exchanged per CTA and step (one warp's worth)
constexpr int kLine = 32;   // ints per 128-byte line: the ping-pong's two counters sit on two lines

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

}  // namespace

extern "C" {

// Name of a cudaError_t (or of one of our negative codes) returned by the functions below.
const char* floors_error_string(int code) {
  if (code == kErrCounters) return "a step counter did not end at the step count (broken wait)";
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

}  // extern "C"
