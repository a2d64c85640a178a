// Runs the backward kernel (csrc/kernels/backward_kernel.cuh, unmodified) on
// the CPU through the emulation in emu_cuda.h / include/, for one problem,
// with the real backward planner's configuration for a made-up device of
// `sms` SMs (H100 shared-memory limits). tests/test_compile_backward.py
// drives it; the weight / input GEMMs that follow the kernel in the binding
// are done by the test (the kernel's outputs are what this program returns).
//
//   backward_emu MODE L BIDIR I H B T DTYPE TF32 LENGTHS DROPOUT SMS IN OUT
//
// MODE 0..3 (LSTM, GRU, RNN_TANH, RNN_RELU), DTYPE 0..2 (float32, float16,
// bfloat16). IN: raw little-endian tensors, concatenated: per (layer,
// direction) w_ih, w_hh; hx (LD,B,H); [cx (LD,B,H) for LSTM]; [lengths int64
// (B)]; [seed int64 when dropout is active]; reserve (LD,T,B,S); grad_output
// (T,B,D*H); grad_hy (LD,B,H); [grad_cy (LD,B,H) for LSTM].
// OUT: dg_ih (LD,T,B,GHp) with its padding columns; [dg_hh (LD,T,B,GHp) for
// GRU]; [xdrop (L-1,T,B,D*H) with dropout]; grad_hx (LD,B,H); [grad_cx].
// Outputs and workspace start as 0xFF bytes (NaN in every float dtype).
// Exit code 3: the planner does not cover the problem (reason on stdout).
#include "kernels/backward_kernel.cuh"
#include "kernels/backward_plan.h"

#include <fstream>
#include <iterator>
#include <string>
#include <vector>

using namespace fused_rnn;

namespace {

struct ThreadArg {
  void (*kernel)(BackwardParams);
  const BackwardParams* params;
  emu::Cta* cta;
  emu::Barrier* grid;
  dim3 block_idx, thread_idx, block_dim, grid_dim;
};

void* thread_main(void* raw) {
  auto* a = static_cast<ThreadArg*>(raw);
  threadIdx = a->thread_idx;
  blockIdx = a->block_idx;
  blockDim = a->block_dim;
  gridDim = a->grid_dim;
  emu::tl_cta = a->cta;
  emu::tl_grid = a->grid;
  a->kernel(*a->params);
  return nullptr;
}

int occupancy(const void* ctx, int64_t smem) {
  return estimate_occupancy(*static_cast<const DeviceLimits*>(ctx), smem);
}

std::vector<unsigned char> read_all(const char* path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<unsigned char>(std::istreambuf_iterator<char>(f), {});
}

template <typename T, bool TF32>
cudaError_t launch(const BackwardParams& p) {
  switch (cell_kind(static_cast<Mode>(p.mode))) {
    case CellKind::kLSTM: return bwd::launch_backward_kernel<T, CellKind::kLSTM, TF32>(p, nullptr);
    case CellKind::kGRU: return bwd::launch_backward_kernel<T, CellKind::kGRU, TF32>(p, nullptr);
    default: return bwd::launch_backward_kernel<T, CellKind::kRNN, TF32>(p, nullptr);
  }
}

}  // namespace

// The cooperative launch: every CTA's threads at once (all co-resident), with
// per-CTA and per-warp barriers.
cudaError_t cudaLaunchCooperativeKernel(const void* fn, dim3 grid, dim3 block, void** args,
                                        size_t smem_bytes, cudaStream_t) {
  const int threads = static_cast<int>(grid.x * block.x);
  const int warps = static_cast<int>((block.x + 31) / 32);
  emu::Barrier grid_bar(threads);
  std::vector<emu::Barrier*> bars;
  std::vector<std::vector<emu::Barrier*>> warp_bars(grid.x);
  std::vector<emu::Cta> ctas(grid.x);
  std::vector<void*> smem(grid.x);
  const size_t smem_alloc = (smem_bytes + 127) / 128 * 128;  // exactly what the kernel may use
  for (unsigned b = 0; b < grid.x; ++b) {
    bars.push_back(new emu::Barrier(static_cast<int>(block.x)));
    for (int w = 0; w < warps; ++w) warp_bars[b].push_back(new emu::Barrier(32));
    smem[b] = aligned_alloc(128, smem_alloc);
    memset(smem[b], 0xFF, smem_alloc);  // garbage, as on a GPU
    ctas[b] = emu::Cta{bars.back(), static_cast<unsigned char*>(smem[b]), warp_bars[b].data()};
  }
  auto kernel = reinterpret_cast<void (*)(BackwardParams)>(const_cast<void*>(fn));
  const auto* params = static_cast<const BackwardParams*>(args[0]);
  std::vector<ThreadArg> targs(threads);
  std::vector<pthread_t> tids(threads);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 8 << 20);
  for (int i = 0; i < threads; ++i) {
    const unsigned b = i / block.x;
    targs[i] = ThreadArg{kernel, params, &ctas[b], &grid_bar, dim3(b), dim3(i % block.x), block,
                         grid};
    if (pthread_create(&tids[i], &attr, thread_main, &targs[i]) != 0) {
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
  return cudaSuccess;
}

int main(int argc, char** argv) {
  if (argc != 15) {
    fprintf(stderr, "usage: %s MODE L BIDIR I H B T DTYPE TF32 LENGTHS DROPOUT SMS IN OUT\n",
            argv[0]);
    return 2;
  }
  ForwardProblem p;
  p.mode = static_cast<Mode>(atoi(argv[1]));
  p.num_layers = atoi(argv[2]);
  p.bidirectional = atoi(argv[3]) != 0;
  p.input_size = atoll(argv[4]);
  p.hidden_size = atoll(argv[5]);
  p.batch = atoll(argv[6]);
  p.seq_len = atoll(argv[7]);
  p.dtype = static_cast<DType>(atoi(argv[8]));
  p.allow_tf32 = atoi(argv[9]) != 0;
  p.has_lengths = atoi(argv[10]) != 0;
  p.dropout = atof(argv[11]);
  p.need_reserve = true;
  DeviceLimits dev;
  dev.sm_count = atoi(argv[12]);
  dev.smem_optin_per_block = 232448;
  dev.smem_per_sm = 233472;
  dev.cc_major = 9;
  dev.cc_minor = 0;
  const BackwardPlanResult plan = plan_backward(p, dev, &occupancy, &dev);
  printf("%s\n", plan.reason.c_str());
  if (!plan.ok) return 3;

  const int64_t es = dtype_size(p.dtype), T = p.seq_len, B = p.batch, I = p.input_size,
                H = p.hidden_size, D = p.num_dirs(), LD = p.layer_dirs(), G = p.gates(),
                L = p.num_layers, S = p.reserve_width();
  std::vector<unsigned char> in = read_all(argv[13]);
  size_t off = 0;
  auto take = [&](int64_t bytes) -> const void* {
    if (off + bytes > in.size()) {
      fprintf(stderr, "emu: input file too short\n");
      exit(2);
    }
    const void* ptr = in.data() + off;
    off += bytes;
    return ptr;
  };
  // every tensor in its own 256-byte aligned buffer, as the caching allocator gives
  std::vector<std::vector<unsigned char>*> keep;
  auto own = [&](const void* src, int64_t bytes) -> void* {
    auto* v = new std::vector<unsigned char>(bytes + 256);
    keep.push_back(v);
    void* aligned =
        reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(v->data()) + 255) & ~uintptr_t(255));
    if (src) memcpy(aligned, src, bytes);
    else memset(aligned, 0xFF, bytes);
    return aligned;
  };

  BackwardParams bp;
  const BackwardWorkspaceLayout wl = backward_workspace(p);
  init_backward_params(bp, p, plan.cfg, own(nullptr, wl.total));
  for (int64_t l = 0; l < L; ++l) {
    const int64_t in_l = l == 0 ? I : D * H;
    for (int64_t d = 0; d < D; ++d) {
      const int64_t ld = l * D + d;
      bp.w_ih[ld] = own(take(G * H * in_l * es), G * H * in_l * es);
      bp.w_hh[ld] = own(take(G * H * H * es), G * H * H * es);
    }
  }
  const int64_t h_bytes = LD * B * H * es;
  bp.hx = own(take(h_bytes), h_bytes);
  if (p.mode == Mode::kLSTM) bp.cx = own(take(h_bytes), h_bytes);
  if (p.has_lengths) bp.lengths = static_cast<const int64_t*>(own(take(B * 8), B * 8));
  if (bp.dropout_active) bp.seed = static_cast<const int64_t*>(own(take(8), 8));
  const int64_t r_bytes = LD * T * B * S * es;
  bp.reserve = own(take(r_bytes), r_bytes);
  const int64_t y_bytes = T * B * D * H * es;
  bp.grad_output = own(take(y_bytes), y_bytes);
  bp.grad_hy = own(take(h_bytes), h_bytes);
  if (p.mode == Mode::kLSTM) bp.grad_cy = own(take(h_bytes), h_bytes);
  if (off != in.size()) {
    fprintf(stderr, "emu: %zu unread input bytes\n", in.size() - off);
    return 2;
  }
  bp.grad_hx = own(nullptr, h_bytes);
  if (p.mode == Mode::kLSTM) bp.grad_cx = own(nullptr, h_bytes);

  cudaError_t err;
  switch (p.dtype) {
    case DType::kFloat16: err = launch<__half, false>(bp); break;
    case DType::kBFloat16: err = launch<__nv_bfloat16, false>(bp); break;
    default: err = plan.cfg.use_tf32 ? launch<float, true>(bp) : launch<float, false>(bp);
  }
  if (err != cudaSuccess) return 4;

  const int64_t dg_bytes = LD * T * B * plan.cfg.gh_pad * es;
  std::ofstream out(argv[14], std::ios::binary);
  out.write(static_cast<const char*>(bp.dg_ih), dg_bytes);
  if (p.mode == Mode::kGRU) out.write(static_cast<const char*>(bp.dg_hh), dg_bytes);
  if (bp.xdrop) out.write(static_cast<const char*>(bp.xdrop), (L - 1) * y_bytes);
  out.write(static_cast<const char*>(bp.grad_hx), h_bytes);
  if (bp.grad_cx) out.write(static_cast<const char*>(bp.grad_cx), h_bytes);
  for (auto* v : keep) delete v;
  (void)G;
  return 0;
}
