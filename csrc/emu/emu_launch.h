// What the two emulation drivers (forward_emu_main.cpp, backward_emu_main.cpp)
// share: the cooperative launch on host threads, the made-up device the
// planners see, and the input / buffer handling of their file protocol.
#pragma once

#include <fstream>
#include <iterator>
#include <vector>

#include "emu_cuda.h"
#include "kernels/forward_plan.h"

namespace emu {

template <typename Params>
struct ThreadArg {
  void (*kernel)(Params);
  const Params* params;
  Cta* cta;
  Barrier* grid;
  dim3 block_idx, thread_idx, block_dim, grid_dim;
};

template <typename Params>
void* thread_main(void* raw) {
  auto* a = static_cast<ThreadArg<Params>*>(raw);
  threadIdx = a->thread_idx;
  blockIdx = a->block_idx;
  blockDim = a->block_dim;
  gridDim = a->grid_dim;
  tl_cta = a->cta;
  tl_grid = a->grid;
  a->kernel(*a->params);
  return nullptr;
}

struct LaunchOptions {
  // bytes of shared memory allocated per CTA beyond smem_bytes rounded up to
  // 128 (0: exactly what the kernel may use, so ASan sees any overrun)
  size_t smem_slack = 0;
  // one barrier and one scratch per warp, for __syncwarp and the warp-collective
  // ldmatrix / mma.sync (without them these assert)
  bool warp_barriers = false;
  // CTAs per thread-block cluster (consecutive blockIdx.x; 1: no clusters)
  int cluster = 1;
};

// The options of each kernel's launch: warp barriers for the warp-collective
// operations (__syncwarp, ldmatrix, mma.sync) of both; the forward with 128
// bytes of shared-memory slack per CTA, the backward with exactly its shared
// memory (ASan sees any overrun) and its clusters.
inline LaunchOptions forward_launch_options(int cluster = 1) {
  LaunchOptions opt;
  opt.smem_slack = 128;
  opt.warp_barriers = true;
  opt.cluster = cluster;
  return opt;
}
inline LaunchOptions backward_launch_options(int cluster = 1) {
  LaunchOptions opt;
  opt.warp_barriers = true;
  opt.cluster = cluster;
  return opt;
}

// The cooperative launch: every CTA's threads at once (all co-resident), with
// per-CTA (and, if asked, per-warp) barriers and a grid barrier. Each driver's
// cudaLaunchCooperativeKernel calls it with its kernel's parameter type.
template <typename Params>
cudaError_t cooperative_launch(const void* fn, dim3 grid, dim3 block, void** args,
                               size_t smem_bytes, LaunchOptions opt) {
  const int threads = static_cast<int>(grid.x * block.x);
  const int warps = static_cast<int>((block.x + 31) / 32);
  Barrier grid_bar(threads);
  std::vector<Barrier*> bars;
  std::vector<std::vector<Barrier*>> warp_bars(grid.x);
  std::vector<std::vector<WarpScratch>> scratch(grid.x);
  std::vector<Cta> ctas(grid.x);
  std::vector<void*> smem(grid.x);
  const size_t smem_alloc = (smem_bytes + 127) / 128 * 128 + opt.smem_slack;
  assert(opt.cluster >= 1 && grid.x % opt.cluster == 0 && "emu: grid not a multiple of the cluster");
  const unsigned n_clusters = grid.x / opt.cluster;
  std::vector<Cluster> clusters(opt.cluster > 1 ? n_clusters : 0);
  std::vector<Barrier*> cluster_bars;
  std::vector<std::vector<unsigned char*>> cluster_smem(clusters.size());
  for (unsigned b = 0; b < grid.x; ++b) {
    bars.push_back(new Barrier(static_cast<int>(block.x)));
    if (opt.warp_barriers) {
      for (int w = 0; w < warps; ++w) warp_bars[b].push_back(new Barrier(32));
      scratch[b].resize(warps);
    }
    smem[b] = aligned_alloc(128, smem_alloc);
    memset(smem[b], 0xFF, smem_alloc);  // garbage, as on a GPU
    ctas[b] = Cta{bars.back(), static_cast<unsigned char*>(smem[b]),
                  opt.warp_barriers ? warp_bars[b].data() : nullptr,
                  opt.warp_barriers ? scratch[b].data() : nullptr, smem_bytes};
  }
  for (unsigned k = 0; k < clusters.size(); ++k) {
    cluster_bars.push_back(new Barrier(static_cast<int>(opt.cluster * block.x)));
    for (int r = 0; r < opt.cluster; ++r) {
      cluster_smem[k].push_back(static_cast<unsigned char*>(smem[k * opt.cluster + r]));
      ctas[k * opt.cluster + r].cluster = &clusters[k];
      ctas[k * opt.cluster + r].cluster_rank = r;
    }
    clusters[k] = Cluster{cluster_bars.back(), opt.cluster, cluster_smem[k].data()};
  }
  auto kernel = reinterpret_cast<void (*)(Params)>(const_cast<void*>(fn));
  const auto* params = static_cast<const Params*>(args[0]);
  std::vector<ThreadArg<Params>> targs(threads);
  std::vector<pthread_t> tids(threads);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  // virtual; sanitizers need room (TSan keeps per-thread state in TLS)
  pthread_attr_setstacksize(&attr, 8 << 20);
  for (int i = 0; i < threads; ++i) {
    const unsigned b = i / block.x;
    targs[i] = ThreadArg<Params>{kernel, params, &ctas[b], &grid_bar, dim3(b), dim3(i % block.x),
                                 block, grid};
    if (pthread_create(&tids[i], &attr, thread_main<Params>, &targs[i]) != 0) {
      fprintf(stderr, "emu: pthread_create failed at thread %d\n", i);
      abort();
    }
  }
  for (int i = 0; i < threads; ++i) pthread_join(tids[i], nullptr);
  pthread_attr_destroy(&attr);
  for (unsigned b = 0; b < grid.x; ++b) {
    delete bars[b];
    for (auto* w : warp_bars[b]) delete w;
    free(smem[b]);
  }
  for (auto* c : cluster_bars) delete c;
  return cudaSuccess;
}

// The device the planners see: `sms` SMs with an H100's shared-memory limits.
inline fused_rnn::DeviceLimits h100_like(int sms) {
  fused_rnn::DeviceLimits dev;
  dev.sm_count = sms;
  dev.smem_optin_per_block = 232448;
  dev.smem_per_sm = 233472;
  dev.cc_major = 9;
  dev.cc_minor = 0;
  return dev;
}

// Occupancy for the planners: estimate_occupancy on the DeviceLimits in ctx.
inline int occupancy(const void* ctx, int64_t smem) {
  return fused_rnn::estimate_occupancy(*static_cast<const fused_rnn::DeviceLimits*>(ctx), smem);
}

// The input file (raw tensors, concatenated), read front to back.
class InputFile {
 public:
  explicit InputFile(const char* path) {
    std::ifstream f(path, std::ios::binary);
    data_.assign(std::istreambuf_iterator<char>(f), {});
  }
  // The next `bytes` bytes; exits with code 2 if the file is too short.
  const void* take(int64_t bytes) {
    if (off_ + bytes > data_.size()) {
      fprintf(stderr, "emu: input file too short\n");
      exit(2);
    }
    const void* ptr = data_.data() + off_;
    off_ += bytes;
    return ptr;
  }
  size_t unread() const { return data_.size() - off_; }

 private:
  std::vector<unsigned char> data_;
  size_t off_ = 0;
};

// The optional per-phase timing buffer of a driver run (the trailing
// arguments PHASE_CAP PHASE_OUT; csrc/kernels/phase_timing.h): `cap` int64
// elements handed to the kernel plus kGuard more behind them that it must
// never write, all starting as kFill (a value no record holds), so that the
// test sees exactly which elements the kernel wrote. Written to PHASE_OUT
// whole (cap + kGuard elements) after the launch.
class PhaseBuffer {
 public:
  static constexpr int64_t kFill = 0x5A5A5A5A5A5A5A5ALL;
  static constexpr int64_t kGuard = 64;
  template <typename Params>
  void attach(Params& p, int64_t cap) {
    data_.assign(static_cast<size_t>(cap + kGuard), kFill);
    p.phase_buf = data_.data();
    p.phase_cap = cap;
  }
  void write(const char* path) const {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(data_.data()),
              static_cast<std::streamsize>(data_.size() * sizeof(int64_t)));
  }

 private:
  std::vector<int64_t> data_;
};

// Every tensor in its own 256-byte aligned buffer, as the caching allocator
// gives (so that vector loads see the alignment the GPU would): a copy of
// `src`, or 0xFF bytes (NaN in every float dtype, like the GPU tests' poison)
// for src == nullptr. Freed with the Buffers.
class Buffers {
 public:
  Buffers() = default;
  Buffers(const Buffers&) = delete;
  Buffers& operator=(const Buffers&) = delete;
  ~Buffers() {
    for (auto* v : keep_) delete v;
  }
  void* own(const void* src, int64_t bytes) {
    auto* v = new std::vector<unsigned char>(bytes + 256);
    keep_.push_back(v);
    void* aligned =
        reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(v->data()) + 255) & ~uintptr_t(255));
    if (src) memcpy(aligned, src, bytes);
    else memset(aligned, 0xFF, bytes);
    return aligned;
  }

 private:
  std::vector<std::vector<unsigned char>*> keep_;
};

}  // namespace emu
