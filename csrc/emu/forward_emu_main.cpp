// Runs the forward kernel (csrc/kernels/forward_kernel.cuh, unmodified) on the
// CPU through the emulation in emu_cuda.h / include/, for one problem, with
// the planner's real configuration for a made-up device of `sms` SMs (H100
// shared-memory limits). tests/test_compile_kernels.py drives it and compares
// the results with fused_rnn.reference.
//
//   forward_emu MODE L BIDIR BIAS I H B T DTYPE TF32 RESERVE LENGTHS DROPOUT SMS IN OUT
//
// MODE 0..3 (LSTM, GRU, RNN_TANH, RNN_RELU), DTYPE 0..2 (float32, float16,
// bfloat16). IN: raw little-endian tensors, concatenated: x (T,B,I); per
// (layer, direction) w_ih, w_hh[, b_ih, b_hh]; hx (LD,B,H); [cx (LD,B,H) for
// LSTM]; [lengths int64 (B)]; [seed int64 when dropout is active]. OUT: y
// (T,B,D*H), hy (LD,B,H)[, cy][, reserve (LD,T,B,S)]. Outputs and workspace
// start as 0xFF bytes (NaN in every float dtype), like the GPU tests' poison.
// Exit code 3: the planner does not cover the problem (reason on stdout).
#include "kernels/forward_kernel.cuh"
#include "kernels/forward_plan.h"

#include <fstream>
#include <iterator>
#include <string>
#include <vector>

using namespace fused_rnn;

namespace {

struct ThreadArg {
  void (*kernel)(ForwardParams);
  const ForwardParams* params;
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
cudaError_t launch(const ForwardParams& p) {
  switch (cell_kind(static_cast<Mode>(p.mode))) {
    case CellKind::kLSTM: return fwd::launch_forward_kernel<T, CellKind::kLSTM, TF32>(p, nullptr);
    case CellKind::kGRU: return fwd::launch_forward_kernel<T, CellKind::kGRU, TF32>(p, nullptr);
    default: return fwd::launch_forward_kernel<T, CellKind::kRNN, TF32>(p, nullptr);
  }
}

}  // namespace

// The cooperative launch: every CTA's threads at once (all co-resident).
cudaError_t cudaLaunchCooperativeKernel(const void* fn, dim3 grid, dim3 block, void** args,
                                        size_t smem_bytes, cudaStream_t) {
  const int threads = static_cast<int>(grid.x * block.x);
  emu::Barrier grid_bar(threads);
  std::vector<emu::Barrier*> bars;
  std::vector<emu::Cta> ctas(grid.x);
  std::vector<void*> smem(grid.x);
  const size_t smem_alloc = (smem_bytes + 127) / 128 * 128 + 128;
  for (unsigned b = 0; b < grid.x; ++b) {
    bars.push_back(new emu::Barrier(static_cast<int>(block.x)));
    smem[b] = aligned_alloc(128, smem_alloc);
    memset(smem[b], 0xFF, smem_alloc);  // garbage, as on a GPU
    ctas[b] = emu::Cta{bars.back(), static_cast<unsigned char*>(smem[b])};
  }
  auto kernel = reinterpret_cast<void (*)(ForwardParams)>(const_cast<void*>(fn));
  const auto* params = static_cast<const ForwardParams*>(args[0]);
  std::vector<ThreadArg> targs(threads);
  std::vector<pthread_t> tids(threads);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 8 << 20);  // virtual; sanitizers need room (TSan keeps per-thread state in TLS)
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
    free(smem[b]);
  }
  return cudaSuccess;
}

int main(int argc, char** argv) {
  if (argc != 17) {
    fprintf(stderr, "usage: %s MODE L BIDIR BIAS I H B T DTYPE TF32 RESERVE LENGTHS DROPOUT SMS IN OUT\n",
            argv[0]);
    return 2;
  }
  ForwardProblem p;
  p.mode = static_cast<Mode>(atoi(argv[1]));
  p.num_layers = atoi(argv[2]);
  p.bidirectional = atoi(argv[3]) != 0;
  p.has_biases = atoi(argv[4]) != 0;
  p.input_size = atoll(argv[5]);
  p.hidden_size = atoll(argv[6]);
  p.batch = atoll(argv[7]);
  p.seq_len = atoll(argv[8]);
  p.dtype = static_cast<DType>(atoi(argv[9]));
  p.allow_tf32 = atoi(argv[10]) != 0;
  p.need_reserve = atoi(argv[11]) != 0;
  p.has_lengths = atoi(argv[12]) != 0;
  p.dropout = atof(argv[13]);
  DeviceLimits dev;
  dev.sm_count = atoi(argv[14]);
  dev.smem_optin_per_block = 232448;
  dev.smem_per_sm = 233472;
  dev.cc_major = 9;
  dev.cc_minor = 0;
  const PlanResult plan = plan_forward(p, dev, &occupancy, &dev);
  printf("%s\n", plan.reason.c_str());
  if (!plan.ok) return 3;

  const int64_t es = dtype_size(p.dtype), T = p.seq_len, B = p.batch, I = p.input_size,
                H = p.hidden_size, D = p.num_dirs(), LD = p.layer_dirs(), G = p.gates();
  std::vector<unsigned char> in = read_all(argv[15]);
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
  // (the vector's storage is 16-byte aligned; every tensor below is copied to
  // its own aligned buffer so vector loads see the alignment the GPU would)
  std::vector<std::vector<unsigned char>*> keep;
  auto own = [&](const void* src, int64_t bytes) -> void* {
    auto* v = new std::vector<unsigned char>(bytes + 256);
    keep.push_back(v);
    void* aligned = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(v->data()) + 255) & ~uintptr_t(255));
    if (src) memcpy(aligned, src, bytes);
    else memset(aligned, 0xFF, bytes);
    return aligned;
  };

  ForwardParams fp;
  const WorkspaceLayout wl = forward_workspace(p);
  init_forward_params(fp, p, plan.cfg, own(nullptr, wl.total));
  fp.x = own(take(T * B * I * es), T * B * I * es);
  for (int64_t l = 0; l < p.num_layers; ++l) {
    const int64_t in_l = l == 0 ? I : D * H;
    for (int64_t d = 0; d < D; ++d) {
      const int64_t ld = l * D + d;
      fp.w_ih[ld] = own(take(G * H * in_l * es), G * H * in_l * es);
      fp.w_hh[ld] = own(take(G * H * H * es), G * H * H * es);
      if (p.has_biases) {
        fp.b_ih[ld] = own(take(G * H * es), G * H * es);
        fp.b_hh[ld] = own(take(G * H * es), G * H * es);
      }
    }
  }
  fp.hx = own(take(LD * B * H * es), LD * B * H * es);
  if (p.mode == Mode::kLSTM) fp.cx = own(take(LD * B * H * es), LD * B * H * es);
  if (p.has_lengths) fp.lengths = static_cast<const int64_t*>(own(take(B * 8), B * 8));
  if (fp.dropout_active) fp.seed = static_cast<const int64_t*>(own(take(8), 8));
  if (off != in.size()) {
    fprintf(stderr, "emu: %zu unread input bytes\n", in.size() - off);
    return 2;
  }
  const int64_t y_bytes = T * B * D * H * es, h_bytes = LD * B * H * es,
                r_bytes = LD * T * B * p.reserve_width() * es;
  fp.y = own(nullptr, y_bytes);
  fp.hy = own(nullptr, h_bytes);
  if (p.mode == Mode::kLSTM) fp.cy = own(nullptr, h_bytes);
  if (p.need_reserve) fp.reserve = own(nullptr, r_bytes);

  cudaError_t err;
  switch (p.dtype) {
    case DType::kFloat16: err = launch<__half, false>(fp); break;
    case DType::kBFloat16: err = launch<__nv_bfloat16, false>(fp); break;
    default: err = plan.cfg.use_tf32 ? launch<float, true>(fp) : launch<float, false>(fp);
  }
  if (err != cudaSuccess) return 4;

  std::ofstream out(argv[16], std::ios::binary);
  out.write(static_cast<const char*>(fp.y), y_bytes);
  out.write(static_cast<const char*>(fp.hy), h_bytes);
  if (fp.cy) out.write(static_cast<const char*>(fp.cy), h_bytes);
  if (fp.reserve) out.write(static_cast<const char*>(fp.reserve), r_bytes);
  for (auto* v : keep) delete v;
  return 0;
}
