// Runtime dispatch of the backward kernel (dtype x cell x tf32 -> template
// instantiation in backward_<dtype>.cu) and its device-aware planner
// (occupancy from the CUDA runtime, cached): dispatch_common.h, shared with
// forward_dispatch.cu.
#include <cuda_runtime.h>

#include <tuple>

#include "backward_api.h"
#include "dispatch_common.h"

namespace fused_rnn {
namespace {

// What the backward's dispatch adds to its kernel family (see dispatch_common.h).
struct BackwardDispatch : BackwardKernels {
  using Result = BackwardPlanResult;
  using Key = std::tuple<int, int, int, bool, bool, int64_t, int64_t, int64_t, int64_t, int64_t,
                         int, bool, double, bool, int, int>;
  // (device, every problem field); need_reserve does not matter to the
  // backward (it reads the saved reserve), nor does can_project_input
  static Key key(const ForwardProblem& pr, int device) {
    return Key{device, static_cast<int>(pr.mode), pr.num_layers, pr.bidirectional,
               pr.has_biases, pr.proj_size, pr.input_size, pr.hidden_size, pr.batch,
               pr.seq_len, static_cast<int>(pr.dtype), pr.has_lengths, pr.dropout,
               pr.allow_tf32, static_cast<int>(pr.sync), pr.cluster};
  }
  static Result plan(const ForwardProblem& pr, const DeviceLimits& dev, OccupancyFn occupancy,
                     const void* ctx) {
    return plan_backward(pr, dev, occupancy, ctx, &query_cluster_occupancy, ctx);
  }
  // Clusters of `cluster` CTAs of this kernel that the device holds at once.
  static int query_cluster_occupancy(const void* ctx, int64_t smem_bytes, int grid, int cluster) {
    const auto* q = static_cast<const OccupancyQuery*>(ctx);
    return max_active_clusters(q->fn, kBackwardThreads, smem_bytes, grid, cluster);
  }
  static const char* planning() { return "planning the backward"; }
  static const char* kernel_name() { return "backward kernel"; }
};

}  // namespace

BackwardPlanResult plan_backward_on_device(const ForwardProblem& pr, int device) {
  return plan_on_device<BackwardDispatch>(pr, device);
}

cudaError_t launch_backward(const BackwardParams& p, DType dtype, bool use_tf32,
                            cudaStream_t stream) {
  return launch_on_current_device<BackwardDispatch>(p, dtype, use_tf32, stream);
}

}  // namespace fused_rnn
