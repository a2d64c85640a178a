// The binding's side of per-phase timing (csrc/kernels/phase_timing.h): a
// diagnostics hook that hands an int64 CUDA buffer to the next launches of
// the forward or backward kernel without touching any op schema.
//
//   _C.phase_timing_compiled                 built with FUSED_RNN_PHASE_TIMING=1?
//   _C.set_phase_buffer("forward" | "backward", buf or None)
//   _C.phase_buffer_size("forward" | "backward", num_layers, bidirectional, seq_len)
//
// While a buffer is set, every launch of that kernel (from any thread, on
// the buffer's device) records into it, overwriting the previous records; the
// caller synchronises before reading it. The module keeps a reference to the
// buffer until it is replaced or cleared (None). Setting a buffer raises on a
// build without the flag (its kernels carry no recorder); clearing is always
// allowed. Without the flag the ops never look at this state.
#pragma once

#include <ATen/ATen.h>

#include <mutex>
#include <optional>
#include <string>

#include "kernels/phase_timing.h"

namespace fused_rnn {
namespace binding {

#if defined(FRNN_PHASE_TIMING) && FRNN_PHASE_TIMING
constexpr bool kPhaseTimingCompiled = true;
#else
constexpr bool kPhaseTimingCompiled = false;
#endif

// One buffer per kernel kind (kPhaseKindForward, kPhaseKindBackward). Never
// destroyed: a CUDA tensor freed during interpreter shutdown, after the CUDA
// runtime, could crash the exit.
struct PhaseBuffers {
  std::mutex mutex;
  at::Tensor buf[2];
};

inline PhaseBuffers& phase_buffers() {
  static PhaseBuffers* state = new PhaseBuffers;
  return *state;
}

// "forward" -> kPhaseKindForward, "backward" -> kPhaseKindBackward.
inline int phase_kind(const std::string& which) {
  TORCH_CHECK(which == "forward" || which == "backward",
              "fused_rnn: phase buffer kind must be 'forward' or 'backward', got '", which, "'");
  return which == "forward" ? kPhaseKindForward : kPhaseKindBackward;
}

inline void set_phase_buffer(const std::string& which, const std::optional<at::Tensor>& buf) {
  const int kind = phase_kind(which);
  const bool set = buf.has_value() && buf->defined();
  if (set) {
    TORCH_CHECK(kPhaseTimingCompiled,
                "fused_rnn: set_phase_buffer needs an extension built with "
                "FUSED_RNN_PHASE_TIMING=1 (this build's kernels carry no per-phase timing)");
    TORCH_CHECK(buf->is_cuda(), "fused_rnn: the phase buffer must be a CUDA tensor, got one on ",
                buf->device());
    TORCH_CHECK(buf->scalar_type() == at::kLong && buf->dim() == 1 && buf->is_contiguous(),
                "fused_rnn: the phase buffer must be a contiguous 1-d int64 tensor, got ",
                buf->scalar_type(), " of shape ", buf->sizes());
  }
  PhaseBuffers& st = phase_buffers();
  std::lock_guard<std::mutex> lock(st.mutex);
  st.buf[kind] = set ? *buf : at::Tensor();
}

// int64 elements a buffer needs for every record of one launch.
inline int64_t phase_buffer_size(const std::string& which, int64_t num_layers,
                                 bool bidirectional, int64_t seq_len) {
  const int kind = phase_kind(which);
  TORCH_CHECK(num_layers >= 1 && seq_len >= 1,
              "fused_rnn: phase_buffer_size needs num_layers >= 1 and seq_len >= 1");
  return phase_buffer_elems(kind, static_cast<int>(num_layers), bidirectional ? 2 : 1, seq_len);
}

// For an op about to launch: points p.phase_buf / p.phase_cap at the buffer
// set for `kind`, if any (on input's device; another device is an error, not a
// silent skip). A build without the flag compiles this to nothing.
template <typename Params>
void attach_phase_buffer(Params& p, int kind, const at::Tensor& input, const char* op) {
  if constexpr (kPhaseTimingCompiled) {
    PhaseBuffers& st = phase_buffers();
    std::lock_guard<std::mutex> lock(st.mutex);
    const at::Tensor& b = st.buf[kind];
    if (!b.defined()) return;
    TORCH_CHECK(b.device() == input.device(), op, "the phase buffer (set_phase_buffer) is on ",
                b.device(), " but input is on ", input.device());
    p.phase_buf = b.data_ptr<int64_t>();
    p.phase_cap = b.numel();
  }
}

}  // namespace binding
}  // namespace fused_rnn
