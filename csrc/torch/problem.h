// Shared by the op (forward_op.cpp) and the Python module (module.cpp): turn
// the op's arguments into a kernels-side ForwardProblem and plan it on a
// device. Checking one call twice (Python asks plan(), then the op plans
// again) costs ~1 us: plan_forward_on_device caches.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/string_view.h>

#include <cstdlib>
#include <string>
#include <type_traits>
#include <utility>

#include "kernels/backward_api.h"
#include "kernels/forward_api.h"

namespace fused_rnn {
namespace binding {

inline bool parse_mode(c10::string_view s, Mode* out) {
  if (s == "LSTM") *out = Mode::kLSTM;
  else if (s == "GRU") *out = Mode::kGRU;
  else if (s == "RNN_TANH") *out = Mode::kRnnTanh;
  else if (s == "RNN_RELU") *out = Mode::kRnnRelu;
  else return false;
  return true;
}

inline bool parse_dtype(at::ScalarType t, DType* out) {
  if (t == at::kFloat) *out = DType::kFloat32;
  else if (t == at::kHalf) *out = DType::kFloat16;
  else if (t == at::kBFloat16) *out = DType::kBFloat16;
  else return false;
  return true;
}

// float32 uses TF32 tensor cores when torch would let cuDNN's RNN do so
// (torch.backends.cudnn.rnn.fp32_precision, or the legacy
// torch.backends.cudnn.allow_tf32; default: TF32): the fused module then
// matches the precision of the nn.LSTM it replaces, with either setting.
// (cuBLAS's flag, torch.backends.cuda.matmul.allow_tf32, is False by default
// and governs matmuls, not RNNs.)
//
// Asked for the RNN operator specifically: without an operator, newer torch
// raises when the conv and RNN settings differ. The getter's signature
// changed across releases -- allowTF32CuDNN(), allowTF32CuDNN(std::string op),
// allowTF32CuDNN(std::optional<Float32Op> op) -- so the call is chosen from
// the member's own parameter type, naming no release-specific symbol.
namespace detail {
template <typename F>
struct getter_arg;
template <typename R, typename C>
struct getter_arg<R (C::*)() const> {
  using type = void;
};
template <typename R, typename C, typename A>
struct getter_arg<R (C::*)(A) const> {
  using type = std::decay_t<A>;
};

template <typename Ctx>
bool cudnn_rnn_allows_tf32(const Ctx& ctx) {
  using Arg = typename getter_arg<decltype(&Ctx::allowTF32CuDNN)>::type;
  if constexpr (std::is_void_v<Arg>) {
    return ctx.allowTF32CuDNN();
  } else if constexpr (std::is_same_v<Arg, std::string>) {
    return ctx.allowTF32CuDNN(std::string("rnn"));
  } else {  // std::optional<Float32Op>
    using Op = typename Arg::value_type;
    return ctx.allowTF32CuDNN(Op::RNN);
  }
}
}  // namespace detail

inline bool fp32_uses_tf32() { return detail::cudnn_rnn_allows_tf32(at::globalContext()); }

// Layer 0's input projection before the launch needs a 16-bit x 16-bit GEMM
// with fp32 output: at::mm(a, b, out_dtype) (torch >= 2.8). Detected from
// the overload itself, naming no release; without it the kernel keeps the
// projection (ForwardProblem::can_project_input).
namespace detail {
template <typename Ten>
constexpr auto has_mm_out_dtype(int)
    -> decltype(at::mm(std::declval<Ten>(), std::declval<Ten>(), at::kFloat), bool()) {
  return true;
}
template <typename Ten>
constexpr bool has_mm_out_dtype(long) {
  return false;
}
template <typename Ten>
auto mm_fp32(const Ten& a, const Ten& b, int) -> decltype(at::mm(a, b, at::kFloat)) {
  return at::mm(a, b, at::kFloat);
}
template <typename Ten>
Ten mm_fp32(const Ten&, const Ten&, long) {
  TORCH_CHECK(false, "fused_rnn: this torch has no mm(..., out_dtype)");
}
}  // namespace detail

constexpr bool can_project_input() { return detail::has_mm_out_dtype<at::Tensor>(0); }

// a (M, K) x b (K, N) -> (M, N) fp32, 16-bit operands, fp32 accumulation
// (cuBLAS on the current stream). Only called when can_project_input().
inline at::Tensor mm_fp32(const at::Tensor& a, const at::Tensor& b) {
  return detail::mm_fp32(a, b, 0);
}

// The synchronisation policy requested through FUSED_RNN_SYNC ("grid",
// "flags", "lean", "cluster", "auto" or unset), read at every call so that a benchmark
// can switch it between calls in one process (the plan cache keys on it).
inline SyncPolicy requested_sync() {
  const char* v = std::getenv("FUSED_RNN_SYNC");
  SyncPolicy s = SyncPolicy::kAuto;
  TORCH_CHECK(parse_sync(v, &s),
              "FUSED_RNN_SYNC must be 'grid', 'flags', 'lean', 'cluster' or 'auto', got '",
              v ? v : "", "'");
  return s;
}

// Hardware tanh in the bf16 forward's epilogue, requested through FUSED_RNN_FAST_TANH
// ("1"; unset, "" or "0": off), read at every call like FUSED_RNN_SYNC.
inline bool requested_fast_tanh() {
  const char* v = std::getenv("FUSED_RNN_FAST_TANH");
  const std::string s = v ? v : "";
  TORCH_CHECK(s.empty() || s == "0" || s == "1", "FUSED_RNN_FAST_TANH must be '0' or '1', got '",
              s, "'");
  return s == "1";
}

// The backward's thread-block cluster size requested through FUSED_RNN_CLUSTER
// ("auto" or unset: the planner's choice; "1": none; "2", "4", "8"), read at
// every call like FUSED_RNN_SYNC.
inline int requested_cluster() {
  const char* v = std::getenv("FUSED_RNN_CLUSTER");
  int c = 0;
  TORCH_CHECK(parse_cluster(v, &c), "FUSED_RNN_CLUSTER must be 'auto', '1', '2', '4' or '8', got '",
              v ? v : "", "'");
  return c;
}

inline ForwardProblem make_problem(Mode mode, int64_t num_layers, bool bidirectional,
                                   bool has_biases, int64_t proj_size, int64_t input_size,
                                   int64_t hidden_size, int64_t batch, int64_t seq_len, DType dtype,
                                   bool need_reserve, bool has_lengths, double dropout) {
  ForwardProblem p;
  p.mode = mode;
  p.num_layers = static_cast<int>(num_layers > (1 << 20) ? (1 << 20) : num_layers);
  p.bidirectional = bidirectional;
  p.has_biases = has_biases;
  p.proj_size = proj_size;
  p.input_size = input_size;
  p.hidden_size = hidden_size;
  p.batch = batch;
  p.seq_len = seq_len;
  p.dtype = dtype;
  p.need_reserve = need_reserve;
  p.has_lengths = has_lengths;
  p.dropout = dropout;
  p.allow_tf32 = dtype == DType::kFloat32 && fp32_uses_tf32();
  p.sync = requested_sync();
  p.fast_tanh = requested_fast_tanh();
  p.cluster = requested_cluster();
  p.can_project_input = can_project_input();
  return p;
}

// (ok, "fused: ..." or the reason) for a problem on CUDA device `device`;
// `backward` plans the backward kernel ("fused backward: ...") instead.
inline std::pair<bool, std::string> plan_problem(const ForwardProblem& p, int64_t device,
                                                 bool backward = false) {
  const int64_t n = c10::cuda::device_count();
  if (device < 0 || device >= n) {
    return {false, "no CUDA device with index " + std::to_string(device) + " (" +
                       std::to_string(n) + " visible)"};
  }
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  if (backward) {
    const BackwardPlanResult r = plan_backward_on_device(p, static_cast<int>(device));
    return {r.ok, r.reason};
  }
  const PlanResult r = plan_forward_on_device(p, static_cast<int>(device));
  return {r.ok, r.reason};
}

}  // namespace binding
}  // namespace fused_rnn
