// fused_rnn::_fused_backward: the schema of fused_rnn::rnn_backward (see
// csrc/README.md), implemented for CUDA by the persistent backward kernel of
// csrc/kernels/ (BPTT for all layers in one launch) followed by a few GEMMs
// (weight, bias and input gradients, backward_grads.h). fused_rnn/ops.py
// calls it only after plan_backward() said yes and when a reserve was saved;
// this file still checks everything, because the op is callable directly.
//
// Memory: one workspace tensor per call (caching allocator): the gate
// gradients of every (layer, direction, t, b) in the input's dtype --
// LD*T*B*GHp elements, twice for GRU (ih and hh sides) -- plus, with dropout,
// the dropped layer outputs ((L-1)*T*B*D*H), fp32 carries (LD*B*H, twice
// for LSTM) and, under the flags policy, one int32 step counter per CTA. The
// reserve is only read.
//
// No device-wide sync, no host read of device data (seed and lengths stay on
// the device), one cooperative launch and ATen GEMMs on the current stream:
// capturable in a CUDA graph.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "backward_grads.h"
#include "kernels/backward_api.h"
#include "op_common.h"
#include "phase_buffer.h"
#include "problem.h"

namespace fused_rnn {
namespace binding {
namespace {

constexpr const char* kOp = "fused_rnn::_fused_backward: ";

std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor, at::Tensor> fused_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& grad_cy,
    const at::Tensor& input, at::TensorList weights, const at::Tensor& hx,
    const std::optional<at::Tensor>& cx, const std::optional<at::Tensor>& lengths,
    const std::optional<at::Tensor>& seed, const at::Tensor& output, const at::Tensor& reserve,
    c10::string_view mode_str, int64_t num_layers, bool bidirectional, bool has_biases,
    int64_t proj_size, double dropout) {
  // ---- arguments vs the contract
  const StackArgs a = check_stack_args(
      kOp, input, weights, hx, cx, mode_str, num_layers, bidirectional, has_biases, proj_size,
      dropout, "proj_size > 0 is not covered by the fused backward kernel");
  const Mode mode = a.mode;
  const DType dtype = a.dtype;
  const int64_t T = a.T, B = a.B, I = a.I, D = a.D, LD = a.LD, G = a.G, H = a.H,
                per_dir = a.per_dir;
  const bool is_lstm = a.is_lstm;
  if (is_lstm) check_like(kOp, grad_cy, input, "grad_cy", {LD, B, H});
  check_like(kOp, grad_output, input, "grad_output", {T, B, D * H});
  check_like(kOp, grad_hy, input, "grad_hy", {LD, B, H});
  TORCH_CHECK(output.device() == input.device(), kOp, "output is on ", output.device(),
              " but input is on ", input.device());
  const int64_t S = is_lstm ? 6 * H : mode == Mode::kGRU ? 5 * H : H;
  TORCH_CHECK(reserve.numel() > 0, kOp,
              "an empty reserve (forward ran with need_reserve=False): nothing to backpropagate "
              "through; fused_rnn.ops recomputes it on the reference path");
  check_like(kOp, reserve, input, "reserve", {LD, T, B, S});
  check_lengths_and_seed(kOp, input, a, lengths, seed);

  // ---- plan (same function as fused_rnn._C.plan_backward)
  c10::cuda::CUDAGuard guard(input.device());
  const int device = input.get_device();
  const ForwardProblem problem =
      make_problem(mode, num_layers, bidirectional, has_biases, proj_size, I, H, B, T, dtype,
                   true, lengths.has_value(), dropout);
  const BackwardPlanResult plan = plan_backward_on_device(problem, device);
  TORCH_CHECK(plan.ok, kOp, "this call is not covered by the fused backward kernel: ",
              plan.reason);

  // ---- operands (contiguous; copies only where the caller's are not)
  const StackOperands o = contiguous_operands(input, weights, hx, cx, lengths, a);
  const std::vector<at::Tensor>& w = o.w;
  const at::Tensor res = reserve.contiguous();
  const at::Tensor gout = grad_output.contiguous();
  const at::Tensor ghy = grad_hy.contiguous();
  const at::Tensor gcy = is_lstm ? grad_cy.contiguous() : at::Tensor();

  // ---- workspace and outputs (nothing needs zeroing but the step counters:
  // the kernel writes every other element it or the GEMMs read)
  const auto opts = input.options();
  const BackwardWorkspaceLayout wl = backward_workspace(problem, plan.cfg);
  at::Tensor ws = at::empty({std::max<int64_t>(wl.total, 1)}, opts.dtype(at::kByte));
  const int64_t es = dtype_size(dtype);
  auto carve = [&](int64_t off, at::IntArrayRef shape) {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return ws.narrow(0, off, n * es).view(input.scalar_type()).view(shape);
  };
  const int64_t ghp = plan.cfg.gh_pad;
  const at::Tensor dg_ih = carve(wl.dg_ih, {LD, T, B, ghp});
  const at::Tensor dg_hh = wl.dg_hh >= 0 ? carve(wl.dg_hh, {LD, T, B, ghp}) : dg_ih;
  const at::Tensor xdrop =
      wl.xdrop >= 0 ? carve(wl.xdrop, {num_layers - 1, T, B, D * H}) : at::Tensor();
  at::Tensor grad_hx = at::empty({LD, B, H}, opts);
  at::Tensor grad_cx = is_lstm ? at::empty({LD, B, H}, opts) : at::empty({0}, opts);

  BackwardParams p;
  init_backward_params(p, problem, plan.cfg, ws.data_ptr());
  for (int64_t ld = 0; ld < LD; ++ld) {
    p.w_ih[ld] = w[ld * per_dir].data_ptr();
    p.w_hh[ld] = w[ld * per_dir + 1].data_ptr();
  }
  set_state_pointers(p, o, a, lengths, seed);
  p.reserve = res.data_ptr();
  p.grad_output = gout.data_ptr();
  p.grad_hy = ghy.data_ptr();
  p.grad_cy = is_lstm ? gcy.data_ptr() : nullptr;
  p.grad_hx = grad_hx.data_ptr();
  p.grad_cx = is_lstm ? grad_cx.data_ptr() : nullptr;
  attach_phase_buffer(p, kPhaseKindBackward, input, kOp);  // diagnostics (phase_buffer.h)

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  clear_step_counters(ws, wl.flags, wl.flags_bytes, stream);
  C10_CUDA_CHECK(launch_backward(p, dtype, plan.cfg.use_tf32, stream));
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  // ---- weight, bias and input gradients: GEMMs on the current stream
  auto [grad_input, grad_weights] = backward_weight_grads(
      o.x, w, o.h0, res, dg_ih, dg_hh, xdrop, num_layers, bidirectional, has_biases, G);
  return {grad_input, grad_weights, grad_hx, grad_cx};
}

}  // namespace
}  // namespace binding
}  // namespace fused_rnn

// The schema is rnn_backward's (fused_rnn/ops.py, csrc/README.md).
TORCH_LIBRARY_FRAGMENT(fused_rnn, m) {
  m.def(
      "_fused_backward(Tensor grad_output, Tensor grad_hy, Tensor grad_cy, Tensor input, "
      "Tensor[] weights, Tensor hx, Tensor? cx, Tensor? lengths, Tensor? seed, Tensor output, "
      "Tensor reserve, str mode, int num_layers, bool bidirectional, bool has_biases, "
      "int proj_size, float dropout) "
      "-> (Tensor grad_input, Tensor[] grad_weights, Tensor grad_hx, Tensor grad_cx)");
}

TORCH_LIBRARY_IMPL(fused_rnn, CUDA, m) {
  m.impl("_fused_backward", &fused_rnn::binding::fused_backward_cuda);
}
