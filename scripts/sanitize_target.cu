// The compute-sanitizer target without torch: one LSTM forward (with its
// reserve) and one backward through the fused kernels, planned by the
// extension's own planners, on synthetic inputs -- no torch, no cuBLAS, no
// other kernel. Whatever racecheck reports over it belongs to these two
// kernels (scripts/gpu_check.sh, sanitizer stage).
//
//   scripts/sanitize_build.py builds it: one program per dtype, chosen at
//   compile time (-DSAN_DTYPE=SAN_BF16 | SAN_F16 | SAN_TF32 | SAN_FP32), and
//   the bisection variants of the backward kernel (-DFRNN_BISECT=N,
//   csrc/kernels/common.h), with nvcc for the GPU or with g++ through the host
//   emulation (csrc/emu), where tests/test_sanitize_target.py runs it.
//
//   sanitize_target [--layers L] [--input I] [--hidden H] [--batch B] [--seq T]
//                   [--dropout P] [--no-lengths] [--sms N] [--out FILE]
//
// Defaults: scripts/gpu_sanitize.py's problem (LSTM L=2 I=10 H=24 B=3 T=3,
// lengths, dropout 0.25). FUSED_RNN_SYNC and FUSED_RNN_CLUSTER are read as the
// extension reads them. --sms: the emulation's made-up device (an H100's
// shared memory with N SMs; default 132); a GPU plans for itself.
// --out FILE: every input and output as named records (name[32], dtype int32
// (0 fp32, 1 fp16, 2 bf16, 3 int64), ndim int32, dims int64[4], raw bytes),
// for bit-for-bit comparisons between builds.
//
// Everything the kernels write starts as 0xFF bytes (NaN in every float
// type): outputs and workspace, as the GPU tests poison them (the step
// counters are zeroed, as the binding zeroes them). Layer 0's input
// projection, which the binding computes with cuBLAS for 16-bit types, is
// computed on the host here (fp32, as the binding's GEMM returns it).
//
// Exit status: 0 both kernels planned, ran, and every output is finite; 1 a
// CUDA error or a non-finite output (named); 2 bad usage; 3 a planner refused
// the problem (its reason printed): a run that checked nothing never passes.
#include "kernels/backward_kernel.cuh"
#include "kernels/backward_plan.h"
#include "kernels/forward_kernel.cuh"
#include "kernels/forward_plan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#if defined(FRNN_EMULATION)
#include "emu/emu_launch.h"
#else
#include "kernels/dispatch_common.h"  // max_active_clusters, set_kernel_smem_attributes
#endif

#define SAN_FP32 0
#define SAN_F16 1
#define SAN_BF16 2
#define SAN_TF32 3
#ifndef SAN_DTYPE
#error "SAN_DTYPE: SAN_BF16, SAN_F16, SAN_TF32 or SAN_FP32 (scripts/sanitize_build.py)"
#endif

using namespace fused_rnn;

#if SAN_DTYPE == SAN_BF16
using Elem = __nv_bfloat16;
constexpr bool kTf32 = false;
constexpr DType kDType = DType::kBFloat16;
constexpr const char* kDtypeName = "bf16";
#elif SAN_DTYPE == SAN_F16
using Elem = __half;
constexpr bool kTf32 = false;
constexpr DType kDType = DType::kFloat16;
constexpr const char* kDtypeName = "fp16";
#elif SAN_DTYPE == SAN_TF32
using Elem = float;
constexpr bool kTf32 = true;
constexpr DType kDType = DType::kFloat32;
constexpr const char* kDtypeName = "tf32";
#else
using Elem = float;
constexpr bool kTf32 = false;
constexpr DType kDType = DType::kFloat32;
constexpr const char* kDtypeName = "fp32";
#endif
constexpr CellKind kCell = CellKind::kLSTM;

// The instantiations this program launches (the extension's are in
// csrc/kernels/{forward,backward}_<dtype>.cu).
FRNN_INSTANTIATE_FORWARD(Elem, fused_rnn::CellKind::kLSTM, kTf32)
FRNN_INSTANTIATE_BACKWARD(Elem, fused_rnn::CellKind::kLSTM, kTf32)

namespace {

[[noreturn]] void fail(const std::string& what) {
  printf("sanitize_target: %s\n", what.c_str());
  fflush(stdout);
  exit(1);
}

// ---------------------------------------------------------------- the device

#if defined(FRNN_EMULATION)

// Which kernel the next cooperative launch runs (the emulation's launch needs
// its parameter type): set by the caller right before launching.
enum class Launching { kForward, kBackward };
Launching g_launching = Launching::kForward;

// Device memory: host memory; copies: memcpy.
void* dev_alloc(int64_t bytes) {
  void* p = aligned_alloc(256, static_cast<size_t>((bytes + 255) / 256 * 256));
  if (!p) fail("out of memory");
  return p;
}
void dev_free(void* p) { free(p); }
void dev_fill(void* p, int v, int64_t bytes) { memset(p, v, static_cast<size_t>(bytes)); }
void to_dev(void* d, const void* h, int64_t bytes) { memcpy(d, h, static_cast<size_t>(bytes)); }
void to_host(void* h, const void* d, int64_t bytes) { memcpy(h, d, static_cast<size_t>(bytes)); }
void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail(std::string(what) + ": error " + std::to_string(e));
}
void dev_sync(const char*) {}

int emu_occupancy(const void* ctx, int64_t smem) { return emu::occupancy(ctx, smem); }

#else

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail(std::string(what) + ": " + cudaGetErrorString(e));
}
void* dev_alloc(int64_t bytes) {
  void* p = nullptr;
  check(cudaMalloc(&p, static_cast<size_t>(bytes > 0 ? bytes : 1)), "cudaMalloc");
  return p;
}
void dev_free(void* p) { cudaFree(p); }
void dev_fill(void* p, int v, int64_t bytes) {
  check(cudaMemset(p, v, static_cast<size_t>(bytes)), "cudaMemset");
}
void to_dev(void* d, const void* h, int64_t bytes) {
  check(cudaMemcpy(d, h, static_cast<size_t>(bytes), cudaMemcpyHostToDevice), "cudaMemcpy");
}
void to_host(void* h, const void* d, int64_t bytes) {
  check(cudaMemcpy(h, d, static_cast<size_t>(bytes), cudaMemcpyDeviceToHost), "cudaMemcpy");
}
void dev_sync(const char* what) {
  check(cudaGetLastError(), what);
  check(cudaDeviceSynchronize(), what);
}

// The planners' occupancy callback on the real device: kernel `fn` with the
// device's whole opt-in shared memory (as dispatch_common.h sets it).
struct Occ {
  const void* fn;
  int threads;
};
int gpu_occupancy(const void* ctx, int64_t smem) {
  const Occ* q = static_cast<const Occ*>(ctx);
  int blocks = 0;
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, q->fn, q->threads,
                                                      static_cast<size_t>(smem)),
        "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  return blocks;
}
int gpu_cluster_occupancy(const void* ctx, int64_t smem, int grid, int cluster) {
  const Occ* q = static_cast<const Occ*>(ctx);
  return max_active_clusters(q->fn, q->threads, smem, grid, cluster);
}

#endif

// Owns every device buffer; each starts as 0xFF bytes.
class DeviceBuffers {
 public:
  ~DeviceBuffers() {
    for (void* p : keep_) dev_free(p);
  }
  void* poisoned(int64_t bytes) {
    void* p = dev_alloc(bytes);
    dev_fill(p, 0xFF, bytes);
    keep_.push_back(p);
    return p;
  }
  void* copy_of(const void* host, int64_t bytes) {
    void* p = poisoned(bytes);
    to_dev(p, host, bytes);
    return p;
  }

 private:
  std::vector<void*> keep_;
};

// ---------------------------------------------------------------- host tensors

// A named host tensor: raw bytes, element kind (as in --out), shape.
struct Tensor {
  std::string name;
  int kind = 0;  // 0 fp32, 1 fp16, 2 bf16, 3 int64
  std::vector<int64_t> shape;
  std::vector<unsigned char> bytes;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
  }
  int64_t nbytes() const { return static_cast<int64_t>(bytes.size()); }
  const Elem* elems() const { return reinterpret_cast<const Elem*>(bytes.data()); }
};

constexpr int kElemKind = SAN_DTYPE == SAN_TF32 ? 0 : SAN_DTYPE;

// Element <-> float on the host (the kernels' to_f / from_f are device code).
template <typename E> float host_f(E v) {
  if constexpr (std::is_same<E, __half>::value) return __half2float(v);
  else if constexpr (std::is_same<E, __nv_bfloat16>::value) return __bfloat162float(v);
  else return v;
}
template <typename E> E host_elem(float v) {
  if constexpr (std::is_same<E, __half>::value) return __float2half_rn(v);
  else if constexpr (std::is_same<E, __nv_bfloat16>::value) return __float2bfloat16_rn(v);
  else return v;
}

Tensor make(const std::string& name, std::vector<int64_t> shape, int kind = kElemKind) {
  Tensor t;
  t.name = name;
  t.kind = kind;
  t.shape = std::move(shape);
  t.bytes.assign(static_cast<size_t>(t.numel() * (kind == 3 ? 8 : kind == 0 ? 4 : 2)), 0);
  return t;
}

// Uniform in [-scale, scale), from a fixed xorshift stream: the same inputs in
// every build and on every machine.
class Random {
 public:
  float next(float scale) {
    s_ ^= s_ << 13;
    s_ ^= s_ >> 7;
    s_ ^= s_ << 17;
    return scale * (static_cast<float>(s_ >> 40) / static_cast<float>(1 << 24) * 2.0f - 1.0f);
  }

 private:
  uint64_t s_ = 0x9E3779B97F4A7C15ull;
};

Tensor random_tensor(Random& rng, const std::string& name, std::vector<int64_t> shape,
                     float scale) {
  Tensor t = make(name, std::move(shape));
  Elem* e = reinterpret_cast<Elem*>(t.bytes.data());
  for (int64_t i = 0; i < t.numel(); ++i) e[i] = host_elem<Elem>(rng.next(scale));
  return t;
}

// The tensor `name` copied back from device memory at `dev`.
Tensor download(const std::string& name, std::vector<int64_t> shape, const void* dev) {
  Tensor t = make(name, std::move(shape));
  to_host(t.bytes.data(), dev, t.nbytes());
  return t;
}

// The first non-finite element of an output, or -1.
int64_t first_non_finite(const Tensor& t) {
  for (int64_t i = 0; i < t.numel(); ++i)
    if (!std::isfinite(host_f(t.elems()[i]))) return i;
  return -1;
}

void write_records(const char* path, const std::vector<const Tensor*>& all) {
  FILE* f = fopen(path, "wb");
  if (!f) fail(std::string("can not write ") + path);
  for (const Tensor* t : all) {
    char name[32] = {};
    snprintf(name, sizeof(name), "%s", t->name.c_str());
    const int32_t head[2] = {t->kind, static_cast<int32_t>(t->shape.size())};
    int64_t dims[4] = {1, 1, 1, 1};
    for (size_t i = 0; i < t->shape.size() && i < 4; ++i) dims[i] = t->shape[i];
    fwrite(name, 1, sizeof(name), f);
    fwrite(head, sizeof(int32_t), 2, f);
    fwrite(dims, sizeof(int64_t), 4, f);
    fwrite(t->bytes.data(), 1, t->bytes.size(), f);
  }
  fclose(f);
}

// ---------------------------------------------------------------- the problem

struct Options {
  ForwardProblem p;
  int sms = 132;
  const char* out = nullptr;
};

[[noreturn]] void usage(const char* why) {
  fprintf(stderr,
          "sanitize_target: %s\nusage: sanitize_target [--layers L] [--input I] [--hidden H] "
          "[--batch B] [--seq T] [--dropout P] [--no-lengths] [--sms N] [--out FILE]\n",
          why);
  exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  ForwardProblem& p = o.p;
  p.mode = Mode::kLSTM;
  p.num_layers = 2;
  p.input_size = 10;
  p.hidden_size = 24;
  p.batch = 3;
  p.seq_len = 3;
  p.dropout = 0.25;
  p.has_lengths = true;
  p.has_biases = true;
  p.need_reserve = true;
  p.can_project_input = true;
  p.dtype = kDType;
  p.allow_tf32 = kTf32;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) usage(("missing value of " + a).c_str());
      return argv[++i];
    };
    auto count = [&](int64_t lo) {
      char* end = nullptr;
      const long long v = strtoll(value(), &end, 10);
      if (*end != '\0' || v < lo || v > 65536) usage(("bad value of " + a).c_str());
      return static_cast<int64_t>(v);
    };
    if (a == "--layers") p.num_layers = static_cast<int>(count(1));
    else if (a == "--input") p.input_size = count(1);
    else if (a == "--hidden") p.hidden_size = count(1);
    else if (a == "--batch") p.batch = count(1);
    else if (a == "--seq") p.seq_len = count(1);
    else if (a == "--sms") o.sms = static_cast<int>(count(1));
    else if (a == "--dropout") {
      char* end = nullptr;
      p.dropout = strtod(value(), &end);
      if (*end != '\0' || !(p.dropout >= 0.0 && p.dropout < 1.0)) usage("--dropout: in [0, 1)");
    } else if (a == "--no-lengths") p.has_lengths = false;
    else if (a == "--out") o.out = value();
    else usage(("unknown option " + a).c_str());
  }
  if (p.num_layers > kMaxLayerDirs) usage("--layers: too many");
  if (!parse_sync(getenv("FUSED_RNN_SYNC"), &p.sync)) usage("bad FUSED_RNN_SYNC");
  if (!parse_cluster(getenv("FUSED_RNN_CLUSTER"), &p.cluster)) usage("bad FUSED_RNN_CLUSTER");
  return o;
}

#if !defined(FRNN_EMULATION)
// The planned synchronisation of a problem (what plan_forward / plan_backward
// resolve the request to): the kernel variant whose attributes planning needs.
SyncPolicy planned_sync(const ForwardProblem& p) {
  return p.sync == SyncPolicy::kGrid ? SyncPolicy::kGrid : SyncPolicy::kFlags;
}
#endif

}  // namespace

// ---------------------------------------------------------------- emulated launches

#if defined(FRNN_EMULATION)
// The emulation's cooperative launch of the kernel named by g_launching, with
// its kernel's options (emu_launch.h, as its own driver uses them).
cudaError_t cudaLaunchCooperativeKernel(const void* fn, dim3 grid, dim3 block, void** args,
                                        size_t smem_bytes, cudaStream_t) {
  if (g_launching == Launching::kForward)
    return emu::cooperative_launch<ForwardParams>(fn, grid, block, args, smem_bytes,
                                                  emu::forward_launch_options());
  return emu::cooperative_launch<BackwardParams>(fn, grid, block, args, smem_bytes,
                                                 emu::backward_launch_options());
}

cudaError_t emu::launch_cooperative_cluster(const void* fn, dim3 grid, dim3 block, void** args,
                                            size_t smem_bytes, cudaStream_t, int cluster) {
  return emu::cooperative_launch<BackwardParams>(fn, grid, block, args, smem_bytes,
                                                 emu::backward_launch_options(cluster));
}
#endif

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  const ForwardProblem& p = o.p;
  const int64_t T = p.seq_len, B = p.batch, I = p.input_size, H = p.hidden_size,
                L = p.num_layers, G = p.gates(), LD = p.layer_dirs(), S = p.reserve_width();
  printf("sanitize_target: %s LSTM L=%lld I=%lld H=%lld B=%lld T=%lld dropout=%g%s, "
         "FRNN_BISECT=%d\n",
         kDtypeName, static_cast<long long>(L), static_cast<long long>(I),
         static_cast<long long>(H), static_cast<long long>(B), static_cast<long long>(T),
         p.dropout, p.has_lengths ? ", lengths" : "", FRNN_BISECT);

  // ---- plans, with the extension's planners
#if defined(FRNN_EMULATION)
  const DeviceLimits dev = emu::h100_like(o.sms);
  const PlanResult fplan = plan_forward(p, dev, &emu_occupancy, &dev);
  const BackwardPlanResult bplan = fplan.ok ? plan_backward(p, dev, &emu_occupancy, &dev)
                                            : BackwardPlanResult();
#else
  const void* fwd_fn = fwd::forward_kernel_ptr<Elem, kCell, kTf32>(planned_sync(p));
  const void* bwd_fn = bwd::backward_kernel_ptr<Elem, kCell, kTf32>(planned_sync(p));
  DeviceLimits dev;
  int device = 0, optin = 0, per_sm = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&dev.sm_count, cudaDevAttrMultiProcessorCount, device), "attr");
  check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "attr");
  check(cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device),
        "attr");
  check(cudaDeviceGetAttribute(&dev.cc_major, cudaDevAttrComputeCapabilityMajor, device), "attr");
  check(cudaDeviceGetAttribute(&dev.cc_minor, cudaDevAttrComputeCapabilityMinor, device), "attr");
  dev.smem_optin_per_block = optin;
  dev.smem_per_sm = per_sm;
  check(set_kernel_smem_attributes(fwd_fn, device), "cudaFuncSetAttribute");
  check(set_kernel_smem_attributes(bwd_fn, device), "cudaFuncSetAttribute");
  const Occ fq{fwd_fn, kForwardThreads}, bq{bwd_fn, kBackwardThreads};
  const PlanResult fplan = plan_forward(p, dev, &gpu_occupancy, &fq);
  const BackwardPlanResult bplan =
      fplan.ok ? plan_backward(p, dev, &gpu_occupancy, &bq, &gpu_cluster_occupancy, &bq)
               : BackwardPlanResult();
#endif
  printf("forward plan: %s\n", fplan.reason.c_str());
  if (!fplan.ok) return 3;
  printf("backward plan: %s\n", bplan.reason.c_str());
  if (!bplan.ok) return 3;
  fflush(stdout);

  // ---- inputs (host), then on the device
  Random rng;
  std::vector<Tensor> ins;
  ins.push_back(random_tensor(rng, "x", {T, B, I}, 1.0f));
  for (int64_t l = 0; l < L; ++l) {
    const int64_t in_l = l == 0 ? I : H;
    const std::string sfx = "_l" + std::to_string(l);
    ins.push_back(random_tensor(rng, "w_ih" + sfx, {G * H, in_l}, 0.2f));
    ins.push_back(random_tensor(rng, "w_hh" + sfx, {G * H, H}, 0.2f));
    ins.push_back(random_tensor(rng, "b_ih" + sfx, {G * H}, 0.2f));
    ins.push_back(random_tensor(rng, "b_hh" + sfx, {G * H}, 0.2f));
  }
  ins.push_back(random_tensor(rng, "hx", {LD, B, H}, 0.5f));
  ins.push_back(random_tensor(rng, "cx", {LD, B, H}, 0.5f));
  Tensor lengths = make("lengths", {B}, 3);
  int64_t* len = reinterpret_cast<int64_t*>(lengths.bytes.data());
  for (int64_t b = 0; b < B; ++b) len[b] = b == 0 ? T : 1 + (b * 7 + 2) % T;  // one full row
  Tensor seed = make("seed", {1}, 3);
  *reinterpret_cast<int64_t*>(seed.bytes.data()) = 1234;
  ins.push_back(random_tensor(rng, "grad_output", {T, B, H}, 1.0f));
  ins.push_back(random_tensor(rng, "grad_hy", {LD, B, H}, 1.0f));
  ins.push_back(random_tensor(rng, "grad_cy", {LD, B, H}, 1.0f));
  auto in = [&](const std::string& name) -> const Tensor& {
    for (const Tensor& t : ins)
      if (t.name == name) return t;
    fail("no input " + name);
  };

  DeviceBuffers buf;
  auto on_dev = [&](const Tensor& t) { return buf.copy_of(t.bytes.data(), t.nbytes()); };
  const void* d_x = on_dev(in("x"));
  std::vector<const void*> d_w;  // per layer: w_ih, w_hh, b_ih, b_hh
  for (int64_t l = 0; l < L; ++l)
    for (const char* n : {"w_ih", "w_hh", "b_ih", "b_hh"})
      d_w.push_back(on_dev(in(std::string(n) + "_l" + std::to_string(l))));
  const void* d_hx = on_dev(in("hx"));
  const void* d_cx = on_dev(in("cx"));
  const int64_t* d_len = p.has_lengths ? static_cast<const int64_t*>(on_dev(lengths)) : nullptr;
  const int64_t* d_seed =
      p.dropout_active() ? static_cast<const int64_t*>(on_dev(seed)) : nullptr;
  const int64_t es = dtype_size(p.dtype);

  // ---- forward
  ForwardParams fp;
  const WorkspaceLayout fwl = forward_workspace(p, fplan.cfg);
  void* fws = buf.poisoned(fwl.total);
  if (fwl.flags >= 0) dev_fill(static_cast<unsigned char*>(fws) + fwl.flags, 0, fwl.flags_bytes);
  init_forward_params(fp, p, fplan.cfg, fws);
  fp.x = d_x;
  for (int64_t l = 0; l < L; ++l) {
    fp.w_ih[l] = d_w[4 * l];
    fp.w_hh[l] = d_w[4 * l + 1];
    fp.b_ih[l] = d_w[4 * l + 2];
    fp.b_hh[l] = d_w[4 * l + 3];
  }
  if (fplan.cfg.x_proj) {  // x_t W_ih0^T, (T*B, G*H) fp32, no bias (the binding's GEMM)
    const Tensor& x = in("x");
    const Tensor& w0 = in("w_ih_l0");
    std::vector<float> proj(static_cast<size_t>(T * B * G * H));
    for (int64_t tb = 0; tb < T * B; ++tb)
      for (int64_t r = 0; r < G * H; ++r) {
        double acc = 0.0;
        for (int64_t i = 0; i < I; ++i)
          acc += static_cast<double>(host_f(x.elems()[tb * I + i])) *
                 host_f(w0.elems()[r * I + i]);
        proj[static_cast<size_t>(tb * G * H + r)] = static_cast<float>(acc);
      }
    fp.xproj[0] = static_cast<const float*>(buf.copy_of(proj.data(), T * B * G * H * 4));
  }
  fp.hx = d_hx;
  fp.cx = d_cx;
  fp.lengths = d_len;
  fp.seed = d_seed;
  fp.y = buf.poisoned(T * B * H * es);
  fp.hy = buf.poisoned(LD * B * H * es);
  fp.cy = buf.poisoned(LD * B * H * es);
  fp.reserve = buf.poisoned(LD * T * B * S * es);
#if defined(FRNN_EMULATION)
  g_launching = Launching::kForward;
#endif
  check(fwd::launch_forward_kernel<Elem, kCell, kTf32>(fp, nullptr), "forward launch");
  dev_sync("forward kernel");

  // ---- backward
  BackwardParams bp;
  const BackwardWorkspaceLayout bwl = backward_workspace(p, bplan.cfg);
  void* bws = buf.poisoned(bwl.total);
  if (bwl.flags >= 0) dev_fill(static_cast<unsigned char*>(bws) + bwl.flags, 0, bwl.flags_bytes);
  init_backward_params(bp, p, bplan.cfg, bws);
  for (int64_t l = 0; l < L; ++l) {
    bp.w_ih[l] = d_w[4 * l];
    bp.w_hh[l] = d_w[4 * l + 1];
  }
  bp.hx = d_hx;
  bp.cx = d_cx;
  bp.lengths = d_len;
  bp.seed = d_seed;
  bp.reserve = fp.reserve;
  bp.grad_output = on_dev(in("grad_output"));
  bp.grad_hy = on_dev(in("grad_hy"));
  bp.grad_cy = on_dev(in("grad_cy"));
  bp.grad_hx = buf.poisoned(LD * B * H * es);
  bp.grad_cx = buf.poisoned(LD * B * H * es);
#if defined(FRNN_EMULATION)
  g_launching = Launching::kBackward;
#endif
  check(bwd::launch_backward_kernel<Elem, kCell, kTf32>(bp, nullptr), "backward launch");
  dev_sync("backward kernel");

  // ---- outputs: every one finite
  std::vector<Tensor> outs;
  outs.push_back(download("output", {T, B, H}, fp.y));
  outs.push_back(download("h_n", {LD, B, H}, fp.hy));
  outs.push_back(download("c_n", {LD, B, H}, fp.cy));
  outs.push_back(download("dg_ih", {LD, T, B, bplan.cfg.gh_pad}, bp.dg_ih));
  if (bp.xdrop) outs.push_back(download("xdrop", {L - 1, T, B, H}, bp.xdrop));
  outs.push_back(download("grad_hx", {LD, B, H}, bp.grad_hx));
  outs.push_back(download("grad_cx", {LD, B, H}, bp.grad_cx));
  std::string bad;
  for (const Tensor& t : outs) {
    const int64_t at = first_non_finite(t);
    if (at >= 0) bad += " " + t.name + "[flat " + std::to_string(at) + "]";
  }
  if (o.out) {
    std::vector<const Tensor*> all;
    for (const Tensor& t : ins) all.push_back(&t);
    all.push_back(&lengths);
    all.push_back(&seed);
    for (const Tensor& t : outs) all.push_back(&t);
    write_records(o.out, all);
  }
  if (!bad.empty()) fail("non-finite values in" + bad);
  printf("sanitize_target: forward + backward ran, all outputs finite\n");
  return 0;
}
