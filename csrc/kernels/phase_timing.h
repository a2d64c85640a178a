// Per-phase timing of the forward and backward kernels: where each wave
// step's time goes (benchmarks/floors.py --phases). A build option:
// compiled in only with -DFRNN_PHASE_TIMING=1 (fused_rnn/_build.py adds it
// when the environment has FUSED_RNN_PHASE_TIMING=1). Without the macro the
// recorder below is an empty struct whose calls compile to nothing, so a
// production kernel is instruction for instruction the uninstrumented one.
//
// Host side: ForwardParams / BackwardParams carry `phase_buf` (int64 device
// memory; null = off) and `phase_cap` (its length in int64 elements). The
// kernel never writes at or past phase_cap (a short buffer just loses the
// tail of the records). Nothing else reads or writes the buffer.
//
// Recorded CTAs: one per (layer, direction) ld -- unit slice 0 (and batch
// slice 0 in the backward) -- at most kMaxLayerDirs = 32. Record r = ld.
// Only thread 0 of a recorded CTA writes.
//
// Buffer layout (int64 elements; R = L*D records, S = wave steps of the launch:
// forward T+L-1 (unidirectional) or L*T (bidirectional), backward T+L or
// L*T+1; phase_buffer_elems() below):
//
//   [0, 8)                 run header, written by record 0:
//                          magic kPhaseMagic, kind (0 forward, 1 backward),
//                          R, S, T, L, D, record stride (8 + 4*S)
//   record r at 8 + r*(8 + 4*S):
//     [0, 8)               CTA header: blockIdx.x, ld,
//                          clock64 at kernel start, clock64 at kernel end,
//                          %globaltimer (ns) at kernel start, at kernel end,
//                          clock64 when the step loop starts (after loading
//                          the weights), S (written last: the record is complete)
//     [8 + 4*s, 8 + 4*s + 4) step s: cycles spent, summed over the step's
//                          batch tiles (forward) / passes (backward), in
//       slot 0  kPhaseGather    forward: the gather of X, state and flags, up to
//                               the __syncthreads after it. Backward: always -1
//                               (its epilogue inputs are loads issued just before
//                               the GEMM that land during it: no clean boundary,
//                               so they count in slot 1)
//       slot 1  kPhaseGemm      the GEMM up to the __syncthreads after it
//                               (backward: + the prefetch issue and the cp.async
//                               stream of the gate gradients)
//       slot 2  kPhaseEpilogue  the epilogue, up to a CTA barrier (recorded CTAs
//                               add one __syncthreads after the last tile, so that
//                               the phase ends when every thread is done)
//       slot 3  kPhaseBarrier   the step's synchronisation. grid policy: the
//                               grid.sync() at the end of the step (-1 for the
//                               last step, which has none). flags policy: the
//                               wait for the step counters before the step
//                               plus the publish after it, on every active
//                               step.
//     An inactive step (the wavefront's idle steps of a layer) has -1 in slots
//     0..2 and the time it spent in the barrier in slot 3 (grid policy), or -1
//     in all four slots (flags policy: the CTA does not take part in steps
//     where its layer is idle). Slot 1 >= 0 iff the CTA's layer was active.
//
// The host converts cycles to time per record with its own clocks:
// cycles per ns = (clock end - clock start) / (globaltimer end - start), so no
// nominal clock rate is assumed. (The globaltimer ticks in ns but may update
// only every ~1 us; over a whole launch that is noise.)
//
// No torch header, no CUDA header: the layout helpers compile with plain g++
// (the binding and the emulation use them).
#pragma once

#include <stdint.h>

#include "common.h"

namespace fused_rnn {

constexpr int64_t kPhaseMagic = 0x315348504E4E5246LL;  // the bytes "FRNNPHS1" (little-endian)
constexpr int kPhaseRunHeader = 8;   // int64 elements
constexpr int kPhaseCtaHeader = 8;
constexpr int kPhaseSlots = 4;       // per step
constexpr int kPhaseGather = 0, kPhaseGemm = 1, kPhaseEpilogue = 2, kPhaseBarrier = 3;
constexpr int kPhaseKindForward = 0, kPhaseKindBackward = 1;
constexpr int64_t kPhaseNone = -1;   // "did not happen" (inactive step, no barrier, no slot)
// int64 words of a recorder's state (the forward's live in its shared memory)
constexpr int kPhaseStateWords = 8;

// Wave steps of a launch (the kernels' n_steps).
FRNN_HD int64_t phase_wave_steps(int kind, int num_layers, int num_dirs, int64_t seq_len) {
  const int64_t L = num_layers;
  if (kind == kPhaseKindForward) return num_dirs == 2 ? L * seq_len : seq_len + L - 1;
  return num_dirs == 2 ? L * seq_len + 1 : seq_len + L;
}

FRNN_HD int64_t phase_record_stride(int64_t steps) { return kPhaseCtaHeader + kPhaseSlots * steps; }

// int64 elements a buffer needs to hold every record of a launch.
FRNN_HD int64_t phase_buffer_elems(int kind, int num_layers, int num_dirs, int64_t seq_len) {
  return kPhaseRunHeader + static_cast<int64_t>(num_layers) * num_dirs *
                               phase_record_stride(phase_wave_steps(kind, num_layers, num_dirs, seq_len));
}

// The recorder exists in device code (nvcc) and in the host emulation only;
// the binding, compiled by g++ with the same macro, uses the layout helpers.
#if defined(FRNN_PHASE_TIMING) && FRNN_PHASE_TIMING && (defined(__CUDACC__) || defined(FRNN_EMULATION))

// The SM's cycle counter and the global nanosecond timer. The emulation
// (csrc/emu/emu_cuda.h, FRNN_EMULATION) provides both from the host's
// steady clock.
FRNN_DEVICE int64_t phase_clock() { return static_cast<int64_t>(clock64()); }
FRNN_DEVICE int64_t phase_globaltimer() {
#if defined(FRNN_EMULATION)
  return ::emu::globaltimer_ns();
#elif defined(__CUDA_ARCH__)
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return static_cast<int64_t>(t);
#else
  return 0;
#endif
}

// Thread 0 of a recorded CTA keeps a running stamp and per-step sums and
// writes one step's slots after its barrier; every other thread holds an
// inactive recorder (on_ false). cta_on() is uniform over the CTA (for the
// extra __syncthreads of recorded CTAs).
//
// Where thread 0 keeps its state (kPhaseStateWords int64): SHARED = false, in
// registers; SHARED = true, in the first kPhaseStateWords int64 of the
// kernel's dynamic shared memory, which the kernel leaves to it -- for a
// kernel whose registers are spoken for (the forward holds its weights in
// 112-128 of them), so that the diagnostics build does not spill. Either way
// only thread 0 touches it.

// SHARED: the state is the first kPhaseStateWords int64 of the kernel's
// dynamic shared memory (a fixed address: no register holds it).
#if defined(FRNN_EMULATION)
FRNN_DEVICE int64_t* phase_shared_state() { return reinterpret_cast<int64_t*>(::emu::cta_smem()); }
#else
extern __shared__ __align__(128) int64_t frnn_phase_dynamic_smem[];
FRNN_DEVICE int64_t* phase_shared_state() { return frnn_phase_dynamic_smem; }
#endif

template <bool SHARED>
class PhaseRecorderT {
 public:
  // `record`: this CTA's record index, or -1 if it does not record.
  FRNN_DEVICE PhaseRecorderT(int64_t* buf, int64_t cap, int record, int kind, int num_layers,
                             int num_dirs, int64_t seq_len)
      : cta_on_(buf != nullptr && record >= 0), on_(cta_on_ && threadIdx.x == 0) {
    if (!on_) return;
    const int64_t steps = phase_wave_steps(kind, num_layers, num_dirs, seq_len);
    const int64_t base = kPhaseRunHeader + record * phase_record_stride(steps);
    const int64_t room = cap - base;  // may be <= 0: then nothing of this record is written
    w(kRoom) = room;
    set_rec(room > 0 ? buf + base : buf);  // (never a pointer past the buffer)
    w(kKind) = kind;
    w(kT) = w(kAcc0) = w(kAcc0 + 1) = w(kAcc0 + 2) = w(kWait) = 0;
    put(0, blockIdx.x);
    put(1, record);
    put(2, phase_clock());
    put(4, phase_globaltimer());
    if (record == 0) {
      const int64_t head[kPhaseRunHeader] = {kPhaseMagic, kind, static_cast<int64_t>(num_layers) * num_dirs,
                                             steps, seq_len, num_layers, num_dirs,
                                             phase_record_stride(steps)};
      for (int i = 0; i < kPhaseRunHeader; ++i)
        if (i < cap) buf[i] = head[i];
    }
  }
  FRNN_DEVICE bool cta_on() const { return cta_on_; }
  // The step loop begins (the weights are loaded).
  FRNN_DEVICE void loop_start() {
    if (!on_) return;
    w(kT) = phase_clock();
    put(6, w(kT));
  }
  // The phase `slot` ends now (the time since the last mark is added to it).
  FRNN_DEVICE void mark(int slot) {
    if (!on_) return;
    const int64_t now = phase_clock();
    w(slot == kPhaseBarrier ? kWait : kAcc0 + slot) += now - w(kT);
    w(kT) = now;
  }
  // Step `s` ends now, right after its synchronisation (`barrier`: the time
  // since the last mark, plus any earlier mark(kPhaseBarrier) of the step)
  // or without one.
  FRNN_DEVICE void step_end(int64_t s, bool active, bool barrier) {
    if (!on_) return;
    const int64_t now = phase_clock();
    const int64_t at = kPhaseCtaHeader + kPhaseSlots * s;  // step s's first slot in the record
    const bool fwd = w(kKind) == kPhaseKindForward;
    put(at, active && fwd ? w(kAcc0) : kPhaseNone);
    put(at + 1, active ? w(kAcc0 + 1) : kPhaseNone);
    put(at + 2, active ? w(kAcc0 + 2) : kPhaseNone);
    put(at + 3, barrier ? now - w(kT) + w(kWait) : kPhaseNone);
    w(kAcc0) = w(kAcc0 + 1) = w(kAcc0 + 2) = w(kWait) = 0;
    w(kT) = now;
  }
  // Step `s` is one this CTA takes no part in (flags policy: its layer idles).
  FRNN_DEVICE void idle_step(int64_t s) {
    if (!on_) return;
    const int64_t at = kPhaseCtaHeader + kPhaseSlots * s;
    for (int i = 0; i < kPhaseSlots; ++i) put(at + i, kPhaseNone);
  }
  // The kernel ends: the end stamps, then the step count (the record is complete).
  FRNN_DEVICE void finish(int64_t steps) {
    if (!on_) return;
    put(3, phase_clock());
    put(5, phase_globaltimer());
    put(7, steps);
  }

 private:
  // the state words: the record's room and address, the kernel kind, the
  // running stamp, the three compute phases' sums, the barrier phase's sum
  static constexpr int kRoom = 0, kRec = 1, kKind = 2, kT = 3, kAcc0 = 4, kWait = 7;
  FRNN_DEVICE int64_t& w(int i) { return SHARED ? phase_shared_state()[i] : regs_[i]; }
  FRNN_DEVICE void set_rec(int64_t* p) { w(kRec) = reinterpret_cast<intptr_t>(p); }
  // Element i of this CTA's record, if the buffer holds it.
  FRNN_DEVICE void put(int64_t i, int64_t v) {
    if (i < w(kRoom)) reinterpret_cast<int64_t*>(static_cast<intptr_t>(w(kRec)))[i] = v;
  }
  bool cta_on_, on_;
  int64_t regs_[SHARED ? 1 : kPhaseStateWords] = {};
};

#elif defined(__CUDACC__) || defined(FRNN_EMULATION)  // no FRNN_PHASE_TIMING: calls compile to nothing

template <bool SHARED>
class PhaseRecorderT {
 public:
  FRNN_DEVICE PhaseRecorderT(int64_t*, int64_t, int, int, int, int, int64_t) {}
  FRNN_DEVICE constexpr bool cta_on() const { return false; }
  FRNN_DEVICE void loop_start() {}
  FRNN_DEVICE void mark(int) {}
  FRNN_DEVICE void step_end(int64_t, bool, bool) {}
  FRNN_DEVICE void idle_step(int64_t) {}
  FRNN_DEVICE void finish(int64_t) {}
};

#endif

#if defined(__CUDACC__) || defined(FRNN_EMULATION)
// Registers for the state (the backward); the forward uses PhaseRecorderT<true>.
using PhaseRecorder = PhaseRecorderT<false>;
#endif

}  // namespace fused_rnn
