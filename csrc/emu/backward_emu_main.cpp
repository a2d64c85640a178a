// Runs the backward kernel (csrc/kernels/backward_kernel.cuh, unmodified) on
// the CPU through the emulation in emu_cuda.h / include/, for one problem,
// with the real backward planner's configuration for a made-up device of
// `sms` SMs (H100 shared-memory limits). tests/test_compile_backward.py
// drives it; the weight / input GEMMs that follow the kernel in the binding
// are done by the test (the kernel's outputs are what this program returns).
//
//   backward_emu MODE L BIDIR I H B T DTYPE TF32 LENGTHS DROPOUT SMS IN OUT
//                [PHASE_CAP PHASE_OUT]
//
// MODE 0..3 (LSTM, GRU, RNN_TANH, RNN_RELU), DTYPE 0..2 (float32, float16,
// bfloat16). IN: raw little-endian tensors, concatenated: per (layer,
// direction) w_ih, w_hh; hx (LD,B,H); [cx (LD,B,H) for LSTM]; [lengths int64
// (B)]; [seed int64 when dropout is active]; reserve (LD,T,B,S); grad_output
// (T,B,D*H); grad_hy (LD,B,H); [grad_cy (LD,B,H) for LSTM].
// OUT: dg_ih (LD,T,B,GHp) with its padding columns; [dg_hh (LD,T,B,GHp) for
// GRU]; [xdrop (L-1,T,B,D*H) with dropout]; grad_hx (LD,B,H); [grad_cx].
// Outputs and workspace start as 0xFF bytes (NaN in every float dtype).
// PHASE_CAP PHASE_OUT: a per-phase timing buffer, as for forward_emu.
// FUSED_RNN_SYNC (grid | flags | auto) and FUSED_RNN_CLUSTER (auto | 1 | 2 |
// 4 | 8) in the environment are read as the extension reads them; the step
// counters start at 0, as the binding clears them. (The made-up device is an
// sm_90: clusters are planned, and emulated, where the plan allows them.)
// Exit code 3: the planner does not cover the problem (reason on stdout).
#include "kernels/backward_kernel.cuh"
#include "kernels/backward_plan.h"
#include "kernels/kernel_select.h"

#include <fstream>
#include <string>

#include "emu_launch.h"

using namespace fused_rnn;

// The cooperative launch (emu_launch.h), with per-warp barriers (__syncwarp)
// and exactly the shared memory the kernel may use.
cudaError_t cudaLaunchCooperativeKernel(const void* fn, dim3 grid, dim3 block, void** args,
                                        size_t smem_bytes, cudaStream_t) {
  return emu::cooperative_launch<BackwardParams>(fn, grid, block, args, smem_bytes,
                                                 emu::backward_launch_options());
}

// The same in thread-block clusters (the kernel's cudaLaunchKernelEx path).
cudaError_t emu::launch_cooperative_cluster(const void* fn, dim3 grid, dim3 block, void** args,
                                            size_t smem_bytes, cudaStream_t, int cluster) {
  return emu::cooperative_launch<BackwardParams>(fn, grid, block, args, smem_bytes,
                                                 emu::backward_launch_options(cluster));
}

int main(int argc, char** argv) {
  if (argc != 15 && argc != 17) {
    fprintf(stderr, "usage: %s MODE L BIDIR I H B T DTYPE TF32 LENGTHS DROPOUT SMS IN OUT "
            "[PHASE_CAP PHASE_OUT]\n", argv[0]);
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
  if (!parse_sync(getenv("FUSED_RNN_SYNC"), &p.sync)) {
    fprintf(stderr, "emu: bad FUSED_RNN_SYNC\n");
    return 2;
  }
  if (!parse_cluster(getenv("FUSED_RNN_CLUSTER"), &p.cluster)) {
    fprintf(stderr, "emu: bad FUSED_RNN_CLUSTER\n");
    return 2;
  }
  DeviceLimits dev = emu::h100_like(atoi(argv[12]));
  // FRNN_EMU_SMEM: shared memory per CTA (bytes) of the emulated device, so
  // that a small problem takes the plans of a big one (streamed weights)
  if (const char* v = getenv("FRNN_EMU_SMEM")) {
    dev.smem_optin_per_block = atoll(v);
    dev.smem_per_sm = dev.smem_optin_per_block + 1024;
  }
  const BackwardPlanResult plan = plan_backward(p, dev, &emu::occupancy, &dev);
  printf("%s\n", plan.reason.c_str());
  if (!plan.ok) return 3;

  const int64_t es = dtype_size(p.dtype), T = p.seq_len, B = p.batch, I = p.input_size,
                H = p.hidden_size, D = p.num_dirs(), LD = p.layer_dirs(), G = p.gates(),
                L = p.num_layers, S = p.reserve_width();
  emu::InputFile in(argv[13]);
  emu::Buffers buffers;
  auto take = [&](int64_t bytes) { return in.take(bytes); };
  auto own = [&](const void* src, int64_t bytes) { return buffers.own(src, bytes); };

  BackwardParams bp;
  const BackwardWorkspaceLayout wl = backward_workspace(p, plan.cfg);
  void* ws = own(nullptr, wl.total);
  if (wl.flags >= 0) memset(static_cast<unsigned char*>(ws) + wl.flags, 0, wl.flags_bytes);
  init_backward_params(bp, p, plan.cfg, ws);
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
  if (in.unread() != 0) {
    fprintf(stderr, "emu: %zu unread input bytes\n", in.unread());
    return 2;
  }
  bp.grad_hx = own(nullptr, h_bytes);
  if (p.mode == Mode::kLSTM) bp.grad_cx = own(nullptr, h_bytes);
  emu::PhaseBuffer phase;
  if (argc == 17) phase.attach(bp, atoll(argv[15]));

  const cudaError_t err =
      launch_instantiation<BackwardKernels>(bp, p.dtype, plan.cfg.use_tf32, nullptr);
  if (err != cudaSuccess) return 4;
  if (argc == 17) phase.write(argv[16]);

  const int64_t dg_bytes = LD * T * B * plan.cfg.gh_pad * es;
  std::ofstream out(argv[14], std::ios::binary);
  out.write(static_cast<const char*>(bp.dg_ih), dg_bytes);
  if (p.mode == Mode::kGRU) out.write(static_cast<const char*>(bp.dg_hh), dg_bytes);
  if (bp.xdrop) out.write(static_cast<const char*>(bp.xdrop), (L - 1) * y_bytes);
  out.write(static_cast<const char*>(bp.grad_hx), h_bytes);
  if (bp.grad_cx) out.write(static_cast<const char*>(bp.grad_cx), h_bytes);
  (void)G;
  return 0;
}
