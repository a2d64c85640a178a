// The Python module fused_rnn._C (or the JIT-built fused_rnn_C): the planners
// and build facts. The ops themselves are registered with the dispatcher by
// forward_op.cpp and backward_op.cpp when this module is imported
// (torch.ops.fused_rnn.*).
#include <torch/extension.h>

#include <string>
#include <tuple>

#include "kernels/forward_api.h"
#include "phase_buffer.h"
#include "problem.h"

// _build.source_hash() of the csrc/ tree this module was compiled from
// (-DFRNN_SOURCE_HASH=<hex>; "unknown" when built without _build.py's flags).
#define FRNN_STR_(x) #x
#define FRNN_STR(x) FRNN_STR_(x)
#ifdef FRNN_SOURCE_HASH
#define FRNN_SOURCE_HASH_STR FRNN_STR(FRNN_SOURCE_HASH)
#else
#define FRNN_SOURCE_HASH_STR "unknown"
#endif

namespace {

using fused_rnn::DType;
using fused_rnn::Mode;

// torch's Python spelling of the dtypes a user is likely to pass.
std::string torch_dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return "torch.float64";
    case at::kFloat: return "torch.float32";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kLong: return "torch.int64";
    case at::kInt: return "torch.int32";
    default: return std::string("torch.") + c10::toString(t);
  }
}

// Same decision as the op makes: (True, "fused: <config>") or (False, "<reason>");
// with `backward`, the backward op's decision ("fused backward: <config>").
std::tuple<bool, std::string> plan_impl(const std::string& mode, int64_t num_layers,
                                        bool bidirectional, bool has_biases, int64_t proj_size,
                                        int64_t input_size, int64_t hidden_size, int64_t batch,
                                        int64_t seq_len, at::ScalarType dtype,
                                        int64_t device_index, bool need_reserve, bool has_lengths,
                                        double dropout, bool backward) {
  Mode m;
  if (!fused_rnn::binding::parse_mode(mode, &m)) return {false, "unknown mode '" + mode + "'"};
  DType dt;
  if (!fused_rnn::binding::parse_dtype(dtype, &dt)) {
    return {false, "dtype " + torch_dtype_name(dtype) +
                       " is not covered by the fused kernel (float32, float16, bfloat16)"};
  }
  if (num_layers < 1) return {false, "num_layers must be >= 1"};
  if (dropout < 0.0 || dropout > 1.0) return {false, "dropout must be in [0, 1]"};
  const fused_rnn::ForwardProblem p = fused_rnn::binding::make_problem(
      m, num_layers, bidirectional, has_biases, proj_size, input_size, hidden_size, batch,
      seq_len, dt, need_reserve, has_lengths, dropout);
  const auto r = fused_rnn::binding::plan_problem(p, device_index, backward);
  return {r.first, r.second};
}

std::tuple<bool, std::string> plan(const std::string& mode, int64_t num_layers, bool bidirectional,
                                   bool has_biases, int64_t proj_size, int64_t input_size,
                                   int64_t hidden_size, int64_t batch, int64_t seq_len,
                                   at::ScalarType dtype, int64_t device_index, bool need_reserve,
                                   bool has_lengths, double dropout) {
  return plan_impl(mode, num_layers, bidirectional, has_biases, proj_size, input_size,
                   hidden_size, batch, seq_len, dtype, device_index, need_reserve, has_lengths,
                   dropout, false);
}

std::tuple<bool, std::string> plan_backward(const std::string& mode, int64_t num_layers,
                                            bool bidirectional, bool has_biases,
                                            int64_t proj_size, int64_t input_size,
                                            int64_t hidden_size, int64_t batch, int64_t seq_len,
                                            at::ScalarType dtype, int64_t device_index,
                                            bool need_reserve, bool has_lengths, double dropout) {
  return plan_impl(mode, num_layers, bidirectional, has_biases, proj_size, input_size,
                   hidden_size, batch, seq_len, dtype, device_index, need_reserve, has_lengths,
                   dropout, true);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fused_rnn CUDA extension: persistent-kernel LSTM/GRU/RNN forward and backward";
  m.def("plan", &plan, py::arg("mode"), py::arg("num_layers"), py::arg("bidirectional"),
        py::arg("has_biases"), py::arg("proj_size"), py::arg("input_size"),
        py::arg("hidden_size"), py::arg("batch"), py::arg("seq_len"), py::arg("dtype"),
        py::arg("device_index"), py::arg("need_reserve"), py::arg("has_lengths"),
        py::arg("dropout"),
        "Whether the fused forward kernel covers this call: (True, 'fused: <config>') or "
        "(False, '<reason>').");
  m.def("plan_backward", &plan_backward, py::arg("mode"), py::arg("num_layers"),
        py::arg("bidirectional"), py::arg("has_biases"), py::arg("proj_size"),
        py::arg("input_size"), py::arg("hidden_size"), py::arg("batch"), py::arg("seq_len"),
        py::arg("dtype"), py::arg("device_index"), py::arg("need_reserve"),
        py::arg("has_lengths"), py::arg("dropout"),
        "Whether the fused backward kernel covers the backward of this call: (True, 'fused "
        "backward: <config>') or (False, '<reason>'). (It also needs a saved reserve, i.e. "
        "a forward with need_reserve.)");
  m.def("compiled_archs", &fused_rnn::compiled_archs,
        "GPU architectures the kernels were compiled for, e.g. ['sm_80', 'sm_90'].");
  m.def(
      "kernel_binary_version",
      [](int64_t device) {
        std::string why;
        const int v = fused_rnn::forward_binary_version(static_cast<int>(device), &why);
        return std::make_tuple(v, why);
      },
      py::arg("device_index"),
      "(binaryVersion of the forward kernel on that device, e.g. 90, or -1; error text).");
  m.def("fp32_uses_tf32", &fused_rnn::binding::fp32_uses_tf32,
        "Whether float32 calls use TF32 tensor cores now (follows torch.backends.cudnn.allow_tf32).");
  m.attr("max_layer_directions") = fused_rnn::kMaxLayerDirs;
  m.attr("forward_threads") = fused_rnn::kForwardThreads;
  m.attr("has_fused_backward") = true;
  m.attr("source_hash") = FRNN_SOURCE_HASH_STR;
  m.attr("backward_threads") = fused_rnn::kBackwardThreads;
  // Per-phase timing (diagnostics; csrc/torch/phase_buffer.h, csrc/kernels/phase_timing.h).
  m.attr("phase_timing_compiled") = fused_rnn::binding::kPhaseTimingCompiled;
  m.def("set_phase_buffer", &fused_rnn::binding::set_phase_buffer, py::arg("which"),
        py::arg("buf"),
        "Hands an int64 CUDA tensor to the next launches of the 'forward' or 'backward' kernel "
        "for per-phase timing records (layout: csrc/kernels/phase_timing.h); None clears it. "
        "Raises unless the extension was built with FUSED_RNN_PHASE_TIMING=1.");
  m.def("phase_buffer_size", &fused_rnn::binding::phase_buffer_size, py::arg("which"),
        py::arg("num_layers"), py::arg("bidirectional"), py::arg("seq_len"),
        "int64 elements a phase buffer needs for one launch of the 'forward' or 'backward' "
        "kernel: 8 + L*D*(8 + 4*S), S = its wave steps.");
}
