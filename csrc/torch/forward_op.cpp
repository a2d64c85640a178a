// fused_rnn::_fused_forward: the schema of fused_rnn::rnn_forward (see
// csrc/README.md), implemented for CUDA by the persistent kernel of
// csrc/kernels/. fused_rnn/ops.py calls it only after plan() said yes; this
// file still checks everything, because the op is callable directly.
//
// No device-wide sync, no host read of device data (the dropout seed and the
// lengths stay on the device), allocation through the caching allocator, a
// memset of the step counters and one cooperative launch on the current
// stream: capturable in a CUDA graph.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "kernels/forward_api.h"
#include "op_common.h"
#include "phase_buffer.h"
#include "problem.h"

namespace fused_rnn {
namespace binding {
namespace {

constexpr const char* kOp = "fused_rnn::_fused_forward: ";

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_forward_cuda(
    const at::Tensor& input, at::TensorList weights, const at::Tensor& hx,
    const std::optional<at::Tensor>& cx, const std::optional<at::Tensor>& lengths,
    const std::optional<at::Tensor>& seed, c10::string_view mode_str, int64_t num_layers,
    bool bidirectional, bool has_biases, int64_t proj_size, double dropout, bool need_reserve) {
  // ---- arguments vs the contract
  const StackArgs a =
      check_stack_args(kOp, input, weights, hx, cx, mode_str, num_layers, bidirectional,
                       has_biases, proj_size, dropout, /*proj_unsupported=*/nullptr);
  check_lengths_and_seed(kOp, input, a, lengths, seed);
  const Mode mode = a.mode;
  const DType dtype = a.dtype;
  const int64_t T = a.T, B = a.B, I = a.I, D = a.D, LD = a.LD, H = a.H, per_dir = a.per_dir;
  const bool is_lstm = a.is_lstm;

  // ---- plan (same function as fused_rnn._C.plan)
  c10::cuda::CUDAGuard guard(input.device());
  const int device = input.get_device();
  const ForwardProblem problem =
      make_problem(mode, num_layers, bidirectional, has_biases, proj_size, I, H, B, T, dtype,
                   need_reserve, lengths.has_value(), dropout);
  const PlanResult plan = plan_forward_on_device(problem, device);
  TORCH_CHECK(plan.ok, kOp, "this call is not covered by the fused kernel: ", plan.reason);

  // ---- operands (contiguous; copies only where the caller's are not)
  const StackOperands o = contiguous_operands(input, weights, hx, cx, lengths, a);
  const std::vector<at::Tensor>& w = o.w;

  // ---- outputs and workspace (caching allocator; nothing needs zeroing:
  // the kernel writes every element of output, hy, cy and the valid reserve)
  const auto opts = input.options();
  at::Tensor output = at::empty({T, B, D * H}, opts);
  at::Tensor hy = at::empty({LD, B, H}, opts);
  at::Tensor cy = is_lstm ? at::empty({LD, B, H}, opts) : at::empty({0}, opts);
  at::Tensor reserve = need_reserve ? at::empty({LD, T, B, problem.reserve_width()}, opts)
                                    : at::empty({0}, opts);
  const WorkspaceLayout wl = forward_workspace(problem, plan.cfg);
  at::Tensor ws = at::empty({std::max<int64_t>(wl.total, 1)}, opts.dtype(at::kByte));

  ForwardParams p;
  init_forward_params(p, problem, plan.cfg, ws.data_ptr());
  p.x = o.x.data_ptr();
  for (int64_t ld = 0; ld < LD; ++ld) {
    const int64_t base = ld * per_dir;
    p.w_ih[ld] = w[base].data_ptr();
    p.w_hh[ld] = w[base + 1].data_ptr();
    p.b_ih[ld] = has_biases ? w[base + 2].data_ptr() : nullptr;
    p.b_hh[ld] = has_biases ? w[base + 3].data_ptr() : nullptr;
  }
  // Layer 0's input projection for all T (16-bit): one GEMM per direction on
  // the current stream, fp32 out, read by the kernel as pre-activations.
  std::vector<at::Tensor> xproj;
  if (plan.cfg.x_proj) {
    // the operands are already in the op's dtype: autocast must not recast them
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const at::Tensor x2d = o.x.reshape({T * B, I});
    for (int64_t d = 0; d < D; ++d) {
      xproj.push_back(mm_fp32(x2d, w[d * per_dir].t()));  // (T*B, G*H)
      TORCH_INTERNAL_ASSERT(xproj.back().is_contiguous() &&
                            xproj.back().scalar_type() == at::kFloat);
      p.xproj[d] = xproj.back().data_ptr<float>();
    }
  }
  set_state_pointers(p, o, a, lengths, seed);
  p.y = output.data_ptr();
  p.hy = hy.data_ptr();
  p.cy = is_lstm ? cy.data_ptr() : nullptr;
  p.reserve = need_reserve ? reserve.data_ptr() : nullptr;
  attach_phase_buffer(p, kPhaseKindForward, input, kOp);  // diagnostics (phase_buffer.h)

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(input.get_device()).stream();
  clear_step_counters(ws, wl.flags, wl.flags_bytes, stream);
  C10_CUDA_CHECK(launch_forward(p, dtype, plan.cfg.use_tf32, stream));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {output, hy, cy, reserve};
}

}  // namespace
}  // namespace binding
}  // namespace fused_rnn

// The schema is rnn_forward's (fused_rnn/ops.py, csrc/README.md). FRAGMENT:
// fused_rnn/ops.py defines the public ops of the same namespace from Python.
TORCH_LIBRARY_FRAGMENT(fused_rnn, m) {
  m.def(
      "_fused_forward(Tensor input, Tensor[] weights, Tensor hx, Tensor? cx, Tensor? lengths, "
      "Tensor? seed, str mode, int num_layers, bool bidirectional, bool has_biases, "
      "int proj_size, float dropout, bool need_reserve) "
      "-> (Tensor output, Tensor hy, Tensor cy, Tensor reserve)");
}

TORCH_LIBRARY_IMPL(fused_rnn, CUDA, m) {
  m.impl("_fused_forward", &fused_rnn::binding::fused_forward_cuda);
}
