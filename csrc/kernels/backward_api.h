// The host API of the backward kernel, as the binding (csrc/torch/) uses it.
// Needs only the CUDA runtime header, no torch.
//
//   BackwardPlanResult r = plan_backward_on_device(problem, device);  // device current
//   if (r.ok) { fill BackwardParams (init_backward_params with a workspace of
//               backward_workspace(problem, r.cfg).total bytes, its step counters
//               zeroed on the stream); launch_backward(params, dtype,
//               r.cfg.use_tf32, stream); then the weight / input GEMMs }
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "backward_params.h"
#include "backward_plan.h"

namespace fused_rnn {

// Plans the backward of `problem` for CUDA device `device` (the current
// device), with the backward kernel's real occupancy. Cached per (device,
// problem). Never throws; CUDA errors become a not-ok result with the reason.
BackwardPlanResult plan_backward_on_device(const ForwardProblem& problem, int device);

// Launches the planned backward kernel on `stream` (the current device).
cudaError_t launch_backward(const BackwardParams& params, DType dtype, bool use_tf32,
                            cudaStream_t stream);

}  // namespace fused_rnn
