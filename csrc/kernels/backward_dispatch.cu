// Runtime dispatch of the backward kernel (dtype x cell x tf32 -> template
// instantiation in backward_<dtype>.cu) and its device-aware planner
// (occupancy from the CUDA runtime, cached). Mirrors forward_dispatch.cu.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <tuple>

#include "backward_api.h"

namespace fused_rnn {
namespace bwd {
template <typename T, CellKind CELL, bool TF32> const void* backward_kernel_ptr();
template <typename T, CellKind CELL, bool TF32>
cudaError_t launch_backward_kernel(const BackwardParams& p, cudaStream_t stream);
}  // namespace bwd

namespace {

template <typename T, bool TF32>
const void* kernel_for_cell(CellKind cell) {
  switch (cell) {
    case CellKind::kLSTM: return bwd::backward_kernel_ptr<T, CellKind::kLSTM, TF32>();
    case CellKind::kGRU: return bwd::backward_kernel_ptr<T, CellKind::kGRU, TF32>();
    default: return bwd::backward_kernel_ptr<T, CellKind::kRNN, TF32>();
  }
}

const void* kernel_symbol(DType dtype, CellKind cell, bool tf32) {
  switch (dtype) {
    case DType::kFloat16: return kernel_for_cell<__half, false>(cell);
    case DType::kBFloat16: return kernel_for_cell<__nv_bfloat16, false>(cell);
    default:
      return tf32 ? kernel_for_cell<float, true>(cell) : kernel_for_cell<float, false>(cell);
  }
}

template <typename T, bool TF32>
cudaError_t launch_for_cell(const BackwardParams& p, cudaStream_t stream) {
  switch (cell_kind(static_cast<Mode>(p.mode))) {
    case CellKind::kLSTM: return bwd::launch_backward_kernel<T, CellKind::kLSTM, TF32>(p, stream);
    case CellKind::kGRU: return bwd::launch_backward_kernel<T, CellKind::kGRU, TF32>(p, stream);
    default: return bwd::launch_backward_kernel<T, CellKind::kRNN, TF32>(p, stream);
  }
}

struct OccupancyQuery {
  const void* fn;
  cudaError_t err;
};

int query_occupancy(const void* ctx, int64_t smem_bytes) {
  auto* q = static_cast<OccupancyQuery*>(const_cast<void*>(ctx));
  int blocks = 0;
  const cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &blocks, q->fn, kBackwardThreads, static_cast<size_t>(smem_bytes));
  if (e != cudaSuccess) {
    q->err = e;
    return 0;
  }
  return blocks;
}

std::string cuda_reason(const char* what, cudaError_t e) {
  return std::string("CUDA error while planning the backward (") + what + "): " +
         cudaGetErrorString(e);
}

// (device, every problem field) -> result; see forward_dispatch.cu.
using PlanKey = std::tuple<int, int, int, bool, bool, int64_t, int64_t, int64_t, int64_t,
                           int64_t, int, bool, double, bool>;
std::mutex g_mutex;
std::map<PlanKey, BackwardPlanResult> g_cache;
std::map<std::pair<int, const void*>, bool> g_attr_set;

// Raises the kernel's dynamic shared-memory limit to the device's opt-in
// maximum, once per (device, kernel). Call with g_mutex held.
cudaError_t prepare_kernel_locked(const void* fn, int device) {
  auto& done = g_attr_set[{device, fn}];
  if (done) return cudaSuccess;
  int smem_optin = 0;
  cudaError_t e;
  if ((e = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device)) ||
      (e = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_optin)) ||
      (e = cudaFuncSetAttribute(fn, cudaFuncAttributePreferredSharedMemoryCarveout,
                                cudaSharedmemCarveoutMaxShared))) {
    cudaGetLastError();
    return e;
  }
  done = true;
  return cudaSuccess;
}

}  // namespace

BackwardPlanResult plan_backward_on_device(const ForwardProblem& pr, int device) {
  // need_reserve does not matter to the backward (it reads the saved reserve)
  const PlanKey key{device, static_cast<int>(pr.mode), pr.num_layers, pr.bidirectional,
                    pr.has_biases, pr.proj_size, pr.input_size, pr.hidden_size, pr.batch,
                    pr.seq_len, static_cast<int>(pr.dtype), pr.has_lengths, pr.dropout,
                    pr.allow_tf32};
  std::lock_guard<std::mutex> lock(g_mutex);
  auto hit = g_cache.find(key);
  if (hit != g_cache.end()) return hit->second;

  BackwardPlanResult bad;
  DeviceLimits dev;
  int smem_optin = 0, smem_sm = 0;
  cudaError_t e;
  if ((e = cudaDeviceGetAttribute(&dev.sm_count, cudaDevAttrMultiProcessorCount, device)) ||
      (e = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device)) ||
      (e = cudaDeviceGetAttribute(&smem_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device)) ||
      (e = cudaDeviceGetAttribute(&dev.cc_major, cudaDevAttrComputeCapabilityMajor, device)) ||
      (e = cudaDeviceGetAttribute(&dev.cc_minor, cudaDevAttrComputeCapabilityMinor, device))) {
    cudaGetLastError();
    bad.reason = cuda_reason("device attributes", e);
    return bad;  // not cached: may be transient
  }
  dev.smem_optin_per_block = smem_optin;
  dev.smem_per_sm = smem_sm;
  int cooperative = 0;
  if (cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device) != cudaSuccess ||
      !cooperative) {
    cudaGetLastError();
    bad.reason = "the device does not support cooperative launches";
    g_cache[key] = bad;
    return bad;
  }

  const bool tf32 = pr.dtype == DType::kFloat32 && pr.allow_tf32;
  OccupancyQuery q{kernel_symbol(pr.dtype, cell_kind(pr.mode), tf32), cudaSuccess};
  cudaFuncAttributes attr;
  e = cudaFuncGetAttributes(&attr, q.fn);
  if (e != cudaSuccess) {
    cudaGetLastError();
    char buf[256];
    snprintf(buf, sizeof(buf),
             "the extension has no backward kernel code for this device (sm_%d%d): %s; rebuild "
             "with TORCH_CUDA_ARCH_LIST covering it",
             dev.cc_major, dev.cc_minor, cudaGetErrorString(e));
    bad.reason = buf;
    g_cache[key] = bad;
    return bad;
  }
  if ((e = prepare_kernel_locked(q.fn, device)) != cudaSuccess) {
    bad.reason = cuda_reason("cudaFuncSetAttribute", e);
    return bad;
  }
  BackwardPlanResult r = plan_backward(pr, dev, &query_occupancy, &q);
  if (q.err != cudaSuccess) {
    cudaGetLastError();
    bad.reason = cuda_reason("occupancy query", q.err);
    return bad;
  }
  if (g_cache.size() > 4096) g_cache.clear();
  g_cache[key] = r;
  return r;
}

cudaError_t launch_backward(const BackwardParams& p, DType dtype, bool use_tf32,
                            cudaStream_t stream) {
  {
    int device = 0;
    cudaError_t e = cudaGetDevice(&device);
    if (e != cudaSuccess) return e;
    const bool tf32 = dtype == DType::kFloat32 && use_tf32;
    std::lock_guard<std::mutex> lock(g_mutex);
    e = prepare_kernel_locked(kernel_symbol(dtype, cell_kind(static_cast<Mode>(p.mode)), tf32),
                              device);
    if (e != cudaSuccess) return e;
  }
  switch (dtype) {
    case DType::kFloat16: return launch_for_cell<__half, false>(p, stream);
    case DType::kBFloat16: return launch_for_cell<__nv_bfloat16, false>(p, stream);
    default:
      return use_tf32 ? launch_for_cell<float, true>(p, stream)
                      : launch_for_cell<float, false>(p, stream);
  }
}

}  // namespace fused_rnn
