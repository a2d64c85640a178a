// Host-side dispatch shared by forward_dispatch.cu and backward_dispatch.cu:
// the device-aware planner (device attributes and the kernel's real occupancy
// from the CUDA runtime, cached per (device, problem)), the kernel attributes
// set once per (device, kernel), and the launch. Each .cu describes what
// differs with a traits struct D, derived from its kernel family
// (kernel_select.h: Params, kThreads, kernel<...>(sync), launch<...>(),
// planned_sync, sync_of):
//
//   struct D : ForwardKernels {
//     using Result = PlanResult;   // { ok, reason, cfg }
//     using Key = std::tuple<...>; // the plan cache's key
//     static Key key(const ForwardProblem&, int device);
//     static Result plan(const ForwardProblem&, const DeviceLimits&, OccupancyFn, const void*);
//     static const char* planning();     // in error messages: "CUDA error while <planning> (...)"
//     static const char* kernel_name();  // "the extension has no <kernel_name> code for ..."
//   };
//
// Include it from one .cu per kernel family only: everything is in an unnamed
// namespace, and each D gets its own cache, attribute set and mutex.
#pragma once

#include <cuda_runtime.h>

#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "forward_plan.h"
#include "kernel_select.h"

namespace fused_rnn {
namespace {

// Cache: (device, every problem field D::key keeps) -> result. Planning
// queries the occupancy API several times; a training loop plans the same
// shape twice per step (Python's check, then the op), so this keeps the host
// cost ~1 us.
template <class D>
struct DispatchState {
  std::mutex mutex;
  std::map<typename D::Key, typename D::Result> cache;
  std::map<std::pair<int, const void*>, bool> attr_set;
};

template <class D>
DispatchState<D>& dispatch_state() {
  static DispatchState<D> state;
  return state;
}

struct OccupancyQuery {
  const void* fn;
  cudaError_t err;
};

template <class D>
int query_occupancy(const void* ctx, int64_t smem_bytes) {
  auto* q = static_cast<OccupancyQuery*>(const_cast<void*>(ctx));
  int blocks = 0;
  const cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &blocks, q->fn, D::kThreads, static_cast<size_t>(smem_bytes));
  if (e != cudaSuccess) {
    q->err = e;
    return 0;
  }
  return blocks;
}

template <class D>
std::string cuda_reason(const char* what, cudaError_t e) {
  return std::string("CUDA error while ") + D::planning() + " (" + what + "): " +
         cudaGetErrorString(e);
}

// Lets `fn` use the device's whole opt-in shared memory (the occupancy API and
// launches need it above 48 KB) and prefer the largest carveout.
inline cudaError_t set_kernel_smem_attributes(const void* fn, int device) {
  int smem_optin = 0;
  cudaError_t e;
  if ((e = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device)) ||
      (e = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_optin)) ||
      (e = cudaFuncSetAttribute(fn, cudaFuncAttributePreferredSharedMemoryCarveout,
                                cudaSharedmemCarveoutMaxShared))) {
    cudaGetLastError();
    return e;
  }
  // Clusters of up to 16 CTAs (8 is the portable limit; the forward's recurrence in a
  // cluster uses up to 16). sm_90 and later; where the attribute is refused, clusters
  // stay at 8 and the occupancy query says no to 16 -- not an error.
  int major = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
      major >= 9 &&
      cudaFuncSetAttribute(fn, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) != cudaSuccess)
    cudaGetLastError();
  return cudaSuccess;
}

// Clusters of `cluster` CTAs of kernel `fn` (`threads` per CTA, `smem_bytes` of
// dynamic shared memory each, a grid of `grid`) that the device holds at once
// (cudaOccupancyMaxActiveClusters); 0 where it can not tell (a device or
// driver without clusters: then no cluster, not an error).
inline int max_active_clusters(const void* fn, int threads, int64_t smem_bytes, int grid,
                               int cluster) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(grid));
  config.blockDim = dim3(static_cast<unsigned>(threads));
  config.dynamicSmemBytes = static_cast<size_t>(smem_bytes);
  cudaLaunchAttribute attr;
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = static_cast<unsigned>(cluster);
  attr.val.clusterDim.y = 1;
  attr.val.clusterDim.z = 1;
  config.attrs = &attr;
  config.numAttrs = 1;
  int clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&clusters, fn, &config) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return clusters;
}

// set_kernel_smem_attributes once per (device, kernel); never lowered
// afterwards, so plans made for one shape stay valid for another. Call with
// the state's mutex held.
template <class D>
cudaError_t prepare_kernel_locked(const void* fn, int device) {
  auto& done = dispatch_state<D>().attr_set[{device, fn}];
  if (done) return cudaSuccess;
  const cudaError_t e = set_kernel_smem_attributes(fn, device);
  if (e != cudaSuccess) return e;
  done = true;
  return cudaSuccess;
}

// Plans `pr` for `device` (the current device) with D's planner. Never throws;
// CUDA errors become a not-ok result with the reason (not cached: they may be
// transient).
template <class D>
typename D::Result plan_on_device(const ForwardProblem& pr, int device) {
  using Result = typename D::Result;
  DispatchState<D>& st = dispatch_state<D>();
  const typename D::Key key = D::key(pr, device);
  std::lock_guard<std::mutex> lock(st.mutex);
  auto hit = st.cache.find(key);
  if (hit != st.cache.end()) return hit->second;

  Result bad;
  DeviceLimits dev;
  int smem_optin = 0, smem_sm = 0;
  cudaError_t e;
  if ((e = cudaDeviceGetAttribute(&dev.sm_count, cudaDevAttrMultiProcessorCount, device)) ||
      (e = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device)) ||
      (e = cudaDeviceGetAttribute(&smem_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device)) ||
      (e = cudaDeviceGetAttribute(&dev.cc_major, cudaDevAttrComputeCapabilityMajor, device)) ||
      (e = cudaDeviceGetAttribute(&dev.cc_minor, cudaDevAttrComputeCapabilityMinor, device))) {
    cudaGetLastError();
    bad.reason = cuda_reason<D>("device attributes", e);
    return bad;  // not cached: may be transient
  }
  dev.smem_optin_per_block = smem_optin;
  dev.smem_per_sm = smem_sm;
  int cooperative = 0;
  if (cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device) != cudaSuccess ||
      !cooperative) {
    cudaGetLastError();
    bad.reason = "the device does not support cooperative launches";
    st.cache[key] = bad;
    return bad;
  }

  const bool tf32 = pr.dtype == DType::kFloat32 && pr.allow_tf32;
  // (the variant of the policy the planner will choose: its attributes are
  // the ones the launch needs)
  OccupancyQuery q{kernel_symbol<D>(pr.dtype, cell_kind(pr.mode), tf32, D::planned_sync(pr)),
                   cudaSuccess};
  // Is there code for this device in the extension at all?
  cudaFuncAttributes attr;
  e = cudaFuncGetAttributes(&attr, q.fn);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear it: the caller's launch checks must not see it
    char buf[256];
    snprintf(buf, sizeof(buf),
             "the extension has no %s code for this device (sm_%d%d): %s; rebuild with "
             "TORCH_CUDA_ARCH_LIST covering it",
             D::kernel_name(), dev.cc_major, dev.cc_minor, cudaGetErrorString(e));
    bad.reason = buf;
    st.cache[key] = bad;
    return bad;
  }
  if ((e = prepare_kernel_locked<D>(q.fn, device)) != cudaSuccess) {
    bad.reason = cuda_reason<D>("cudaFuncSetAttribute", e);
    return bad;
  }
  Result r = D::plan(pr, dev, &query_occupancy<D>, &q);
  if (q.err != cudaSuccess) {
    cudaGetLastError();
    bad.reason = cuda_reason<D>("occupancy query", q.err);
    return bad;
  }
  if (st.cache.size() > 4096) st.cache.clear();  // bound memory for shape-varying workloads
  st.cache[key] = r;
  return r;
}

// Raises the kernel's shared-memory limit on the current device (once), then
// launches it on `stream`. Returns the first error code.
template <class D>
cudaError_t launch_on_current_device(const typename D::Params& p, DType dtype, bool use_tf32,
                                     cudaStream_t stream) {
  {
    int device = 0;
    cudaError_t e = cudaGetDevice(&device);
    if (e != cudaSuccess) return e;
    const bool tf32 = dtype == DType::kFloat32 && use_tf32;
    std::lock_guard<std::mutex> lock(dispatch_state<D>().mutex);
    e = prepare_kernel_locked<D>(
        kernel_symbol<D>(dtype, cell_kind(static_cast<Mode>(p.mode)), tf32, D::sync_of(p)),
        device);
    if (e != cudaSuccess) return e;
  }
  return launch_instantiation<D>(p, dtype, use_tf32, stream);
}

}  // namespace
}  // namespace fused_rnn
