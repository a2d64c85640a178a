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

// One activated gate, as the forward's epilogue applies it (`fast`: act_tanh's hardware
// tanh): pre = x-part + h-part (+ both biases); GRU's n gate: gx + r * gh.
FRNN_HD float lstm_gate(int q, float pre, bool fast) {  // q = i, f, g, o
  return q == 2 ? act_tanh(fast, pre) : act_sigmoid(fast, pre);
}
FRNN_HD float gru_gate(int q, float gx, float gh, float r, bool fast) {  // q = r, z, n
  return q < 2 ? act_sigmoid(fast, gx + gh) : act_tanh(fast, gx + r * gh);
}
FRNN_HD float rnn_gate(float pre, bool relu, bool fast) {
  return relu ? relu_f(pre) : act_tanh(fast, pre);
}

// The new state from the activated gates.
struct LstmState {
  float c, h;
};
FRNN_HD LstmState lstm_state(float i, float f, float g, float o, float c_prev, bool fast) {
  const float c = f * c_prev + i * g;
  return {c, o * act_tanh(fast, c)};
}
FRNN_HD float gru_state(float z, float n, float h_prev) { return (1.0f - z) * n + z * h_prev; }

// Activated gates and new state of one (unit, batch row), accurate math.
struct LstmOut {
  float i, f, g, o, c, h;
};

// pre[q] = x-part + h-part (+ both biases) of gate q (i, f, g, o).
FRNN_HD LstmOut lstm_cell(const float pre[4], float c_prev) {
  LstmOut r;
  r.i = lstm_gate(0, pre[0], false);
  r.f = lstm_gate(1, pre[1], false);
  r.g = lstm_gate(2, pre[2], false);
  r.o = lstm_gate(3, pre[3], false);
  const LstmState s = lstm_state(r.i, r.f, r.g, r.o, c_prev, false);
  r.c = s.c;
  r.h = s.h;
  return r;
}

struct GruOut {
  float r, z, n, hn, h;  // hn = W_hn h + b_hn (saved for backward)
};

// gx[q] = W_i? x + b_i?, gh[q] = W_h? h + b_h?, q = r, z, n.
FRNN_HD GruOut gru_cell(const float gx[3], const float gh[3], float h_prev) {
  GruOut r;
  r.r = gru_gate(0, gx[0], gh[0], 0.0f, false);
  r.z = gru_gate(1, gx[1], gh[1], 0.0f, false);
  r.hn = gh[2];
  r.n = gru_gate(2, gx[2], gh[2], r.r, false);
  r.h = gru_state(r.z, r.n, h_prev);
  return r;
}

FRNN_HD float rnn_cell(float pre, bool relu) { return rnn_gate(pre, relu, false); }

}  // namespace fused_rnn
