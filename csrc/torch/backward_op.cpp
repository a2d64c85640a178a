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
// the dropped layer outputs ((L-1)*T*B*D*H) and fp32 carries (LD*B*H, twice
// for LSTM). The reserve is only read.
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
#include "problem.h"

namespace fused_rnn {
namespace binding {
namespace {

constexpr const char* kOp = "fused_rnn::_fused_backward: ";

void check_like(const at::Tensor& t, const at::Tensor& input, const char* name,
                at::IntArrayRef sizes) {
  TORCH_CHECK(t.device() == input.device(), kOp, name, " is on ", t.device(),
              " but input is on ", input.device());
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), kOp, name, " has dtype ", t.scalar_type(),
              " but input has dtype ", input.scalar_type());
  TORCH_CHECK(t.sizes() == sizes, kOp, name, " has shape ", t.sizes(), ", expected ", sizes);
}

std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor, at::Tensor> fused_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& grad_cy,
    const at::Tensor& input, at::TensorList weights, const at::Tensor& hx,
    const std::optional<at::Tensor>& cx, const std::optional<at::Tensor>& lengths,
    const std::optional<at::Tensor>& seed, const at::Tensor& output, const at::Tensor& reserve,
    c10::string_view mode_str, int64_t num_layers, bool bidirectional, bool has_biases,
    int64_t proj_size, double dropout) {
  // ---- arguments vs the contract
  Mode mode;
  TORCH_CHECK(parse_mode(mode_str, &mode), kOp, "unknown mode '", std::string(mode_str),
              "' (expected LSTM, GRU, RNN_TANH or RNN_RELU)");
  TORCH_CHECK(input.is_cuda(), kOp, "input must be a CUDA tensor, got one on ", input.device());
  TORCH_CHECK(input.dim() == 3, kOp, "input must be (T, B, I), got shape ", input.sizes());
  DType dtype;
  TORCH_CHECK(parse_dtype(input.scalar_type(), &dtype), kOp, "dtype ", input.scalar_type(),
              " is not supported (float32, float16, bfloat16)");
  TORCH_CHECK(num_layers >= 1, kOp, "num_layers must be >= 1, got ", num_layers);
  TORCH_CHECK(proj_size == 0, kOp, "proj_size > 0 is not covered by the fused backward kernel");
  TORCH_CHECK(dropout >= 0.0 && dropout <= 1.0, kOp, "dropout must be in [0, 1], got ", dropout);
  const int64_t T = input.size(0), B = input.size(1), I = input.size(2);
  TORCH_CHECK(T >= 1 && B >= 1 && I >= 1, kOp, "input must be non-empty, got shape ",
              input.sizes());
  const int64_t D = bidirectional ? 2 : 1;
  const int64_t LD = num_layers * D;
  const int64_t G = num_gates(mode);
  const int64_t per_dir = has_biases ? 4 : 2;
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == LD * per_dir, kOp, "expected ",
              LD * per_dir, " weight tensors (num_layers * directions * ", per_dir, "), got ",
              weights.size());
  TORCH_CHECK(weights[0].dim() == 2 && weights[0].size(0) % G == 0 && weights[0].size(0) > 0,
              kOp, "weight_ih_l0 must be (", G, " * hidden_size, input_size), got shape ",
              weights[0].sizes());
  const int64_t H = weights[0].size(0) / G;
  for (int64_t l = 0; l < num_layers; ++l) {
    const int64_t in_l = l == 0 ? I : D * H;
    for (int64_t d = 0; d < D; ++d) {
      const int64_t base = (l * D + d) * per_dir;
      check_like(weights[base], input, "w_ih", {G * H, in_l});
      check_like(weights[base + 1], input, "w_hh", {G * H, H});
      if (has_biases) {
        check_like(weights[base + 2], input, "b_ih", {G * H});
        check_like(weights[base + 3], input, "b_hh", {G * H});
      }
    }
  }
  check_like(hx, input, "hx", {LD, B, H});
  const bool is_lstm = mode == Mode::kLSTM;
  if (is_lstm) {
    TORCH_CHECK(cx.has_value(), kOp, "cx is required for LSTM");
    check_like(*cx, input, "cx", {LD, B, H});
    check_like(grad_cy, input, "grad_cy", {LD, B, H});
  }
  check_like(grad_output, input, "grad_output", {T, B, D * H});
  check_like(grad_hy, input, "grad_hy", {LD, B, H});
  TORCH_CHECK(output.device() == input.device(), kOp, "output is on ", output.device(),
              " but input is on ", input.device());
  const int64_t S = is_lstm ? 6 * H : mode == Mode::kGRU ? 5 * H : H;
  TORCH_CHECK(reserve.numel() > 0, kOp,
              "an empty reserve (forward ran with need_reserve=False): nothing to backpropagate "
              "through; fused_rnn.ops recomputes it on the reference path");
  check_like(reserve, input, "reserve", {LD, T, B, S});
  if (lengths.has_value()) {
    TORCH_CHECK(lengths->device() == input.device() && lengths->scalar_type() == at::kLong &&
                    lengths->dim() == 1 && lengths->size(0) == B,
                kOp, "lengths must be an int64 tensor of shape (", B, ") on ", input.device(),
                ", got ", lengths->scalar_type(), " ", lengths->sizes(), " on ",
                lengths->device());
  }
  const bool use_dropout = dropout > 0.0 && num_layers > 1;
  if (use_dropout) {
    TORCH_CHECK(seed.has_value(), kOp, "dropout > 0 with num_layers > 1 needs a seed tensor");
    TORCH_CHECK(seed->device() == input.device() && seed->scalar_type() == at::kLong &&
                    seed->numel() == 1,
                kOp, "seed must be a 0-d int64 tensor on ", input.device(), ", got ",
                seed->scalar_type(), " ", seed->sizes(), " on ", seed->device());
  }

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
  const at::Tensor x = input.contiguous();
  std::vector<at::Tensor> w;
  w.reserve(weights.size());
  for (const auto& t : weights) w.push_back(t.contiguous());
  const at::Tensor h0 = hx.contiguous();
  const at::Tensor c0 = is_lstm ? cx->contiguous() : at::Tensor();
  const at::Tensor lens = lengths.has_value() ? lengths->contiguous() : at::Tensor();
  const at::Tensor res = reserve.contiguous();
  const at::Tensor gout = grad_output.contiguous();
  const at::Tensor ghy = grad_hy.contiguous();
  const at::Tensor gcy = is_lstm ? grad_cy.contiguous() : at::Tensor();

  // ---- workspace and outputs (nothing needs zeroing: the kernel writes every
  // element it or the GEMMs read)
  const auto opts = input.options();
  const BackwardWorkspaceLayout wl = backward_workspace(problem);
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
  p.hx = h0.data_ptr();
  p.cx = is_lstm ? c0.data_ptr() : nullptr;
  p.lengths = lengths.has_value() ? lens.data_ptr<int64_t>() : nullptr;
  p.seed = use_dropout ? seed->data_ptr<int64_t>() : nullptr;
  p.reserve = res.data_ptr();
  p.grad_output = gout.data_ptr();
  p.grad_hy = ghy.data_ptr();
  p.grad_cy = is_lstm ? gcy.data_ptr() : nullptr;
  p.grad_hx = grad_hx.data_ptr();
  p.grad_cx = is_lstm ? grad_cx.data_ptr() : nullptr;

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  C10_CUDA_CHECK(launch_backward(p, dtype, plan.cfg.use_tf32, stream));
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  // ---- weight, bias and input gradients: GEMMs on the current stream
  auto [grad_input, grad_weights] = backward_weight_grads(
      x, w, h0, res, dg_ih, dg_hh, xdrop, num_layers, bidirectional, has_biases, G);
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
