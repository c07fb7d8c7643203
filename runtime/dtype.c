/* dtype sizes and names, and the bf16/fp16 <-> float32 conversions (round to nearest even). */
#include "runtime/dtype.h"

#include "runtime/bf16.h"

#include <math.h>
#include <string.h>

size_t loom_dtype_size(loom_dtype dtype) {
  switch (dtype) {
#define LOOM_DTYPE_SIZE(upper, lower, bytes) \
  case LOOM_##upper: return bytes;
    LOOM_DTYPE_MAP(LOOM_DTYPE_SIZE)
#undef LOOM_DTYPE_SIZE
    default: return 0;
  }
}

const char *loom_dtype_name(loom_dtype dtype) {
  switch (dtype) {
#define LOOM_DTYPE_NAME(upper, lower, bytes) \
  case LOOM_##upper: return #lower;
    LOOM_DTYPE_MAP(LOOM_DTYPE_NAME)
#undef LOOM_DTYPE_NAME
    default: return "invalid";
  }
}

loom_status loom_dtype_parse(const char *name, loom_dtype *out) {
  for (int d = 0; d < LOOM_DTYPE_COUNT; d++) {
    if (name && strcmp(name, loom_dtype_name((loom_dtype)d)) == 0) {
      *out = (loom_dtype)d;
      return LOOM_OK;
    }
  }
  return loom_error_set(LOOM_ERR_ARG,
                        "unknown dtype '%s'; accepted: float32 float64 bfloat16 float16 int32 "
                        "int64 uint8",
                        name ? name : "(null)");
}

int loom_dtype_is_float(loom_dtype dtype) {
  return dtype == LOOM_FLOAT32 || dtype == LOOM_FLOAT64 || dtype == LOOM_BFLOAT16 ||
         dtype == LOOM_FLOAT16;
}

#define float_bits loom_float_bits
#define bits_float loom_bits_float

uint16_t loom_float_to_bf16(float value) { return loom_bf16_round(value); }

float loom_bf16_to_float(uint16_t bits) { return loom_bf16_widen(bits); }

uint16_t loom_float_to_fp16(float value) {
  uint32_t u = float_bits(value);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);  /* NaN */
  if (abs >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to inf */
  if (abs < 0x38800000u) {                                   /* subnormal or zero in fp16 */
    /* value = abs * 2^24 in units of the smallest fp16 subnormal, rounded to nearest even */
    float scaled = bits_float(abs) * 16777216.0f;
    float rounded = nearbyintf(scaled);
    return (uint16_t)(sign | (uint32_t)rounded);
  }
  uint32_t mantissa_round = abs + 0xfffu + ((abs >> 13) & 1u);
  return (uint16_t)(sign | ((mantissa_round - 0x38000000u) >> 13));
}

float loom_fp16_to_float(uint16_t bits) {
  uint32_t sign = (uint32_t)(bits & 0x8000u) << 16;
  uint32_t exponent = (bits >> 10) & 0x1fu;
  uint32_t mantissa = bits & 0x3ffu;
  if (exponent == 0) {
    float f = (float)mantissa / 16777216.0f; /* 2^-24 per unit */
    return sign ? -f : f;
  }
  if (exponent == 31) return bits_float(sign | 0x7f800000u | (mantissa << 13));
  return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

double loom_dtype_load(const void *ptr, loom_dtype dtype, size_t index) {
  switch (dtype) {
    case LOOM_FLOAT32: return ((const float *)ptr)[index];
    case LOOM_FLOAT64: return ((const double *)ptr)[index];
    case LOOM_BFLOAT16: return loom_bf16_to_float(((const uint16_t *)ptr)[index]);
    case LOOM_FLOAT16: return loom_fp16_to_float(((const uint16_t *)ptr)[index]);
    case LOOM_INT32: return ((const int32_t *)ptr)[index];
    case LOOM_INT64: return (double)((const int64_t *)ptr)[index];
    case LOOM_UINT8: return ((const uint8_t *)ptr)[index];
    default: return 0.0;
  }
}

void loom_dtype_store(void *ptr, loom_dtype dtype, size_t index, double value) {
  switch (dtype) {
    case LOOM_FLOAT32: ((float *)ptr)[index] = (float)value; break;
    case LOOM_FLOAT64: ((double *)ptr)[index] = value; break;
    case LOOM_BFLOAT16: ((uint16_t *)ptr)[index] = loom_float_to_bf16((float)value); break;
    case LOOM_FLOAT16: ((uint16_t *)ptr)[index] = loom_float_to_fp16((float)value); break;
    /* Out-of-range values saturate (a C conversion of them would be undefined). */
    case LOOM_INT32:
      ((int32_t *)ptr)[index] = value >= 2147483647.0 ? INT32_MAX
                                : value <= -2147483648.0 ? INT32_MIN : (int32_t)value;
      break;
    case LOOM_INT64:
      ((int64_t *)ptr)[index] = value >= 9223372036854775807.0 ? INT64_MAX
                                : value <= -9223372036854775808.0 ? INT64_MIN : (int64_t)value;
      break;
    case LOOM_UINT8: {
      double wrapped = fmod(value, 256.0);
      if (wrapped < 0) wrapped += 256.0;
      ((uint8_t *)ptr)[index] = (uint8_t)wrapped;
      break;
    }
    default: break;
  }
}
