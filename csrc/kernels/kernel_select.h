// (dtype, cell, tf32) -> one explicit instantiation of a kernel template, for
// the two kernel families (forward, backward). Used by the runtime dispatch
// (forward_dispatch.cu / backward_dispatch.cu, through dispatch_common.h) and
// by the host emulation (csrc/emu/), so that both pick the instantiation the
// same way.
//
// Only declarations of the kernels' symbol getters and launchers: the
// definitions are in forward_kernel.cuh / backward_kernel.cuh, instantiated
// in forward_<dtype>.cu / backward_<dtype>.cu (the emulation includes the
// .cuh itself). No CUDA runtime call here, only its types.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "backward_params.h"
#include "common.h"
#include "forward_params.h"

namespace fused_rnn {
namespace fwd {
template <typename T, CellKind CELL, bool TF32> const void* forward_kernel_ptr(SyncPolicy sync);
template <typename T, CellKind CELL, bool TF32>
cudaError_t launch_forward_kernel(const ForwardParams& p, cudaStream_t stream);
}  // namespace fwd

namespace bwd {
template <typename T, CellKind CELL, bool TF32> const void* backward_kernel_ptr(SyncPolicy sync);
template <typename T, CellKind CELL, bool TF32>
cudaError_t launch_backward_kernel(const BackwardParams& p, cudaStream_t stream);
}  // namespace bwd

// A kernel family: its parameter struct, threads per CTA, the symbol getter
// and launcher of each instantiation, and the synchronisation policy of a
// problem (planned) and of a launch (its params); both families compile both
// policies.
struct ForwardKernels {
  using Params = ForwardParams;
  static constexpr int kThreads = kForwardThreads;
  template <typename T, CellKind CELL, bool TF32>
  static const void* kernel(SyncPolicy sync) {
    return fwd::forward_kernel_ptr<T, CELL, TF32>(sync);
  }
  // What plan_forward resolves a request to (forward_plan.h): kGrid, kFlags, or kCluster
  // (16-bit; the flags kernel with the recurrence in a cluster, its own instantiation --
  // whose occupancy also stands for the flags kernel where the plan falls back to it:
  // both take more than 128 registers under the same launch bounds, so 1 CTA per SM,
  // and shared memory decides; the launch sets the flags kernel's own attributes).
  static SyncPolicy planned_sync(const ForwardProblem& pr) {
    if (pr.sync == SyncPolicy::kCluster && pr.dtype != DType::kFloat32) return SyncPolicy::kCluster;
    return pr.sync == SyncPolicy::kGrid ? SyncPolicy::kGrid : SyncPolicy::kFlags;
  }
  static SyncPolicy sync_of(const Params& p) {
    return p.cfg.cluster_rec ? SyncPolicy::kCluster : p.cfg.sync;
  }
  template <typename T, CellKind CELL, bool TF32>
  static cudaError_t launch(const Params& p, cudaStream_t stream) {
    return fwd::launch_forward_kernel<T, CELL, TF32>(p, stream);
  }
};

struct BackwardKernels {
  using Params = BackwardParams;
  static constexpr int kThreads = kBackwardThreads;
  template <typename T, CellKind CELL, bool TF32>
  static const void* kernel(SyncPolicy sync) {
    return bwd::backward_kernel_ptr<T, CELL, TF32>(sync);
  }
  // What plan_backward resolves a request to (backward_plan.h): grid or flags.
  static SyncPolicy planned_sync(const ForwardProblem& pr) {
    return pr.sync == SyncPolicy::kGrid ? SyncPolicy::kGrid : SyncPolicy::kFlags;
  }
  static SyncPolicy sync_of(const Params& p) { return p.cfg.sync; }
  template <typename T, CellKind CELL, bool TF32>
  static cudaError_t launch(const Params& p, cudaStream_t stream) {
    return bwd::launch_backward_kernel<T, CELL, TF32>(p, stream);
  }
};

namespace select_detail {

template <class K, typename T, bool TF32>
const void* kernel_for_cell(CellKind cell, SyncPolicy sync) {
  switch (cell) {
    case CellKind::kLSTM: return K::template kernel<T, CellKind::kLSTM, TF32>(sync);
    case CellKind::kGRU: return K::template kernel<T, CellKind::kGRU, TF32>(sync);
    default: return K::template kernel<T, CellKind::kRNN, TF32>(sync);
  }
}

template <class K, typename T, bool TF32>
cudaError_t launch_for_cell(const typename K::Params& p, cudaStream_t stream) {
  switch (cell_kind(static_cast<Mode>(p.mode))) {
    case CellKind::kLSTM: return K::template launch<T, CellKind::kLSTM, TF32>(p, stream);
    case CellKind::kGRU: return K::template launch<T, CellKind::kGRU, TF32>(p, stream);
    default: return K::template launch<T, CellKind::kRNN, TF32>(p, stream);
  }
}

}  // namespace select_detail

// The kernel function of family K for (dtype, cell, tf32, sync); tf32 only
// matters for float32, sync only for families with more than one policy.
template <class K>
const void* kernel_symbol(DType dtype, CellKind cell, bool tf32, SyncPolicy sync) {
  using select_detail::kernel_for_cell;
  switch (dtype) {
    case DType::kFloat16: return kernel_for_cell<K, __half, false>(cell, sync);
    case DType::kBFloat16: return kernel_for_cell<K, __nv_bfloat16, false>(cell, sync);
    default:
      return tf32 ? kernel_for_cell<K, float, true>(cell, sync)
                  : kernel_for_cell<K, float, false>(cell, sync);
  }
}

// Launches the instantiation of family K for `dtype`, the cell of p.mode and
// `use_tf32` (float32 only) on `stream`; returns the launch's error code.
template <class K>
cudaError_t launch_instantiation(const typename K::Params& p, DType dtype, bool use_tf32,
                                 cudaStream_t stream) {
  using select_detail::launch_for_cell;
  switch (dtype) {
    case DType::kFloat16: return launch_for_cell<K, __half, false>(p, stream);
    case DType::kBFloat16: return launch_for_cell<K, __nv_bfloat16, false>(p, stream);
    default:
      return use_tf32 ? launch_for_cell<K, float, true>(p, stream)
                      : launch_for_cell<K, float, false>(p, stream);
  }
}

}  // namespace fused_rnn
