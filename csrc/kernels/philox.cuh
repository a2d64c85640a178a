// Philox4x32-10 and the inter-layer dropout mask of fused_rnn.
//
// The mask is a pure function of (seed, layer, direction, t, b, j):
//
//   counter = { j >> 2, b, t, 2 * layer + direction }      (four 32-bit words)
//   key     = { seed & 0xffffffff, seed >> 32 }
//   r       = philox4x32_10(counter, key)[j & 3]
//   keep    = r < threshold,  threshold = floor((1 - p) * 2^32)  (64-bit)
//
// `layer` is the layer whose output is dropped (0 .. L-2), `direction` the
// direction that produced unit j (0 forward, 1 reverse), t the timestep, b the
// row of the batch as the kernel sees it, j the hidden unit within the
// direction (0 .. H_out-1). The PyTorch mirror is fused_rnn/dropout.py; the
// two produce identical bits (tests/test_dropout.py compiles this header for
// the host and compares).
//
// No torch and no CUDA header is needed: this file compiles with g++ too.
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define FRNN_HD __host__ __device__ __forceinline__
#else
#define FRNN_HD inline
#endif

namespace fused_rnn {

struct Philox4 {
  uint32_t x, y, z, w;
};

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

FRNN_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

FRNN_HD Philox4 philox_round(Philox4 c, uint32_t k0, uint32_t k1) {
  const uint32_t hi0 = mulhi32(kPhiloxM0, c.x);
  const uint32_t lo0 = kPhiloxM0 * c.x;
  const uint32_t hi1 = mulhi32(kPhiloxM1, c.z);
  const uint32_t lo1 = kPhiloxM1 * c.z;
  return Philox4{hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0};
}

// The standard Philox4x32 with 10 rounds (Salmon et al., Random123).
FRNN_HD Philox4 philox4x32_10(Philox4 c, uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    c = philox_round(c, k0, k1);
  }
  return c;
}

// floor((1 - p) * 2^32) as a 64-bit integer: 2^32 for p = 0 (keep all), 0 for
// p = 1 (drop all). Computed in double, exactly as dropout.py does.
FRNN_HD uint64_t dropout_threshold(double p) {
  const double keep = (1.0 - p) * 4294967296.0;
  if (keep <= 0.0) return 0;
  if (keep >= 4294967296.0) return 4294967296ull;
  return static_cast<uint64_t>(keep);
}

// Four consecutive units j = 4*q .. 4*q+3 share one Philox call.
FRNN_HD Philox4 dropout_bits4(uint64_t seed, uint32_t layer, uint32_t direction,
                              uint32_t t, uint32_t b, uint32_t q) {
  const Philox4 ctr{q, b, t, 2u * layer + direction};
  return philox4x32_10(ctr, static_cast<uint32_t>(seed),
                       static_cast<uint32_t>(seed >> 32));
}

FRNN_HD uint32_t philox_word(const Philox4& r, uint32_t i) {
  return i == 0 ? r.x : i == 1 ? r.y : i == 2 ? r.z : r.w;
}

// True when element (layer, direction, t, b, j) is kept.
FRNN_HD bool dropout_keep(uint64_t seed, uint64_t threshold, uint32_t layer,
                          uint32_t direction, uint32_t t, uint32_t b,
                          uint32_t j) {
  const Philox4 r = dropout_bits4(seed, layer, direction, t, b, j >> 2);
  return static_cast<uint64_t>(philox_word(r, j & 3u)) < threshold;
}

}  // namespace fused_rnn
