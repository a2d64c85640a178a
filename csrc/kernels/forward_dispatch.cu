// Runtime dispatch (dtype x cell x tf32 -> template instantiation), the
// device-aware planner (occupancy from the CUDA runtime, cached; both in
// dispatch_common.h, shared with backward_dispatch.cu), and build facts. The
// instantiations live in forward_<dtype>.cu, compiled in parallel.
#include <cuda_runtime.h>

#include <tuple>

#include "dispatch_common.h"
#include "forward_api.h"

namespace fused_rnn {
namespace {

// What the forward's dispatch adds to its kernel family (see dispatch_common.h).
struct ForwardDispatch : ForwardKernels {
  using Result = PlanResult;
  using Key = std::tuple<int, int, int, bool, bool, int64_t, int64_t, int64_t, int64_t, int64_t,
                         int, bool, bool, double, bool, int, bool>;
  // (device, every problem field)
  static Key key(const ForwardProblem& pr, int device) {
    return Key{device, static_cast<int>(pr.mode), pr.num_layers, pr.bidirectional,
               pr.has_biases, pr.proj_size, pr.input_size, pr.hidden_size, pr.batch,
               pr.seq_len, static_cast<int>(pr.dtype), pr.need_reserve, pr.has_lengths,
               pr.dropout, pr.allow_tf32, static_cast<int>(pr.sync), pr.fast_tanh};
  }
  static Result plan(const ForwardProblem& pr, const DeviceLimits& dev, OccupancyFn occupancy,
                     const void* ctx) {
    return plan_forward(pr, dev, occupancy, ctx, &query_cluster_occupancy, ctx);
  }
  // Clusters of `cluster` CTAs of this kernel that the device holds at once (the
  // recurrence in a cluster, FUSED_RNN_SYNC=cluster).
  static int query_cluster_occupancy(const void* ctx, int64_t smem_bytes, int grid, int cluster) {
    const auto* q = static_cast<const OccupancyQuery*>(ctx);
    return max_active_clusters(q->fn, kForwardThreads, smem_bytes, grid, cluster);
  }
  static const char* planning() { return "planning"; }
  static const char* kernel_name() { return "kernel"; }
};

}  // namespace

PlanResult plan_forward_on_device(const ForwardProblem& pr, int device) {
  return plan_on_device<ForwardDispatch>(pr, device);
}

cudaError_t launch_forward(const ForwardParams& p, DType dtype, bool use_tf32,
                           cudaStream_t stream) {
  return launch_on_current_device<ForwardDispatch>(p, dtype, use_tf32, stream);
}

std::vector<std::string> compiled_archs() {
  std::vector<std::string> out;
#if defined(__CUDA_ARCH_LIST__)
  const int archs[] = {__CUDA_ARCH_LIST__};
  for (int a : archs) out.push_back("sm_" + std::to_string(a / 10));
#endif
  return out;
}

int forward_binary_version(int device, std::string* why) {
  int prev = 0;
  cudaGetDevice(&prev);
  cudaSetDevice(device);
  cudaFuncAttributes attr;
  const cudaError_t e = cudaFuncGetAttributes(
      &attr, kernel_symbol<ForwardKernels>(DType::kBFloat16, CellKind::kLSTM, false,
                                           SyncPolicy::kFlags));
  cudaSetDevice(prev);
  if (e != cudaSuccess) {
    cudaGetLastError();
    if (why) *why = cudaGetErrorString(e);
    return -1;
  }
  return attr.binaryVersion;
}

}  // namespace fused_rnn
