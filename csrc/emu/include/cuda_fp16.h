// emu shim (see ../emu_cuda.h): __half as IEEE binary16 storage, round-to-nearest-even.
#pragma once
#include "../emu_cuda.h"

struct __half {
  unsigned short bits;
};

inline float __half2float(__half h) {
  _Float16 f;
  memcpy(&f, &h.bits, 2);
  return static_cast<float>(f);
}
inline __half __float2half_rn(float v) {
  const _Float16 f = static_cast<_Float16>(v);  // RNE
  __half h;
  memcpy(&h.bits, &f, 2);
  return h;
}
inline __half __ushort_as_half(unsigned short u) { return __half{u}; }
inline unsigned short __half_as_ushort(__half h) { return h.bits; }
