// Point-to-point synchronisation between the CTAs of one persistent launch
// (SyncPolicy::kFlags, common.h): step counters with release / acquire.
//
// Every CTA owns one int32 counter in global memory (the workspace's `flags`
// region, zeroed before the launch): the number of steps it has completed.
//
//   producer   all threads write the step's data; __syncthreads();
//              thread 0: flag_publish(&flags[cta], k + 1)   (st.release.gpu)
//   consumer   threads spin, one counter each, with ld.acquire.gpu until
//              every counter it depends on has reached its target;
//              __syncthreads(); then everyone reads the data (through L2:
//              ld.global.cg, since L1 is not coherent across SMs)
//
// Why this is enough (PTX memory model): the producer's writes are ordered
// before thread 0's release by the CTA barrier; the release is observed by
// the consumer thread's acquire; the consumer's barrier orders that before
// every consumer thread's read. This is the pattern of cooperative groups'
// own grid barrier (bar.sync, then one thread's fenced atomic), minus the
// all-to-all: a CTA waits only for the CTAs it reads from, and for the CTAs
// that read what it is about to overwrite.
//
// Counters are contiguous per (layer, direction), so a warp polling 32
// counters issues one coalesced 128-byte acquire load.
//
// The host emulation (csrc/emu, FRNN_EMULATION) runs the same code with GCC
// __atomic builtins of the same orders, which ThreadSanitizer understands: a
// wait that is too weak or a missing wait is reported as a data race on the
// data it should have ordered. FRNN_EMU_BREAK (emulation builds only; common.h)
// selects a deliberately broken variant that the tests must see fail:
//   1  the consumer's poll is a relaxed load instead of an acquire
//   2  a producer does not wait for its consumers before overwriting a ring slot
//   3  the ring is used one slot deeper than it is (off-by-one in the wait)
#pragma once

#include "common.h"

#if defined(FRNN_EMULATION)
#include <sched.h>
#endif

namespace fused_rnn {

// Makes `value` visible to acquirers of `flag`, after every write this thread
// performed (and, through a preceding __syncthreads(), every write of its CTA).
FRNN_DEVICE void flag_publish(int* flag, int value) {
#if defined(FRNN_EMULATION)
  __atomic_store_n(flag, value, __ATOMIC_RELEASE);
#elif defined(__CUDA_ARCH__)
  asm volatile("st.release.gpu.global.b32 [%0], %1;" ::"l"(flag), "r"(value) : "memory");
#endif
}

// The counter's current value. Acquire (RELAXED false, the kFlags protocol's poll):
// later reads of this thread see at least what the publisher wrote before publishing
// it. RELAXED (the lean protocol's poll, below): no ordering; the wait's fence orders.
template <bool RELAXED>
FRNN_DEVICE int counter_load(const int* flag) {
#if defined(FRNN_EMULATION)
  return __atomic_load_n(flag, RELAXED || FRNN_EMU_BREAK == 1 ? __ATOMIC_RELAXED : __ATOMIC_ACQUIRE);
#elif defined(__CUDA_ARCH__)
  int v;
  if constexpr (RELAXED)
    asm volatile("ld.relaxed.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(flag) : "memory");
  else
    asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(flag) : "memory");
  return v;
#else
  return *flag;
#endif
}

// Spins until *flag >= target, each poll counter_load<RELAXED>: an acquire load or a
// relaxed one. A counter that stops moving (a scheduling bug)
// must not hang the machine: on a GPU the kernel traps after ~2^26 polls
// (tens of seconds: an error the launch reports) *without progress* -- the
// count restarts whenever the counter advances, since a legitimate wait can
// last a whole layer (bidirectional: the layer below's T steps); in the
// emulation it aborts with a message after 60 s without progress.
template <bool RELAXED>
FRNN_DEVICE void spin_until_geq(const int* flag, int target) {
  auto read = [](const int* f) { return counter_load<RELAXED>(f); };
  int seen = read(flag);
#if defined(FRNN_EMULATION)
  int64_t since = ::emu::globaltimer_ns();
  while (seen < target) {
    sched_yield();
    const int now = read(flag);
    if (now != seen) {
      seen = now;
      since = ::emu::globaltimer_ns();
    } else if (::emu::globaltimer_ns() - since > 60000000000LL) {
      fprintf(stderr, "emu: deadlock waiting for a %s (%d < %d)\n",
              RELAXED ? "lean counter" : "step counter", seen, target);
      abort();
    }
  }
#else
  uint32_t polls = 0;
  while (seen < target) {
    const int now = read(flag);
    if (now != seen) {
      seen = now;
      polls = 0;
    } else if (++polls == (1u << 26)) {
      __trap();
    }
  }
#endif
}

FRNN_DEVICE void flag_wait_geq(const int* flag, int target) { spin_until_geq<false>(flag, target); }

// A contiguous range of counters that must all reach `target`.
struct FlagRange {
  int first = 0;
  int count = 0;  // 0: nothing to wait for
  int target = 0;
};

// The whole CTA waits until every counter of the three ranges has reached its
// range's target: thread i polls counter i (threads loop when there are more
// counters than threads), then a CTA barrier. Must be called by every thread.
FRNN_DEVICE void wait_for_ranges(const int* flags, FlagRange a, FlagRange b, FlagRange c,
                                 int threads) {
  const int n = a.count + b.count + c.count;
  for (int i = threadIdx.x; i < n; i += threads) {
    if (i < a.count) {
      flag_wait_geq(flags + a.first + i, a.target);
    } else if (i < a.count + b.count) {
      flag_wait_geq(flags + b.first + (i - a.count), b.target);
    } else {
      flag_wait_geq(flags + c.first + (i - a.count - b.count), c.target);
    }
  }
  __syncthreads();
}

// ---------------------------------------------------------------- the lean protocol
//
// (ForwardConfig::lean_sync, FUSED_RNN_SYNC=lean; opt-in until a GPU run verifies it.)
// One counter per (layer, direction), alone on its 128-byte line (kLeanCounterStride):
// the steps completed by all C CTAs of that layer-direction together.
//
//   producer   all threads write the step's data; __syncthreads();
//              thread 0: lean_publish(&counter, 1)    (red.release.gpu.add)
//   consumer   one thread per counter waited on (at most 3: its own layer, the layer
//              below (or both directions of it), the layer above) polls it with
//              relaxed loads -- no acquire, no L1 invalidate per poll -- until it
//              reaches C x the step it needs, then one fence.acq_rel.gpu;
//              __syncthreads(); then everyone reads the data (through L2)
//
// Why a sum is enough: a CTA starts step k + 1 only when all C CTAs of its layer have
// done k steps, so the C per-CTA counts of one layer-direction are always within one of
// each other; C x k is reached only when each of them has reached k.
// Why the order holds (PTX memory model): each red.release is a release pattern ordered
// after its CTA's writes (the CTA barrier, cumulativity); the relaxed load that
// observes the counter, then fence.acq_rel, is an acquire pattern; the adds of one
// counter form a chain of atomic read-modify-writes that the load observes as a whole.
// The emulation models the fence as an acquire re-load of the counter after the
// relaxed spin (the same happens-before for ThreadSanitizer, which does not follow
// stand-alone fences); FRNN_EMU_BREAK=1 leaves it out.

FRNN_DEVICE void lean_publish(int* counter, int n) {
#if defined(FRNN_EMULATION)
  __atomic_fetch_add(counter, n, __ATOMIC_RELEASE);
#elif defined(__CUDA_ARCH__)
  asm volatile("red.release.gpu.global.add.s32 [%0], %1;" ::"l"(counter), "r"(n) : "memory");
#endif
}

// Spins (relaxed polls) until *counter >= target, then the acquire fence. Traps /
// aborts after a long time without progress, as flag_wait_geq.
FRNN_DEVICE void lean_wait_geq(const int* counter, int target) {
  spin_until_geq<true>(counter, target);
#if defined(FRNN_EMULATION)
#if FRNN_EMU_BREAK != 1
  (void)__atomic_load_n(counter, __ATOMIC_ACQUIRE);  // the fence (see above)
#endif
#elif defined(__CUDA_ARCH__)
  asm volatile("fence.acq_rel.gpu;" ::: "memory");
#endif
}

// Up to 3 counters the CTA waits for (index in units of `stride` words, target; a
// target <= 0 waits for nothing): thread i waits for counter i, then a CTA barrier.
// Named slots, not an array: it stays in registers. Every thread calls it.
struct LeanWait {
  int idx0 = 0, tgt0 = 0, idx1 = 0, tgt1 = 0, idx2 = 0, tgt2 = 0;
};

FRNN_DEVICE void lean_wait(const int* counters, const LeanWait& w, int stride) {
  const int i = threadIdx.x;
  const int idx = i == 0 ? w.idx0 : i == 1 ? w.idx1 : w.idx2;
  const int tgt = i == 0 ? w.tgt0 : i == 1 ? w.tgt1 : i == 2 ? w.tgt2 : 0;
  if (tgt > 0) lean_wait_geq(counters + idx * stride, tgt);
  __syncthreads();
}

}  // namespace fused_rnn
