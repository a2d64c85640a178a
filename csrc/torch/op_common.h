// What the two ops (forward_op.cpp, backward_op.cpp) check and gather the
// same way: the arguments that describe the stack (mode, input, weights,
// states, lengths, seed), checked in the same order with the same messages
// (each prefixed with the op's name), and the contiguous operands whose
// pointers go into the kernel's parameters.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime_api.h>
#include <c10/util/string_view.h>

#include <optional>
#include <string>
#include <vector>

#include "problem.h"

namespace fused_rnn {
namespace binding {

// `t` (named `name` in messages) is on input's device, has input's dtype and
// the shape `sizes`.
inline void check_like(const char* op, const at::Tensor& t, const at::Tensor& input,
                       const char* name, at::IntArrayRef sizes) {
  TORCH_CHECK(t.device() == input.device(), op, name, " is on ", t.device(),
              " but input is on ", input.device());
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), op, name, " has dtype ", t.scalar_type(),
              " but input has dtype ", input.scalar_type());
  TORCH_CHECK(t.sizes() == sizes, op, name, " has shape ", t.sizes(), ", expected ", sizes);
}

// The stack as the checked arguments describe it.
struct StackArgs {
  Mode mode;
  DType dtype;
  int64_t T, B, I;  // input (T, B, I)
  int64_t D;        // directions
  int64_t LD;       // num_layers * D
  int64_t G;        // gates
  int64_t per_dir;  // weight tensors per (layer, direction)
  int64_t H;        // hidden size
  int64_t h_out;    // proj_size if > 0, else H
  bool is_lstm;
  bool use_dropout;  // dropout > 0 and num_layers > 1
};

// Checks, in this order: mode, input (CUDA, 3-d, dtype), num_layers,
// proj_size, dropout, input sizes, the weight list (count, then every shape),
// hx, cx (LSTM). `proj_unsupported`: null if proj_size > 0 is taken (then
// only proj_size >= 0 is checked), else the message for proj_size != 0.
inline StackArgs check_stack_args(const char* op, const at::Tensor& input,
                                  at::TensorList weights, const at::Tensor& hx,
                                  const std::optional<at::Tensor>& cx, c10::string_view mode_str,
                                  int64_t num_layers, bool bidirectional, bool has_biases,
                                  int64_t proj_size, double dropout,
                                  const char* proj_unsupported) {
  StackArgs a;
  TORCH_CHECK(parse_mode(mode_str, &a.mode), op, "unknown mode '", std::string(mode_str),
              "' (expected LSTM, GRU, RNN_TANH or RNN_RELU)");
  TORCH_CHECK(input.is_cuda(), op, "input must be a CUDA tensor, got one on ", input.device());
  TORCH_CHECK(input.dim() == 3, op, "input must be (T, B, I), got shape ", input.sizes());
  TORCH_CHECK(parse_dtype(input.scalar_type(), &a.dtype), op, "dtype ", input.scalar_type(),
              " is not supported (float32, float16, bfloat16)");
  TORCH_CHECK(num_layers >= 1, op, "num_layers must be >= 1, got ", num_layers);
  if (proj_unsupported == nullptr) {
    TORCH_CHECK(proj_size >= 0, op, "proj_size must be >= 0, got ", proj_size);
  } else {
    TORCH_CHECK(proj_size == 0, op, proj_unsupported);
  }
  TORCH_CHECK(dropout >= 0.0 && dropout <= 1.0, op, "dropout must be in [0, 1], got ", dropout);
  a.T = input.size(0);
  a.B = input.size(1);
  a.I = input.size(2);
  TORCH_CHECK(a.T >= 1 && a.B >= 1 && a.I >= 1, op, "input must be non-empty, got shape ",
              input.sizes());
  a.D = bidirectional ? 2 : 1;
  a.LD = num_layers * a.D;
  a.G = num_gates(a.mode);
  a.per_dir = 2 + (has_biases ? 2 : 0) + (proj_size > 0 ? 1 : 0);
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == a.LD * a.per_dir, op, "expected ",
              a.LD * a.per_dir, " weight tensors (num_layers * directions * ", a.per_dir,
              "), got ", weights.size());
  TORCH_CHECK(weights[0].dim() == 2 && weights[0].size(0) % a.G == 0 && weights[0].size(0) > 0,
              op, "weight_ih_l0 must be (", a.G, " * hidden_size, input_size), got shape ",
              weights[0].sizes());
  a.H = weights[0].size(0) / a.G;
  a.h_out = proj_size > 0 ? proj_size : a.H;
  const int64_t G = a.G, H = a.H, D = a.D, h_out = a.h_out;
  for (int64_t l = 0; l < num_layers; ++l) {
    const int64_t in_l = l == 0 ? a.I : D * h_out;
    for (int64_t d = 0; d < D; ++d) {
      const int64_t base = (l * D + d) * a.per_dir;
      check_like(op, weights[base], input, "w_ih", {G * H, in_l});
      check_like(op, weights[base + 1], input, "w_hh", {G * H, h_out});
      if (has_biases) {
        check_like(op, weights[base + 2], input, "b_ih", {G * H});
        check_like(op, weights[base + 3], input, "b_hh", {G * H});
      }
    }
  }
  check_like(op, hx, input, "hx", {a.LD, a.B, h_out});
  a.is_lstm = a.mode == Mode::kLSTM;
  if (a.is_lstm) {
    TORCH_CHECK(cx.has_value(), op, "cx is required for LSTM");
    check_like(op, *cx, input, "cx", {a.LD, a.B, H});
  }
  a.use_dropout = dropout > 0.0 && num_layers > 1;
  return a;
}

// Checks lengths (if given) and, when dropout is active, the seed.
inline void check_lengths_and_seed(const char* op, const at::Tensor& input, const StackArgs& a,
                                   const std::optional<at::Tensor>& lengths,
                                   const std::optional<at::Tensor>& seed) {
  if (lengths.has_value()) {
    TORCH_CHECK(lengths->device() == input.device() && lengths->scalar_type() == at::kLong &&
                    lengths->dim() == 1 && lengths->size(0) == a.B,
                op, "lengths must be an int64 tensor of shape (", a.B, ") on ", input.device(),
                ", got ", lengths->scalar_type(), " ", lengths->sizes(), " on ",
                lengths->device());
  }
  if (a.use_dropout) {
    TORCH_CHECK(seed.has_value(), op, "dropout > 0 with num_layers > 1 needs a seed tensor");
    TORCH_CHECK(seed->device() == input.device() && seed->scalar_type() == at::kLong &&
                    seed->numel() == 1,
                op, "seed must be a 0-d int64 tensor on ", input.device(), ", got ",
                seed->scalar_type(), " ", seed->sizes(), " on ", seed->device());
  }
}

// The operands both kernels read, contiguous (copies only where the caller's
// are not); c0 / lens are undefined without cx (non-LSTM) / lengths.
struct StackOperands {
  at::Tensor x;
  std::vector<at::Tensor> w;
  at::Tensor h0, c0, lens;
};

inline StackOperands contiguous_operands(const at::Tensor& input, at::TensorList weights,
                                         const at::Tensor& hx,
                                         const std::optional<at::Tensor>& cx,
                                         const std::optional<at::Tensor>& lengths,
                                         const StackArgs& a) {
  StackOperands o;
  o.x = input.contiguous();
  o.w.reserve(weights.size());
  for (const auto& t : weights) o.w.push_back(t.contiguous());
  o.h0 = hx.contiguous();
  o.c0 = a.is_lstm ? cx->contiguous() : at::Tensor();
  o.lens = lengths.has_value() ? lengths->contiguous() : at::Tensor();
  return o;
}

// Sets the state, lengths and seed pointers that ForwardParams and
// BackwardParams share.
template <typename Params>
void set_state_pointers(Params& p, const StackOperands& o, const StackArgs& a,
                        const std::optional<at::Tensor>& lengths,
                        const std::optional<at::Tensor>& seed) {
  p.hx = o.h0.data_ptr();
  p.cx = a.is_lstm ? o.c0.data_ptr() : nullptr;
  p.lengths = lengths.has_value() ? o.lens.data_ptr<int64_t>() : nullptr;
  p.seed = a.use_dropout ? seed->data_ptr<int64_t>() : nullptr;
}

// The flags policy's step counters (the workspace's `flags` region, both
// kernels) start at 0: cleared on the op's stream, ordered before the launch
// (a memset node under CUDA-graph capture; a few hundred bytes). Nothing to do
// for the grid policy (offset -1).
inline void clear_step_counters(const at::Tensor& workspace, int64_t offset, int64_t bytes,
                                cudaStream_t stream) {
  if (offset < 0) return;
  C10_CUDA_CHECK(cudaMemsetAsync(static_cast<unsigned char*>(workspace.data_ptr()) + offset, 0,
                                 static_cast<size_t>(bytes), stream));
}

}  // namespace binding
}  // namespace fused_rnn
