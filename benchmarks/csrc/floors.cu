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
// Pure CUDA, no torch header: CI compiles this file with bare nvcc
// (tests/test_bench.py), and benchmarks/floors.py builds it at run time
// (torch.utils.cpp_extension.load) and calls the extern "C" functions below
// through ctypes. Each call times ONE launch of `iters` barriers with CUDA
// events; floors.py takes the difference of two iteration counts, so launch
// overhead cancels out.

#include <cooperative_groups.h>
#include <cuda_runtime.h>

namespace cg = cooperative_groups;

constexpr int kWords = 32;  // words exchanged per CTA and step (one warp's worth)

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

}  // namespace

extern "C" {

// Name of a cudaError_t returned by the functions below.
const char* floors_error_string(int code) { return cudaGetErrorString((cudaError_t)code); }

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

}  // extern "C"
