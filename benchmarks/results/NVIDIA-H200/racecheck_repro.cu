// Minimal racecheck reproducers (racecheck_repro.log): nvcc -arch=sm_90a -O2 -o rep racecheck_repro.cu;
// compute-sanitizer --tool racecheck ./rep {tf32,sts16,bf16,f16,bf16-aglobal,cpasync-bf16}
// Minimal racecheck reproducers (one-off diagnosis): which shared-memory operation of the
// 16-bit backward makes compute-sanitizer racecheck fail? One kernel per argv[1].
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
using namespace nvcuda;

template <typename T>
__global__ void k_wmma16(const T* a, const T* b, float* c) {  // static smem, plain stores
  __shared__ __align__(128) T sa[16 * 16], sb[16 * 16];
  for (int i = threadIdx.x; i < 256; i += 32) { sa[i] = a[i]; sb[i] = b[i]; }
  __syncwarp();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
  wmma::fill_fragment(fc, 0.0f);
  wmma::load_matrix_sync(fa, sa, 16);
  wmma::load_matrix_sync(fb, sb, 16);
  wmma::mma_sync(fc, fa, fb, fc);
  wmma::store_matrix_sync(c, fc, 16, wmma::mem_row_major);
}

__global__ void k_wmma_tf32(const float* a, const float* b, float* c) {
  __shared__ __align__(128) float sa[16 * 8], sb[8 * 16];
  for (int i = threadIdx.x; i < 128; i += 32) { sa[i] = a[i]; sb[i] = b[i]; }
  __syncwarp();
  wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 8, float> fc;
  wmma::fill_fragment(fc, 0.0f);
  wmma::load_matrix_sync(fa, sa, 8);
  wmma::load_matrix_sync(fb, sb, 8);
  wmma::mma_sync(fc, fa, fb, fc);
  wmma::store_matrix_sync(c, fc, 16, wmma::mem_row_major);
}

// wmma A from global into registers, B from shared (the backward's weights-in-registers shape)
__global__ void k_wmma_bf16_aglobal(const __nv_bfloat16* a, const __nv_bfloat16* b, float* c) {
  __shared__ __align__(128) __nv_bfloat16 sb[16 * 16];
  for (int i = threadIdx.x; i < 256; i += 32) sb[i] = b[i];
  __syncwarp();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
  wmma::fill_fragment(fc, 0.0f);
  wmma::load_matrix_sync(fa, a, 16);
  wmma::load_matrix_sync(fb, sb, 16);
  wmma::mma_sync(fc, fa, fb, fc);
  wmma::store_matrix_sync(c, fc, 16, wmma::mem_row_major);
}

// 16-bit scalar shared stores and loads only
__global__ void k_sts16(const __nv_bfloat16* a, float* c) {
  __shared__ __align__(128) __nv_bfloat16 s[256];
  for (int i = threadIdx.x; i < 256; i += 32) s[i] = a[i];
  __syncwarp();
  float acc = 0.f;
  for (int i = 0; i < 8; ++i) acc += __bfloat162float(s[(threadIdx.x * 8 + i) % 256]);
  c[threadIdx.x] = acc;
}

// cp.async 16-byte copies into > 48 KB dynamic smem, then bf16 wmma from it
__global__ void k_cpasync_wmma_bf16(const __nv_bfloat16* a, const __nv_bfloat16* b, float* c) {
  extern __shared__ __align__(128) unsigned char smem[];
  __nv_bfloat16* sa = reinterpret_cast<__nv_bfloat16*>(smem + 90 * 1024);
  __nv_bfloat16* sb = sa + 256;
  for (int i = threadIdx.x; i < 64; i += 32) {
    const __nv_bfloat16* src = i < 32 ? a + i * 8 : b + (i - 32) * 8;
    __nv_bfloat16* dst = i < 32 ? sa + i * 8 : sb + (i - 32) * 8;
    unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(src) : "memory");
  }
  asm volatile("cp.async.commit_group;\n" ::: "memory");
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
  __syncwarp();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
  wmma::fill_fragment(fc, 0.0f);
  wmma::load_matrix_sync(fa, sa, 16);
  wmma::load_matrix_sync(fb, sb, 16);
  wmma::mma_sync(fc, fa, fb, fc);
  wmma::store_matrix_sync(c, fc, 16, wmma::mem_row_major);
}

int main(int argc, char** argv) {
  const char* k = argc > 1 ? argv[1] : "bf16";
  void *a, *b; float* c;
  cudaMalloc(&a, 4096); cudaMalloc(&b, 4096); cudaMalloc(&c, 4096);
  cudaMemset(a, 0, 4096); cudaMemset(b, 0, 4096);
  using bf = __nv_bfloat16;
  if (!strcmp(k, "bf16")) k_wmma16<bf><<<1, 32>>>((bf*)a, (bf*)b, c);
  else if (!strcmp(k, "f16")) k_wmma16<__half><<<1, 32>>>((__half*)a, (__half*)b, c);
  else if (!strcmp(k, "tf32")) k_wmma_tf32<<<1, 32>>>((float*)a, (float*)b, c);
  else if (!strcmp(k, "bf16-aglobal")) k_wmma_bf16_aglobal<<<1, 32>>>((bf*)a, (bf*)b, c);
  else if (!strcmp(k, "sts16")) k_sts16<<<1, 32>>>((bf*)a, c);
  else if (!strcmp(k, "cpasync-bf16")) {
    cudaFuncSetAttribute(k_cpasync_wmma_bf16, cudaFuncAttributeMaxDynamicSharedMemorySize, 93 * 1024);
    k_cpasync_wmma_bf16<<<1, 32, 93 * 1024>>>((bf*)a, (bf*)b, c);
  } else { fprintf(stderr, "unknown %s\n", k); return 2; }
  cudaError_t e = cudaDeviceSynchronize();
  printf("%s: %s\n", k, cudaGetErrorString(e));
  return e == cudaSuccess ? 0 : 1;
}
