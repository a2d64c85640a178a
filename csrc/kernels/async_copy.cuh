// cp.async.cg: 16 bytes global -> shared, through L2 only (the data was
// written by other CTAs in this launch; L1 is not coherent across SMs), for
// the forward's gather and the backward's streams. The emulation (csrc/emu)
// performs a thread's copies as late as the wait allows, so a missing wait
// reads stale data there too.
#pragma once

#include "common.h"

namespace fused_rnn {

#if defined(FRNN_EMULATION)
FRNN_DEVICE void cp_async16(void* dst, const void* src) { ::emu::cp_async16(dst, src); }
FRNN_DEVICE void cp_async_commit() { ::emu::cp_async_commit(); }
FRNN_DEVICE void cp_async_wait(int pending) { ::emu::cp_async_wait(pending); }
#else
FRNN_DEVICE void cp_async16(void* dst, const void* src) {
#if defined(__CUDA_ARCH__)
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(src) : "memory");
#endif
}
FRNN_DEVICE void cp_async_commit() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
// Returns when at most `pending` of this thread's most recent groups are in flight.
FRNN_DEVICE void cp_async_wait(int pending) {
#if defined(__CUDA_ARCH__)
  switch (pending) {
    case 0: asm volatile("cp.async.wait_group 0;\n" ::: "memory"); break;
    case 1: asm volatile("cp.async.wait_group 1;\n" ::: "memory"); break;
    case 2: asm volatile("cp.async.wait_group 2;\n" ::: "memory"); break;
    default: asm volatile("cp.async.wait_group 3;\n" ::: "memory"); break;
  }
#endif
}
#endif

}  // namespace fused_rnn
