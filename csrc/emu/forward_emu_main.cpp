// Runs the forward kernel (csrc/kernels/forward_kernel.cuh, unmodified) on the
// CPU through the emulation in emu_cuda.h / include/, for one problem, with
// the planner's real configuration for a made-up device of `sms` SMs (H100
// shared-memory limits). tests/test_compile_kernels.py drives it and compares
// the results with fused_rnn.reference.
//
//   forward_emu MODE L BIDIR BIAS I H B T DTYPE TF32 RESERVE LENGTHS DROPOUT SMS IN OUT
//               [PHASE_CAP PHASE_OUT]
//
// MODE 0..3 (LSTM, GRU, RNN_TANH, RNN_RELU), DTYPE 0..2 (float32, float16,
// bfloat16). IN: raw little-endian tensors, concatenated: x (T,B,I); per
// (layer, direction) w_ih, w_hh[, b_ih, b_hh]; hx (LD,B,H); [cx (LD,B,H) for
// LSTM]; [lengths int64 (B)]; [seed int64 when dropout is active]. OUT: y
// (T,B,D*H), hy (LD,B,H)[, cy][, reserve (LD,T,B,S)]. Outputs and workspace
// start as 0xFF bytes (NaN in every float dtype), like the GPU tests' poison.
// PHASE_CAP PHASE_OUT: hand the kernel a per-phase timing buffer of PHASE_CAP
// int64 elements (emu_launch.h's PhaseBuffer; recorded only by a build with
// -DFRNN_PHASE_TIMING=1) and write it to PHASE_OUT.
// FUSED_RNN_SYNC (grid | flags | lean | cluster | auto) in the environment picks
// the synchronisation policy, as in the extension (cluster: the planner's estimate
// of co-resident clusters, SMs / cluster size). Layer 0's input projection is
// computed here before the launch (fp32, as the binding's GEMM) wherever the
// planner moves it out of the kernel (16-bit dtypes), unless
// FRNN_EMU_NO_PROJECTION=1 (the in-kernel path of a torch without mm(...,
// out_dtype)).
// Exit code 3: the planner does not cover the problem (reason on stdout).
#include "kernels/forward_kernel.cuh"
#include "kernels/forward_plan.h"
#include "kernels/kernel_select.h"

#include <fstream>
#include <string>

#include "emu_launch.h"

using namespace fused_rnn;

// The cooperative launch (emu_launch.h), with 128 bytes of shared-memory slack
// per CTA, and warp barriers for the GEMM's warp-collective mma.sync / ldmatrix.
cudaError_t cudaLaunchCooperativeKernel(const void* fn, dim3 grid, dim3 block, void** args,
                                        size_t smem_bytes, cudaStream_t) {
  return emu::cooperative_launch<ForwardParams>(fn, grid, block, args, smem_bytes,
                                                emu::forward_launch_options());
}
// The same in thread-block clusters (the recurrence in a cluster, FUSED_RNN_SYNC=cluster).
cudaError_t emu::launch_cooperative_cluster(const void* fn, dim3 grid, dim3 block, void** args,
                                            size_t smem_bytes, cudaStream_t, int cluster) {
  return emu::cooperative_launch<ForwardParams>(fn, grid, block, args, smem_bytes,
                                                emu::forward_launch_options(cluster));
}

int main(int argc, char** argv) {
  if (argc != 17 && argc != 19) {
    fprintf(stderr, "usage: %s MODE L BIDIR BIAS I H B T DTYPE TF32 RESERVE LENGTHS DROPOUT SMS IN OUT "
            "[PHASE_CAP PHASE_OUT]\n", argv[0]);
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
  const char* no_proj = getenv("FRNN_EMU_NO_PROJECTION");
  p.can_project_input = !(no_proj && strcmp(no_proj, "1") == 0);
  if (!parse_sync(getenv("FUSED_RNN_SYNC"), &p.sync)) {
    fprintf(stderr, "emu: bad FUSED_RNN_SYNC\n");
    return 2;
  }
  const char* fast = getenv("FUSED_RNN_FAST_TANH");
  p.fast_tanh = fast && strcmp(fast, "1") == 0;
  const DeviceLimits dev = emu::h100_like(atoi(argv[14]));
  const PlanResult plan = plan_forward(p, dev, &emu::occupancy, &dev);
  printf("%s\n", plan.reason.c_str());
  if (!plan.ok) return 3;

  const int64_t es = dtype_size(p.dtype), T = p.seq_len, B = p.batch, I = p.input_size,
                H = p.hidden_size, D = p.num_dirs(), LD = p.layer_dirs(), G = p.gates();
  emu::InputFile in(argv[15]);
  emu::Buffers buffers;
  auto take = [&](int64_t bytes) { return in.take(bytes); };
  auto own = [&](const void* src, int64_t bytes) { return buffers.own(src, bytes); };

  ForwardParams fp;
  const WorkspaceLayout wl = forward_workspace(p, plan.cfg);
  void* const workspace = own(nullptr, wl.total);  // poisoned, like the caching allocator's
  // the step counters start at 0 (the binding clears them on the stream)
  if (wl.flags >= 0) memset(static_cast<unsigned char*>(workspace) + wl.flags, 0, wl.flags_bytes);
  init_forward_params(fp, p, plan.cfg, workspace);
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
  if (in.unread() != 0) {
    fprintf(stderr, "emu: %zu unread input bytes\n", in.unread());
    return 2;
  }
  if (plan.cfg.x_proj) {  // x_t W_ih0^T per direction, (T*B, G*H), fp32 (no bias)
    auto elem = [&](const void* base, int64_t i) -> double {
      switch (p.dtype) {
        case DType::kFloat16: return fwd::to_f(static_cast<const __half*>(base)[i]);
        case DType::kBFloat16: return fwd::to_f(static_cast<const __nv_bfloat16*>(base)[i]);
        default: return fwd::to_f(static_cast<const float*>(base)[i]);
      }
    };
    std::vector<float> proj(static_cast<size_t>(T * B * G * H));
    for (int64_t d = 0; d < D; ++d) {
      for (int64_t tb = 0; tb < T * B; ++tb)
        for (int64_t r = 0; r < G * H; ++r) {
          double acc = 0.0;
          for (int64_t i = 0; i < I; ++i) acc += elem(fp.x, tb * I + i) * elem(fp.w_ih[d], r * I + i);
          proj[tb * G * H + r] = static_cast<float>(acc);
        }
      fp.xproj[d] = static_cast<const float*>(own(proj.data(), proj.size() * 4));
    }
  }
  const int64_t y_bytes = T * B * D * H * es, h_bytes = LD * B * H * es,
                r_bytes = LD * T * B * p.reserve_width() * es;
  fp.y = own(nullptr, y_bytes);
  fp.hy = own(nullptr, h_bytes);
  if (p.mode == Mode::kLSTM) fp.cy = own(nullptr, h_bytes);
  if (p.need_reserve) fp.reserve = own(nullptr, r_bytes);
  emu::PhaseBuffer phase;
  if (argc == 19) phase.attach(fp, atoll(argv[17]));

  const cudaError_t err =
      launch_instantiation<ForwardKernels>(fp, p.dtype, plan.cfg.use_tf32, nullptr);
  if (err != cudaSuccess) return 4;
  if (argc == 19) phase.write(argv[18]);

  std::ofstream out(argv[16], std::ios::binary);
  out.write(static_cast<const char*>(fp.y), y_bytes);
  out.write(static_cast<const char*>(fp.hy), h_bytes);
  if (fp.cy) out.write(static_cast<const char*>(fp.cy), h_bytes);
  if (fp.reserve) out.write(static_cast<const char*>(fp.reserve), r_bytes);
  return 0;
}
