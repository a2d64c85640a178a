// Warp-level tensor-core operations of the forward kernel: mma.sync and
// ldmatrix, and which matrix element each lane holds in their fragments.
//
// The forward GEMM keeps its weight tiles as A fragments -- in registers for
// the whole launch, the rest pre-arranged in shared memory so that each lane
// reads its fragment with one 16-byte load -- and loads the activations (the
// B operand) with ldmatrix. So the kernel depends on the exact lane layout of
// the fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating
// point type" and "... mma.m16n8k8" for .tf32). With g = lane / 4 and
// t = lane % 4, a lane holds:
//
//   A (16 x 16, 16-bit; 4 registers, element 2i in the low half of register i)
//       element e: row g + 8 * ((e / 2) % 2), col 2t + e % 2 + 8 * (e / 4)
//   A (16 x 8, .tf32; 4 registers)   register i: row g + 8 * (i % 2), col t + 4 * (i / 2)
//   B (16 x 8, 16-bit; 2 registers)  register j, half h: k = 2t + h + 8j, n = g
//   B (8 x 8, .tf32; 2 registers)    register j: k = t + 4j, n = g
//   C, D (16 x 8, fp32; 4 registers) register i: row g + 8 * (i / 2), col 2t + i % 2
//
// A weight "tile" here is 16 rows x 16 K, like the shapes' padding (kTile):
// one m16n8k16 A fragment (4 registers) in 16 bits, two m16n8k8 steps of 8 K
// (8 registers) in TF32. frag_a_coord / frag_c_coord below give the (row,
// col) of each register element; the host emulation (csrc/emu/emu_mma.h)
// models the hardware's side of the same tables independently, so a wrong
// index here gives wrong results there (FRNN_EMU_BREAK = 4, 5: the tests'
// deliberately broken layouts).
//
// No torch header: compiled by bare nvcc in CI and run on host threads by
// csrc/emu/ (FRNN_EMULATION).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common.h"

namespace fused_rnn {

// 32-bit registers of one weight tile (16 x 16) per lane: 16-bit dtypes pack
// two elements per register.
template <bool TF32> constexpr int kRegsPerTile = TF32 ? 8 : 4;

struct FragCoord {
  int row, col;
};

// Element e (0..7) of a lane's fragment of a 16 x 16 weight tile: the (row,
// col) it holds. 16-bit: e = 2 * register + half. TF32: register e of the two
// m16n8k8 steps, step e / 4 covering K columns [8 * (e / 4), + 8).
template <bool TF32>
FRNN_HD FragCoord frag_a_coord(int lane, int e) {
  const int g = lane / 4, t = lane % 4;
  if (TF32) {
    const int i = e % 4;
    return FragCoord{g + 8 * (i % 2), 8 * (e / 4) + t + 4 * (i / 2)};
  }
#if FRNN_EMU_BREAK == 4  // deliberately wrong: rows g and g + 8 swapped in every register
  return FragCoord{g + 8 * (1 - (e / 2) % 2), 2 * t + e % 2 + 8 * (e / 4)};
#else
  return FragCoord{g + 8 * ((e / 2) % 2), 2 * t + e % 2 + 8 * (e / 4)};
#endif
}

// Register i (0..3) of a lane's 16 x 8 fp32 accumulator: its (row, col).
FRNN_HD FragCoord frag_c_coord(int lane, int i) {
  const int g = lane / 4, t = lane % 4;
#if FRNN_EMU_BREAK == 5  // deliberately wrong: the two columns of a register pair swapped
  return FragCoord{g + 8 * (i / 2), 2 * t + 1 - i % 2};
#else
  return FragCoord{g + 8 * (i / 2), 2 * t + i % 2};
#endif
}

#if defined(FRNN_EMULATION)

FRNN_DEVICE void ldmatrix_x4(uint32_t* r, const void* row) { ::emu::ldmatrix(4, r, row); }
FRNN_DEVICE void ldmatrix_x2(uint32_t* r, const void* row) { ::emu::ldmatrix(2, r, row); }
template <typename T>
FRNN_DEVICE void mma_16816(float* d, const uint32_t* a, const uint32_t* b);
template <>
FRNN_DEVICE void mma_16816<__nv_bfloat16>(float* d, const uint32_t* a, const uint32_t* b) {
  ::emu::mma(::emu::MmaKind::kBF16, d, a, b);
}
template <>
FRNN_DEVICE void mma_16816<__half>(float* d, const uint32_t* a, const uint32_t* b) {
  ::emu::mma(::emu::MmaKind::kF16, d, a, b);
}
FRNN_DEVICE void mma_1688_tf32(float* d, const uint32_t* a, const uint32_t* b) {
  ::emu::mma(::emu::MmaKind::kTF32, d, a, b);
}
FRNN_DEVICE uint4 lds128(const void* p) { return *static_cast<const uint4*>(p); }

#else

// ldmatrix .x4 / .x2 (8 x 8 b16 matrices): lane l gives the address of row
// l % 8 of matrix l / 8 (16 bytes, 16-byte aligned, shared memory); register
// i of lane l receives bytes [4 (l % 4), + 4) of row l / 4 of matrix i.
FRNN_DEVICE void ldmatrix_x4(uint32_t* r, const void* row) {
#if defined(__CUDA_ARCH__)
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
#endif
}
FRNN_DEVICE void ldmatrix_x2(uint32_t* r, const void* row) {
#if defined(__CUDA_ARCH__)
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(s));
#endif
}

// d += a * b, fp32 accumulate (m16n8k16, row-major A, column-major B).
template <typename T>
FRNN_DEVICE void mma_16816(float* d, const uint32_t* a, const uint32_t* b);
template <>
FRNN_DEVICE void mma_16816<__nv_bfloat16>(float* d, const uint32_t* a, const uint32_t* b) {
#if defined(__CUDA_ARCH__)
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}
template <>
FRNN_DEVICE void mma_16816<__half>(float* d, const uint32_t* a, const uint32_t* b) {
#if defined(__CUDA_ARCH__)
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}
// d += a * b (m16n8k8, TF32 operands: fp32 bit patterns, pre-rounded).
FRNN_DEVICE void mma_1688_tf32(float* d, const uint32_t* a, const uint32_t* b) {
#if defined(__CUDA_ARCH__)
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}
// One 16-byte shared-memory load (a lane's quarter of a pre-arranged A fragment).
FRNN_DEVICE uint4 lds128(const void* p) { return *static_cast<const uint4*>(p); }

#endif

}  // namespace fused_rnn
