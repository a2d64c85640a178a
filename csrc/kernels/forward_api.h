// The host API of the forward kernel, as the binding (csrc/torch/) uses it.
// Needs only the CUDA runtime header, no torch.
//
//   PlanResult r = plan_forward_on_device(problem, device);   // device current
//   if (r.ok) { fill ForwardParams (cfg = r.cfg, workspace per
//               forward_workspace(problem)); launch_forward(params, dtype, tf32, stream); }
#pragma once

#include <cuda_runtime_api.h>

#include <string>
#include <vector>

#include "forward_params.h"
#include "forward_plan.h"

namespace fused_rnn {

// Plans `problem` for CUDA device `device` (which must be the current device):
// SM count, opt-in shared memory and the kernel's real occupancy (after
// raising its dynamic shared-memory limit). Results are cached per (device,
// problem). Never throws; CUDA errors become a not-ok result with the reason.
PlanResult plan_forward_on_device(const ForwardProblem& problem, int device);

// Launches the planned kernel on `stream` (the current device). Returns the
// launch's error code (cudaSuccess when it was queued).
cudaError_t launch_forward(const ForwardParams& params, DType dtype, bool use_tf32,
                           cudaStream_t stream);

// Architectures the kernels were compiled for ("sm_80", "sm_90", ...), from
// nvcc's __CUDA_ARCH_LIST__.
std::vector<std::string> compiled_archs();

// The kernel's binaryVersion on `device` (e.g. 90), or -1 with `why` set
// when the extension carries no code for it.
int forward_binary_version(int device, std::string* why);

}  // namespace fused_rnn
