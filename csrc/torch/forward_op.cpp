// fused_rnn::_fused_forward: the schema of fused_rnn::rnn_forward (see
// csrc/README.md), implemented for CUDA by the persistent kernel of
// csrc/kernels/. fused_rnn/ops.py calls it only after plan() said yes; this
// file still checks everything, because the op is callable directly.
//
// No device-wide sync, no host read of device data (the dropout seed and the
// lengths stay on the device), allocation through the caching allocator, one
// cooperative launch on the current stream: capturable in a CUDA graph.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "kernels/forward_api.h"
#include "problem.h"

namespace fused_rnn {
namespace binding {
namespace {

constexpr const char* kOp = "fused_rnn::_fused_forward: ";

void check_like(const at::Tensor& t, const at::Tensor& input, const char* name,
                at::IntArrayRef sizes) {
  TORCH_CHECK(t.device() == input.device(), kOp, name, " is on ", t.device(),
              " but input is on ", input.device());
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), kOp, name, " has dtype ", t.scalar_type(),
              " but input has dtype ", input.scalar_type());
  TORCH_CHECK(t.sizes() == sizes, kOp, name, " has shape ", t.sizes(), ", expected ", sizes);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_forward_cuda(
    const at::Tensor& input, at::TensorList weights, const at::Tensor& hx,
    const std::optional<at::Tensor>& cx, const std::optional<at::Tensor>& lengths,
    const std::optional<at::Tensor>& seed, c10::string_view mode_str, int64_t num_layers,
    bool bidirectional, bool has_biases, int64_t proj_size, double dropout, bool need_reserve) {
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
  TORCH_CHECK(proj_size >= 0, kOp, "proj_size must be >= 0, got ", proj_size);
  TORCH_CHECK(dropout >= 0.0 && dropout <= 1.0, kOp, "dropout must be in [0, 1], got ", dropout);
  const int64_t T = input.size(0), B = input.size(1), I = input.size(2);
  TORCH_CHECK(T >= 1 && B >= 1 && I >= 1, kOp, "input must be non-empty, got shape ",
              input.sizes());
  const int64_t D = bidirectional ? 2 : 1;
  const int64_t LD = num_layers * D;
  const int64_t G = num_gates(mode);
  const int64_t per_dir = 2 + (has_biases ? 2 : 0) + (proj_size > 0 ? 1 : 0);
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == LD * per_dir, kOp, "expected ",
              LD * per_dir, " weight tensors (num_layers * directions * ", per_dir, "), got ",
              weights.size());
  TORCH_CHECK(weights[0].dim() == 2 && weights[0].size(0) % G == 0 && weights[0].size(0) > 0,
              kOp, "weight_ih_l0 must be (", G, " * hidden_size, input_size), got shape ",
              weights[0].sizes());
  const int64_t H = weights[0].size(0) / G;
  const int64_t h_out = proj_size > 0 ? proj_size : H;
  for (int64_t l = 0; l < num_layers; ++l) {
    const int64_t in_l = l == 0 ? I : D * h_out;
    for (int64_t d = 0; d < D; ++d) {
      const int64_t base = (l * D + d) * per_dir;
      check_like(weights[base], input, "w_ih", {G * H, in_l});
      check_like(weights[base + 1], input, "w_hh", {G * H, h_out});
      if (has_biases) {
        check_like(weights[base + 2], input, "b_ih", {G * H});
        check_like(weights[base + 3], input, "b_hh", {G * H});
      }
    }
  }
  check_like(hx, input, "hx", {LD, B, h_out});
  const bool is_lstm = mode == Mode::kLSTM;
  if (is_lstm) {
    TORCH_CHECK(cx.has_value(), kOp, "cx is required for LSTM");
    check_like(*cx, input, "cx", {LD, B, H});
  }
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

  // ---- plan (same function as fused_rnn._C.plan)
  c10::cuda::CUDAGuard guard(input.device());
  const int device = input.get_device();
  const ForwardProblem problem =
      make_problem(mode, num_layers, bidirectional, has_biases, proj_size, I, H, B, T, dtype,
                   need_reserve, lengths.has_value(), dropout);
  const PlanResult plan = plan_forward_on_device(problem, device);
  TORCH_CHECK(plan.ok, kOp, "this call is not covered by the fused kernel: ", plan.reason);

  // ---- operands (contiguous; copies only where the caller's are not)
  const at::Tensor x = input.contiguous();
  std::vector<at::Tensor> w;
  w.reserve(weights.size());
  for (const auto& t : weights) w.push_back(t.contiguous());
  const at::Tensor h0 = hx.contiguous();
  const at::Tensor c0 = is_lstm ? cx->contiguous() : at::Tensor();
  const at::Tensor lens = lengths.has_value() ? lengths->contiguous() : at::Tensor();

  // ---- outputs and workspace (caching allocator; nothing needs zeroing:
  // the kernel writes every element of output, hy, cy and the valid reserve)
  const auto opts = input.options();
  at::Tensor output = at::empty({T, B, D * H}, opts);
  at::Tensor hy = at::empty({LD, B, H}, opts);
  at::Tensor cy = is_lstm ? at::empty({LD, B, H}, opts) : at::empty({0}, opts);
  at::Tensor reserve = need_reserve ? at::empty({LD, T, B, problem.reserve_width()}, opts)
                                    : at::empty({0}, opts);
  at::Tensor ws = at::empty({std::max<int64_t>(forward_workspace(problem).total, 1)},
                            opts.dtype(at::kByte));

  ForwardParams p;
  init_forward_params(p, problem, plan.cfg, ws.data_ptr());
  p.x = x.data_ptr();
  for (int64_t ld = 0; ld < LD; ++ld) {
    const int64_t base = ld * per_dir;
    p.w_ih[ld] = w[base].data_ptr();
    p.w_hh[ld] = w[base + 1].data_ptr();
    p.b_ih[ld] = has_biases ? w[base + 2].data_ptr() : nullptr;
    p.b_hh[ld] = has_biases ? w[base + 3].data_ptr() : nullptr;
  }
  p.hx = h0.data_ptr();
  p.cx = is_lstm ? c0.data_ptr() : nullptr;
  p.lengths = lengths.has_value() ? lens.data_ptr<int64_t>() : nullptr;
  p.seed = use_dropout ? seed->data_ptr<int64_t>() : nullptr;
  p.y = output.data_ptr();
  p.hy = hy.data_ptr();
  p.cy = is_lstm ? cy.data_ptr() : nullptr;
  p.reserve = need_reserve ? reserve.data_ptr() : nullptr;

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(input.get_device()).stream();
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
