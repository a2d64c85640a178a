// Host emulation of the small part of CUDA that csrc/kernels/forward_kernel.cuh
// uses, so that the *same kernel source* runs on a CPU-only machine: every
// CUDA thread is a host thread, __syncthreads() a per-CTA barrier, grid.sync()
// a barrier over the whole grid, shared memory a per-CTA heap block, wmma
// fragments whole 16x16 tiles (each lane computes the full tile redundantly;
// lane 0 stores it; the backward's GEMMs), mma.sync and ldmatrix warp
// collectives with the PTX ISA's exact per-lane fragment layouts (emu_mma.h;
// the forward's GEMM). The checks a GPU would do silently are asserts here:
// wmma pointer alignment and leading dimensions, 16-byte vector alignment,
// barrier deadlocks (watchdog). Built with -fsanitize=address,undefined (or
// thread) by tests/test_compile_kernels.py.
//
// Only what the kernels need (forward_kernel.cuh, backward_kernel.cuh); not
// a general CUDA emulator. Speed is
// irrelevant (tiny problems). The emulator can not find bugs in the hardware
// semantics it models (e.g. the real wmma register layout; mma.sync's is
// modelled exactly) -- only in the kernel's own indexing, synchronisation and
// arithmetic.
#pragma once

#include <assert.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <type_traits>
#include <vector>

// Kernels select emulated versions of what has no portable CUDA C++ spelling
// (inline PTX: cp.async) with this macro.
#define FRNN_EMULATION 1

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __grid_constant__
#define __shared__
#define __align__(n) alignas(n)

// The kernel declares its dynamic shared memory through this hook.
#define FRNN_DECLARE_DYNAMIC_SMEM(name) unsigned char* const name = ::emu::cta_smem()

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3() = default;
  dim3(unsigned a, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};

struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(16) float4 { float x, y, z, w; };
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }

typedef int cudaError_t;
typedef struct CUstream_st* cudaStream_t;
constexpr cudaError_t cudaSuccess = 0;
constexpr cudaError_t cudaErrorInvalidValue = 1;

namespace emu {

// Seconds without progress after which a wait counts as a deadlock (the barriers
// below, mbarrier waits): 60, or FRNN_EMU_WATCHDOG_S (the tests of deliberately
// broken kernels that hang set a few seconds).
inline int watchdog_seconds() {
  static const int s = [] {
    const char* v = getenv("FRNN_EMU_WATCHDOG_S");
    const int n = v ? atoi(v) : 0;
    return n > 0 ? n : 60;
  }();
  return s;
}

// A reusable barrier with a watchdog: a kernel that deadlocks (a barrier not
// reached by every thread) aborts with a message instead of hanging CI.
class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait(const char* what) {
    std::unique_lock<std::mutex> lock(m_);
    const unsigned gen = gen_;
    if (++count_ == n_) {
      count_ = 0;
      ++gen_;
      cv_.notify_all();
      return;
    }
    if (!cv_.wait_for(lock, std::chrono::seconds(watchdog_seconds()), [&] { return gen_ != gen; })) {
      fprintf(stderr, "emu: deadlock at %s (%d of %d threads arrived)\n", what, count_, n_);
      abort();
    }
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  int n_;
  int count_ = 0;
  unsigned gen_ = 0;
};

struct WarpScratch;  // emu_mma.h: the lanes' operands of a warp-collective operation
struct Cluster;      // emu_cluster.h: a thread-block cluster

struct Cta {
  Barrier* bar;
  unsigned char* smem;
  Barrier** warps = nullptr;  // one barrier per warp (__syncwarp); set by drivers that need it
  WarpScratch* scratch = nullptr;  // one per warp, with the warp barriers (ldmatrix, mma.sync)
  size_t smem_bytes = 0;           // the CTA's dynamic shared memory (ldmatrix checks its range)
  Cluster* cluster = nullptr;      // its cluster (a launch with clusters only)
  int cluster_rank = 0;
};

inline thread_local Cta* tl_cta = nullptr;
inline thread_local Barrier* tl_grid = nullptr;
inline unsigned char* cta_smem() { return tl_cta->smem; }

}  // namespace emu

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

inline void __syncthreads() { emu::tl_cta->bar->wait("__syncthreads"); }
inline void __syncwarp(unsigned = 0xffffffffu) {
  assert(emu::tl_cta->warps && "emu: this driver has no warp barriers");
  emu::tl_cta->warps[threadIdx.x / 32]->wait("__syncwarp");
}

namespace emu {
// cp.async, modelled as late as the hardware may perform it: a thread's copies
// are queued per commit group and performed only when cp_async_wait(n) lets
// the group be complete (all but the newest n groups). A kernel that reads a
// stage before waiting for it reads stale data here as on a GPU; a kernel
// that rewrites a stage another lane still reads is a data race (TSan).
struct AsyncCopy {
  void* dst;
  const void* src;
};
inline thread_local std::vector<std::vector<AsyncCopy>> tl_groups;  // committed, oldest first
inline thread_local std::vector<AsyncCopy> tl_open;                 // not committed yet

inline void cp_async16(void* dst, const void* src) {
  assert(reinterpret_cast<uintptr_t>(dst) % 16 == 0 && "cp.async: dst must be 16-byte aligned");
  assert(reinterpret_cast<uintptr_t>(src) % 16 == 0 && "cp.async: src must be 16-byte aligned");
  tl_open.push_back(AsyncCopy{dst, src});
}
inline void cp_async_commit() {
  tl_groups.push_back(tl_open);
  tl_open.clear();
}
inline void cp_async_wait(int pending) {
  while (static_cast<int>(tl_groups.size()) > pending) {
    for (const AsyncCopy& c : tl_groups.front()) memcpy(c.dst, c.src, 16);
    tl_groups.erase(tl_groups.begin());
  }
}
}  // namespace emu

// Clocks (per-phase timing, csrc/kernels/phase_timing.h): the global timer is
// the host's steady clock in ns; clock64() counts 2 "cycles" per ns of it (a
// made-up 2 GHz SM clock, so that a host that confused cycles with ns would
// be off by 2x in the tests). Both are monotonic across threads, as the
// per-CTA uses need.
namespace emu {
inline int64_t globaltimer_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace emu
inline long long clock64() { return 2 * emu::globaltimer_ns(); }

template <typename T> inline T __ldcg(const T* p) {
  if (sizeof(T) >= 16) assert(reinterpret_cast<uintptr_t>(p) % 16 == 0);
  return *p;
}
template <typename T> inline T __ldg(const T* p) { return *p; }
template <typename T> inline void __stcg(T* p, T v) { *p = v; }

inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }

// CUDA's integer min(); by value (decltype of ?: on lvalues would be a reference).
template <typename A, typename B> inline std::common_type_t<A, B> min(A a, B b) {
  return a < b ? a : b;
}

// Warp-collective tensor-core operations (ldmatrix, mma.sync) with the real
// fragment layouts.
#include "emu_mma.h"
// Thread-block clusters: barrier, mapa, mbarriers, bulk copy multicast.
#include "emu_cluster.h"

namespace emu {
// A cooperative launch in clusters of `cluster` CTAs (cudaLaunchKernelEx with
// the cooperative and cluster-dimension attributes); defined by the driver
// whose kernel uses it (backward_emu_main.cpp).
cudaError_t launch_cooperative_cluster(const void* fn, dim3 grid, dim3 block, void** args,
                                       size_t smem_bytes, cudaStream_t stream, int cluster);
}  // namespace emu
