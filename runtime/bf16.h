/* bfloat16 <-> float32 conversion as inline functions usable on the host and in CUDA kernels,
 * so the CPU reference, the dtype helpers and the mixed-precision optimizer kernels round the
 * same way: round to nearest even, NaN kept quiet. A bfloat16 is the high 16 bits of a float32.
 * Private to libloom (the public entry points are loom_float_to_bf16/loom_bf16_to_float). */
#ifndef LOOM_RUNTIME_BF16_H
#define LOOM_RUNTIME_BF16_H

#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define LOOM_HOST_DEVICE __host__ __device__
#else
#define LOOM_HOST_DEVICE
#endif

LOOM_HOST_DEVICE static inline uint32_t loom_float_bits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
#endif
}

LOOM_HOST_DEVICE static inline float loom_bits_float(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  memcpy(&f, &u, 4);
  return f;
#endif
}

LOOM_HOST_DEVICE static inline uint16_t loom_bf16_round(float value) {
  uint32_t u = loom_float_bits(value);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

LOOM_HOST_DEVICE static inline float loom_bf16_widen(uint16_t bits) {
  return loom_bits_float((uint32_t)bits << 16);
}

#endif
