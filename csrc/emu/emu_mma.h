// emu (see emu_cuda.h): the warp-collective tensor-core instructions the
// forward kernel uses (csrc/kernels/mma_frag.cuh), with the hardware's exact
// per-lane fragment layouts, written here from the PTX ISA's tables
// ("Matrix Fragments for mma.m16n8k16 with floating point type", "... for
// mma.m16n8k8" (.tf32), "Warp-level matrix load instruction: ldmatrix"), not
// from the kernel's own helpers -- so that a kernel that puts an element in
// the wrong lane or register computes a wrong result here, as on a GPU.
//
// Each lane is a host thread: it publishes its operands in the warp's
// scratch, the warp meets at a barrier, every lane assembles the whole
// matrices from all 32 lanes' registers and keeps its own part of the result,
// and the warp meets again before the scratch is reused.
#pragma once

#include <stdint.h>
#include <string.h>

namespace emu {

struct WarpScratch {
  const unsigned char* row[32];  // ldmatrix: each lane's row address
  uint32_t a[32][4];             // mma: each lane's A, B and C registers
  uint32_t b[32][2];
  float c[32][4];
  uint32_t shfl[32];             // __shfl_*_sync: each lane's value
};

inline WarpScratch& warp_scratch() {
  assert(tl_cta->scratch && tl_cta->warps && "emu: this driver has no warp scratch / barriers");
  return tl_cta->scratch[threadIdx.x / 32];
}

// __shfl_sync with the full mask and width 32: every lane of the warp takes part (as the
// hardware requires of the lanes the mask names); lane l receives lane src's value.
inline uint32_t shfl_u32(uint32_t v, int src) {
  WarpScratch& s = warp_scratch();
  s.shfl[threadIdx.x % 32] = v;
  __syncwarp();
  const uint32_t r = s.shfl[src & 31];
  __syncwarp();
  return r;
}

// ldmatrix.sync.aligned.m8n8.x{1,2,4}.shared.b16: lanes 8i .. 8i+7 give the
// 8 row addresses (16 bytes each, 16-byte aligned, in shared memory) of
// matrix i; register i of lane l receives the 32-bit word l % 4 of row l / 4
// of matrix i.
inline void ldmatrix(int matrices, uint32_t* r, const void* row) {
  WarpScratch& s = warp_scratch();
  const int lane = threadIdx.x % 32;
  const auto* p = static_cast<const unsigned char*>(row);
  if (lane < 8 * matrices) {  // the addresses the instruction uses must be valid
    assert(reinterpret_cast<uintptr_t>(p) % 16 == 0 && "ldmatrix: rows must be 16-byte aligned");
    assert(p >= tl_cta->smem && p + 16 <= tl_cta->smem + tl_cta->smem_bytes &&
           "ldmatrix: row outside the CTA's shared memory");
  }
  s.row[lane] = p;
  __syncwarp();
  for (int i = 0; i < matrices; ++i) memcpy(&r[i], s.row[8 * i + lane / 4] + 4 * (lane % 4), 4);
  __syncwarp();
}

enum class MmaKind { kBF16, kF16, kTF32 };

// The value of half h of a 16-bit operand register, or of a .tf32 register
// (the instruction uses its sign, exponent and top 10 mantissa bits).
inline float mma_operand(MmaKind kind, uint32_t reg, int h) {
  if (kind == MmaKind::kTF32) return __uint_as_float(reg & 0xffffe000u);
  const uint16_t bits = static_cast<uint16_t>(reg >> (16 * h));
  if (kind == MmaKind::kBF16) return __uint_as_float(static_cast<uint32_t>(bits) << 16);
  _Float16 f;
  memcpy(&f, &bits, 2);
  return static_cast<float>(f);
}

// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 and
// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 with D = C = d:
// d = A * B + d for the warp's 16 x 8 tile. g = lane / 4, t = lane % 4.
inline void mma(MmaKind kind, float* d, const uint32_t* a, const uint32_t* b) {
  WarpScratch& s = warp_scratch();
  const int lane = threadIdx.x % 32;
  memcpy(s.a[lane], a, sizeof(s.a[lane]));
  memcpy(s.b[lane], b, sizeof(s.b[lane]));
  memcpy(s.c[lane], d, sizeof(s.c[lane]));
  __syncwarp();
  const bool tf32 = kind == MmaKind::kTF32;
  const int K = tf32 ? 8 : 16;
  float A[16][16], B[16][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    for (int i = 0; i < 4; ++i) {
      if (tf32) {  // a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4)
        A[g + 8 * (i % 2)][t + 4 * (i / 2)] = mma_operand(kind, s.a[l][i], 0);
      } else {  // {a0,a1} (g, 2t..2t+1), {a2,a3} (g+8, ..), {a4,a5} (g, 2t+8..), {a6,a7} (g+8, ..)
        for (int h = 0; h < 2; ++h)
          A[g + 8 * (i % 2)][2 * t + h + 8 * (i / 2)] = mma_operand(kind, s.a[l][i], h);
      }
      C[g + 8 * (i / 2)][2 * t + i % 2] = s.c[l][i];  // c0 (g, 2t), c1 (g, 2t+1), c2/c3 row g+8
    }
    for (int j = 0; j < 2; ++j) {
      if (tf32) {  // b0 (k = t, n = g), b1 (k = t+4, n = g)
        B[t + 4 * j][g] = mma_operand(kind, s.b[l][j], 0);
      } else {  // {b0,b1} (k = 2t..2t+1, n = g), {b2,b3} (k = 2t+8.., n = g)
        for (int h = 0; h < 2; ++h) B[2 * t + h + 8 * j][g] = mma_operand(kind, s.b[l][j], h);
      }
    }
  }
  const int g = lane / 4, t = lane % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
    float acc = C[row][col];
    for (int k = 0; k < K; ++k) acc += A[row][k] * B[k][col];
    d[i] = acc;
  }
  __syncwarp();
}

}  // namespace emu

inline float __shfl_xor_sync(unsigned, float v, int mask) {
  return __uint_as_float(emu::shfl_u32(__float_as_uint(v), static_cast<int>(threadIdx.x % 32) ^ mask));
}
inline float __shfl_sync(unsigned, float v, int src) {
  return __uint_as_float(emu::shfl_u32(__float_as_uint(v), src));
}
inline int __shfl_sync(unsigned, int v, int src) {
  return static_cast<int>(emu::shfl_u32(static_cast<uint32_t>(v), src));
}
