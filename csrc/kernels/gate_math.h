// The cell updates of LSTM / GRU / Elman RNN on fp32 pre-activations.
//
// __host__ __device__ and free of CUDA headers, so the same code runs in the
// kernel's epilogue and in a host unit test (tests/test_compile_kernels.py).
// Formulas are torch's (gate order LSTM i,f,g,o; GRU r,z,n):
//
//   LSTM  i = s(x_i + h_i)  f = s(x_f + h_f)  g = tanh(x_g + h_g)  o = s(x_o + h_o)
//         c' = f c + i g    h' = o tanh(c')
//   GRU   r = s(x_r + h_r)  z = s(x_z + h_z)  n = tanh(x_n + r (h_n))
//         h' = (1 - z) n + z h          (x_* include b_ih, h_* include b_hh)
//   RNN   h' = tanh(x + h)  or  relu(x + h)
//
// Why not tanhf(): the extension is built with --use_fast_math, under which
// nvcc maps tanhf to tanh.approx.f32 (relative error ~2^-11) -- far coarser
// than an fp32 RNN may be. tanh_f below keeps ~1e-7 everywhere via expm1f
// (not affected by fast-math). sigmoid uses expf (fast-math: ex2.approx, a
// few ulp), which is accurate enough for a value in (0, 1).
#pragma once

#include "common.h"

#if !defined(__CUDA_ARCH__)
#include <cmath>
#endif

namespace fused_rnn {

FRNN_HD float frnn_exp(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  return std::exp(x);
#endif
}

FRNN_HD float frnn_expm1(float x) {
#if defined(__CUDA_ARCH__)
  return expm1f(x);
#else
  return std::expm1(x);
#endif
}

FRNN_HD float sigmoid_f(float x) {
  // [sass-path:accurate-act:begin] (benchmarks/sass_report.py)
  // exp(-x) overflows to +inf for x < -88: 1 / inf = 0, the right limit.
  return 1.0f / (1.0f + frnn_exp(-x));
  // [sass-path:accurate-act:end]
}

FRNN_HD float tanh_f(float x) {
  // [sass-path:accurate-act:begin]
  const float ax = x < 0.0f ? -x : x;
  // tanh(9) = 1 - 3e-8: rounds to 1 in fp32, and expm1(18) stays finite.
  float r;
  if (ax >= 9.0f) {
    r = 1.0f;
  } else {
    const float e = frnn_expm1(2.0f * ax);  // no cancellation near 0
    r = e / (e + 2.0f);
  }
  return x < 0.0f ? -r : r;
  // [sass-path:accurate-act:end]
}

FRNN_HD float relu_f(float x) { return x > 0.0f ? x : 0.0f; }

// The hardware's tanh (MUFU.TANH, tanh.approx.f32: max relative error ~2^-11), one
// instruction instead of tanh_f's ~20; sigmoid from it: s(x) = 0.5 + 0.5 tanh(x / 2)
// (absolute error <= 2^-12). For bf16 only (act_tanh below; opt-in): bf16 keeps 8 bits,
// so its h carries a rounding error 8x the approximation's; fp16 (11 bits) and fp32 /
// TF32 keep the accurate forms. On the host (the emulation, tests): the exact tanh.
FRNN_HD float tanh_fast(float x) {
  // [sass-path:fast-act:begin]
#if defined(__CUDA_ARCH__)
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return std::tanh(x);
#endif
  // [sass-path:fast-act:end]
}

FRNN_HD float sigmoid_fast(float x) {
  // [sass-path:fast-act:begin]
  return 0.5f + 0.5f * tanh_fast(0.5f * x);
  // [sass-path:fast-act:end]
}

// The gate nonlinearities as the forward's epilogue applies them: the hardware tanh
// where `fast` (ForwardConfig::fast_tanh: bf16, opt-in), else the accurate forms.
FRNN_HD float act_tanh(bool fast, float x) { return fast ? tanh_fast(x) : tanh_f(x); }
FRNN_HD float act_sigmoid(bool fast, float x) { return fast ? sigmoid_fast(x) : sigmoid_f(x); }

// Activated gates and new state of one (unit, batch row).
struct LstmOut {
  float i, f, g, o, c, h;
};

// pre[q] = x-part + h-part (+ both biases) of gate q (i, f, g, o).
FRNN_HD LstmOut lstm_cell(const float pre[4], float c_prev) {
  LstmOut r;
  r.i = sigmoid_f(pre[0]);
  r.f = sigmoid_f(pre[1]);
  r.g = tanh_f(pre[2]);
  r.o = sigmoid_f(pre[3]);
  r.c = r.f * c_prev + r.i * r.g;
  r.h = r.o * tanh_f(r.c);
  return r;
}

struct GruOut {
  float r, z, n, hn, h;  // hn = W_hn h + b_hn (saved for backward)
};

// gx[q] = W_i? x + b_i?, gh[q] = W_h? h + b_h?, q = r, z, n.
FRNN_HD GruOut gru_cell(const float gx[3], const float gh[3], float h_prev) {
  GruOut r;
  r.r = sigmoid_f(gx[0] + gh[0]);
  r.z = sigmoid_f(gx[1] + gh[1]);
  r.hn = gh[2];
  r.n = tanh_f(gx[2] + r.r * gh[2]);
  r.h = (1.0f - r.z) * r.n + r.z * h_prev;
  return r;
}

FRNN_HD float rnn_cell(float pre, bool relu) { return relu ? relu_f(pre) : tanh_f(pre); }

}  // namespace fused_rnn
