// emu shim (see ../emu_cuda.h): nvcuda::wmma with whole-tile fragments.
// Semantics modelled: A row_major (A[m][k] = p[m*ldm + k]), B col_major
// (B[k][n] = p[n*ldm + k]), D = A*B + C in fp32, store row/col major. The
// alignment rules of the real API are asserted: 256-bit aligned pointers,
// ldm a multiple of 16 bytes.
#pragma once
#include "../emu_cuda.h"
#include "cuda_bf16.h"
#include "cuda_fp16.h"

namespace nvcuda {
namespace wmma {

struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
namespace precision {
struct tf32 {};
}
enum layout_t { mem_row_major, mem_col_major };

template <typename T> struct elem { using type = T; };
template <> struct elem<precision::tf32> { using type = float; };

inline float to_f(float v) { return v; }
inline float to_f(__half v) { return __half2float(v); }
inline float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

// Round to TF32 (10-bit mantissa), nearest, ties away from zero (cvt.rna.tf32.f32).
inline float __float_to_tf32(float v) {
  unsigned u = __float_as_uint(v);
  if ((u & 0x7f800000u) == 0x7f800000u) return v;
  u = (u + 0x1000u) & 0xffffe000u;
  return __uint_as_float(u);
}

template <typename Use, int M, int N, int K, typename T = float, typename Layout = void>
struct fragment;

template <int M, int N, int K, typename T, typename Layout>
struct fragment<matrix_a, M, N, K, T, Layout> {
  static constexpr int num_elements = M * K;
  float x[M * K];  // x[m * K + k]
};
template <int M, int N, int K, typename T, typename Layout>
struct fragment<matrix_b, M, N, K, T, Layout> {
  static constexpr int num_elements = K * N;
  float x[K * N];  // x[k * N + n]
};
template <int M, int N, int K>
struct fragment<accumulator, M, N, K, float, void> {
  static constexpr int num_elements = M * N;
  float x[M * N];  // x[m * N + n]
};

inline void check_ptr(const void* p, unsigned ldm, unsigned elem_bytes) {
  assert(reinterpret_cast<uintptr_t>(p) % 32 == 0 && "wmma: pointer must be 256-bit aligned");
  assert((ldm * elem_bytes) % 16 == 0 && "wmma: ldm must be a multiple of 16 bytes");
  (void)p; (void)ldm; (void)elem_bytes;
}

template <int M, int N, int K, typename T>
void load_matrix_sync(fragment<matrix_a, M, N, K, T, row_major>& f,
                      const typename elem<T>::type* p, unsigned ldm) {
  check_ptr(p, ldm, sizeof(*p));
  for (int m = 0; m < M; ++m)
    for (int k = 0; k < K; ++k) f.x[m * K + k] = to_f(p[m * ldm + k]);
}

template <int M, int N, int K, typename T>
void load_matrix_sync(fragment<matrix_b, M, N, K, T, col_major>& f,
                      const typename elem<T>::type* p, unsigned ldm) {
  check_ptr(p, ldm, sizeof(*p));
  for (int n = 0; n < N; ++n)
    for (int k = 0; k < K; ++k) f.x[k * N + n] = to_f(p[n * ldm + k]);
}

template <int M, int N, int K>
void fill_fragment(fragment<accumulator, M, N, K, float, void>& f, float v) {
  for (float& e : f.x) e = v;
}

template <int M, int N, int K, typename TA, typename LA, typename TB, typename LB>
void mma_sync(fragment<accumulator, M, N, K, float, void>& d,
              const fragment<matrix_a, M, N, K, TA, LA>& a,
              const fragment<matrix_b, M, N, K, TB, LB>& b,
              const fragment<accumulator, M, N, K, float, void>& c) {
  float out[M * N];
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      float s = c.x[m * N + n];
      for (int k = 0; k < K; ++k) s += a.x[m * K + k] * b.x[k * N + n];
      out[m * N + n] = s;
    }
  memcpy(d.x, out, sizeof(out));
}

template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float, void>& f,
                       unsigned ldm, layout_t layout) {
  check_ptr(p, ldm, 4);
  if (threadIdx.x % 32 != 0) return;  // every lane holds the whole tile; one writes it
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n)
      p[layout == mem_row_major ? m * ldm + n : n * ldm + m] = f.x[m * N + n];
}

}  // namespace wmma
}  // namespace nvcuda
