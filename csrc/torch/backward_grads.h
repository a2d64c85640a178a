// After the backward kernel: the weight, bias and input gradients from the
// saved gate gradients, as a few large GEMMs (ATen: cuBLAS on a GPU, on the
// current stream). ATen only, no CUDA header: the same code runs on CPU
// tensors, which is how tests/test_compile_backward.py checks it against the
// reference without a GPU (on the emulated kernel's outputs).
//
// With TB = T*B rows, GH = G*H, and per (layer l, direction d), ld = l*D + d:
//   dW_ih = dg_ih^T  X_l          X_0 = input; X_l = layer l-1's output:
//                                  the reserve's h columns (no dropout; rows
//                                  past a length hold the frozen state, their
//                                  gate gradients are 0) or xdrop[l-1]
//   dW_hh = dg_hh^T  H_prev        H_prev[t] = h_{t-1} in processing order:
//                                  reserve h at t-1 (d = 0) / t+1 (d = 1),
//                                  hx at the first step (a (TB, H) copy, so
//                                  that the product is one GEMM, one rounding)
//   db_ih = sum dg_ih,  db_hh = sum dg_hh
//   grad_input = sum_d dg_ih^{0,d} W_ih^{0,d}
// Results are in the input's dtype (cuBLAS accumulates in fp32).
#pragma once

#include <ATen/ATen.h>

#include <tuple>
#include <vector>

namespace fused_rnn {
namespace binding {

// dg_ih, dg_hh: (LD, T, B, GHp) (the same tensor unless GRU); xdrop:
// (L-1, T, B, D*H) or undefined (no dropout); reserve (LD, T, B, S); input
// (T, B, I); hx (LD, B, H); weights in torch's flat order (per_dir tensors
// per layer-direction: w_ih, w_hh[, b_ih, b_hh]).
// Returns (grad_input (T, B, I), grad_weights in the same order).
inline std::tuple<at::Tensor, std::vector<at::Tensor>> backward_weight_grads(
    const at::Tensor& input, const std::vector<at::Tensor>& weights, const at::Tensor& hx,
    const at::Tensor& reserve, const at::Tensor& dg_ih, const at::Tensor& dg_hh,
    const at::Tensor& xdrop, int64_t num_layers, bool bidirectional, bool has_biases,
    int64_t gates) {
  const int64_t T = input.size(0), B = input.size(1), I = input.size(2);
  const int64_t D = bidirectional ? 2 : 1;
  const int64_t H = hx.size(2);
  const int64_t GH = gates * H;
  const int64_t S = reserve.size(3);
  const int64_t TB = T * B;
  const int64_t per_dir = has_biases ? 4 : 2;

  // (rows, GH) views of the gate gradients of ld at timesteps [t0, t0 + n)
  auto gates_of = [&](const at::Tensor& dg, int64_t ld, int64_t t0, int64_t n) {
    return dg.select(0, ld).narrow(0, t0, n).narrow(2, 0, GH).reshape({n * B, GH});
  };
  // (rows, H) view of the h columns of reserve row ld at timesteps [t0, t0 + n)
  auto h_of = [&](int64_t ld, int64_t t0, int64_t n) {
    return reserve.select(0, ld).narrow(0, t0, n).narrow(2, S - H, H).reshape({n * B, H});
  };

  std::vector<at::Tensor> grads(weights.size());
  at::Tensor grad_input;
  for (int64_t d = 0; d < D; ++d) {
    const at::Tensor g = gates_of(dg_ih, d, 0, T);
    const at::Tensor& w_ih0 = weights[d * per_dir];
    if (d == 0) grad_input = at::mm(g, w_ih0);
    else grad_input.addmm_(g, w_ih0);
  }
  grad_input = grad_input.view({T, B, I});

  for (int64_t l = 0; l < num_layers; ++l) {
    for (int64_t d = 0; d < D; ++d) {
      const int64_t ld = l * D + d;
      const int64_t base = ld * per_dir;
      const at::Tensor gi = gates_of(dg_ih, ld, 0, T);
      const at::Tensor gh = gates_of(dg_hh, ld, 0, T);
      const at::Tensor git = gi.t();
      // dW_ih
      if (l == 0) {
        grads[base] = at::mm(git, input.reshape({TB, I}));
      } else if (xdrop.defined()) {
        grads[base] = at::mm(git, xdrop.select(0, l - 1).reshape({TB, D * H}));
      } else if (D == 1) {
        grads[base] = at::mm(git, h_of(l - 1, 0, T));
      } else {
        grads[base] = at::cat({at::mm(git, h_of((l - 1) * D, 0, T)),
                               at::mm(git, h_of((l - 1) * D + 1, 0, T))}, 1);
      }
      // dW_hh: h_{t-1} in processing order (hx at the first processed step), one GEMM
      const at::Tensor h0 = hx.select(0, ld);
      at::Tensor h_prev = h0;
      if (T > 1) h_prev = d == 0 ? at::cat({h0, h_of(ld, 0, T - 1)}, 0)
                                 : at::cat({h_of(ld, 1, T - 1), h0}, 0);
      const at::Tensor dw_hh = at::mm(gh.t(), h_prev);
      grads[base + 1] = dw_hh;
      if (has_biases) {
        grads[base + 2] = gi.sum(0);
        grads[base + 3] = gh.sum(0);
      }
    }
  }
  return {grad_input, grads};
}

}  // namespace binding
}  // namespace fused_rnn
