/* Unit tests of dtypes: sizes, names and parsing; bfloat16 / float16 conversions against an
 * independent round-to-nearest-even reference (every 16-bit pattern, ties, random floats); and
 * load / store of every dtype touching only its own element. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "runtime/dtype.h"
#include "runtime/rng.h"
#include "runtime/status.h"
#include "unit.h"

static void test_dtype_sizes_and_names(void) {
  static const struct {
    loom_dtype dtype;
    size_t bytes;
    const char *name;
    int is_float;
  } table[] = {{LOOM_FLOAT32, 4, "float32", 1}, {LOOM_FLOAT64, 8, "float64", 1},
               {LOOM_BFLOAT16, 2, "bfloat16", 1}, {LOOM_FLOAT16, 2, "float16", 1},
               {LOOM_INT32, 4, "int32", 0},     {LOOM_INT64, 8, "int64", 0},
               {LOOM_UINT8, 1, "uint8", 0}};
  CHECK(LOOM_DTYPE_COUNT == 7, "%d dtypes", (int)LOOM_DTYPE_COUNT);
  for (int i = 0; i < 7; i++) {
    loom_dtype d = table[i].dtype, parsed = LOOM_DTYPE_COUNT;
    CHECK(loom_dtype_size(d) == table[i].bytes, "%s: %zu bytes", table[i].name,
          loom_dtype_size(d));
    CHECK(strcmp(loom_dtype_name(d), table[i].name) == 0, "%s", loom_dtype_name(d));
    CHECK(loom_dtype_is_float(d) == table[i].is_float, "%s is_float", table[i].name);
    CHECK(loom_dtype_parse(table[i].name, &parsed) == LOOM_OK && parsed == d, "parse %s: %d",
          table[i].name, (int)parsed);
  }
  CHECK(loom_dtype_size(LOOM_DTYPE_COUNT) == 0 && loom_dtype_size((loom_dtype)-1) == 0,
        "size outside the enum");
  CHECK(strcmp(loom_dtype_name(LOOM_DTYPE_COUNT), "invalid") == 0, "%s",
        loom_dtype_name(LOOM_DTYPE_COUNT));
  float f = 1.5f;
  loom_buf b = loom_buf_host(&f, 3, LOOM_BFLOAT16);
  CHECK(loom_buf_bytes(b) == 6 && b.device.kind == LOOM_DEVICE_CPU, "buf bytes %zu",
        loom_buf_bytes(b));

  const char *const bad[] = {"float", "FLOAT32", "", "fp16", "bf16", "int32 ", "uint8x"};
  for (int i = 0; i < 7; i++) {
    loom_dtype out = LOOM_INT64;
    CHECK(loom_dtype_parse(bad[i], &out) == LOOM_ERR_ARG && out == LOOM_INT64, "'%s' accepted",
          bad[i]);
    char quoted[32];
    snprintf(quoted, sizeof quoted, "'%s'", bad[i]);
    CHECK_CONTAINS(loom_error_string(), quoted);
    CHECK_CONTAINS(loom_error_string(), "bfloat16");
  }
  loom_dtype out;
  CHECK(loom_dtype_parse(NULL, &out) == LOOM_ERR_ARG, "NULL name accepted");
}

/* Exact value of a float16 bit pattern, decoded independently of dtype.c. */
static double fp16_reference_value(uint16_t h) {
  int exponent = (h >> 10) & 31, mantissa = h & 1023;
  double v = exponent == 0    ? ldexp(mantissa, -24)
             : exponent == 31 ? (mantissa ? NAN : INFINITY)
                              : ldexp(1024 + mantissa, exponent - 25);
  return (h & 0x8000) ? -v : v;
}

static double bf16_reference_value(uint16_t h) {
  int exponent = (h >> 7) & 255, mantissa = h & 127;
  double v = exponent == 0     ? ldexp(mantissa, -133)
             : exponent == 255 ? (mantissa ? NAN : INFINITY)
                               : ldexp(128 + mantissa, exponent - 134);
  return (h & 0x8000) ? -v : v;
}

/* Round |x| to the nearest pattern of a 16-bit format whose positive patterns 0..inf are
 * monotonic in value; `inf_bits` counts as the next power of two above the largest finite
 * (IEEE overflow rule); ties go to the even pattern. */
static uint16_t reference_round(double x, double (*value)(uint16_t), uint16_t inf_bits,
                                double inf_as) {
  uint16_t sign = signbit(x) ? 0x8000 : 0;
  double a = fabs(x);
  if (a >= inf_as) return sign | inf_bits;
  uint16_t lo = 0, hi = inf_bits; /* value(lo) <= a < value(hi) */
  while (hi - lo > 1) {
    uint16_t mid = (uint16_t)((lo + hi) / 2);
    if (value(mid) <= a) lo = mid;
    else hi = mid;
  }
  double below = a - value(lo), above = (hi == inf_bits ? inf_as : value(hi)) - a;
  uint16_t pick = below < above ? lo : above < below ? hi : (lo & 1) ? hi : lo;
  return sign | pick;
}

static uint16_t bf16_reference(float x) {
  return reference_round(x, bf16_reference_value, 0x7f80, ldexp(1, 128));
}
static uint16_t fp16_reference(float x) {
  return reference_round(x, fp16_reference_value, 0x7c00, 65536.0);
}

static int bf16_is_nan(uint16_t h) { return (h & 0x7f80) == 0x7f80 && (h & 0x7f); }
static int fp16_is_nan(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff); }

/* Pattern `h` decoded to `f` (exact value `want`) and encoded back to `back`: the same bits, or
 * NaN to NaN. */
static int survives(uint16_t h, int h_is_nan, float f, double want, uint16_t back,
                    int back_is_nan) {
  if (h_is_nan) return isnan(f) && back_is_nan;
  return (double)f == want && !signbit(f) == !(h & 0x8000) && back == h;
}

static void test_dtype_16bit_exhaustive(void) {
  int bf16_wrong = 0, fp16_wrong = 0, first_bf16 = -1, first_fp16 = -1;
  for (uint32_t bits = 0; bits < 65536; bits++) {
    uint16_t h = (uint16_t)bits;
    float f = loom_bf16_to_float(h);
    uint16_t back = loom_float_to_bf16(f);
    if (!survives(h, bf16_is_nan(h), f, bf16_reference_value(h), back, bf16_is_nan(back)) &&
        bf16_wrong++ == 0)
      first_bf16 = (int)h;
    f = loom_fp16_to_float(h);
    back = loom_float_to_fp16(f);
    if (!survives(h, fp16_is_nan(h), f, fp16_reference_value(h), back, fp16_is_nan(back)) &&
        fp16_wrong++ == 0)
      first_fp16 = (int)h;
  }
  CHECK(bf16_wrong == 0, "%d bf16 patterns fail the round trip, first 0x%04x", bf16_wrong,
        first_bf16);
  CHECK(fp16_wrong == 0, "%d fp16 patterns fail the round trip, first 0x%04x", fp16_wrong,
        first_fp16);
}

static float float_of_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static void test_dtype_16bit_rounding(void) {
  static const struct {
    double value;
    uint16_t bf16, fp16;
  } cases[] = {
      {1.0, 0x3f80, 0x3c00},
      {1.0 + 0x1p-8, 0x3f80, 0x3c04},            /* bf16 halfway: down to even */
      {1.0 + 3 * 0x1p-9, 0x3f81, 0x3c06},        /* bf16 above halfway: up */
      {1.0 + 3 * 0x1p-8, 0x3f82, 0x3c0c},        /* bf16 halfway from odd: up to even */
      {1.0 + 0x1p-11, 0x3f80, 0x3c00},           /* fp16 halfway: down to even */
      {1.0 + 3 * 0x1p-11, 0x3f80, 0x3c02},       /* fp16 halfway from odd: up to even */
      {-2.5, 0xc020, 0xc100},
      {65504.0, 0x4780, 0x7bff},                 /* bf16: 65504 -> 65536 */
      {65519.0, 0x4780, 0x7bff},
      {65520.0, 0x4780, 0x7c00},                 /* fp16 overflow to inf */
      {-65520.0, 0xc780, 0xfc00},
      {0x1p-24, 0x3380, 0x0001},                 /* smallest fp16 subnormal */
      {0x1p-25, 0x3300, 0x0000},                 /* halfway to 0: even */
      {3 * 0x1p-25, 0x33c0, 0x0002},             /* 1.5 units: up to even 2 */
      {0x1p-14 - 0x1p-25, 0x3880, 0x0400},       /* rounds up into the normals */
      {0x1p-14, 0x3880, 0x0400},
      {1e-10, 0x2edc, 0x0000},
      {-0.0, 0x8000, 0x8000},
      {INFINITY, 0x7f80, 0x7c00},
      {-INFINITY, 0xff80, 0xfc00},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    float x = (float)cases[i].value;
    uint16_t b = loom_float_to_bf16(x), h = loom_float_to_fp16(x);
    CHECK(b == cases[i].bf16, "bf16(%.10g) = 0x%04x, want 0x%04x", (double)x, b, cases[i].bf16);
    CHECK(h == cases[i].fp16, "fp16(%.10g) = 0x%04x, want 0x%04x", (double)x, h, cases[i].fp16);
    CHECK(b == bf16_reference(x) && h == fp16_reference(x), "reference disagrees at %.10g",
          (double)x);
  }
  CHECK(bf16_is_nan(loom_float_to_bf16(NAN)) && fp16_is_nan(loom_float_to_fp16(NAN)), "NaN");
  CHECK(bf16_is_nan(loom_float_to_bf16(float_of_bits(0x7f800001))), "bf16 of a low-bit NaN");
  CHECK(fp16_is_nan(loom_float_to_fp16(float_of_bits(0xff800001))), "fp16 of a low-bit NaN");

  /* random floats against the reference: full range, halfway cases, and the fp16 range */
  loom_rng rng = input_rng(40);
  int bf16_wrong = 0, fp16_wrong = 0;
  uint32_t first_bf16 = 0, first_fp16 = 0;
  for (int i = 0; i < 400000; i++) {
    uint32_t u = loom_rng_u32(&rng);
    switch (i % 4) {
      case 1: u = (u & 0xffff0000u) | 0x8000u; break;                      /* bf16 tie */
      case 2: /* the float16 range, subnormals and overflow included */
        u = (u & 0x807fffffu) | ((100u + loom_rng_u32(&rng) % 46) << 23);
        break;
      case 3: /* float16 ties */
        u = (u & 0x807fe000u) | ((100u + loom_rng_u32(&rng) % 46) << 23) | 0x1000u;
        break;
    }
    float x = float_of_bits(u);
    if (isnan(x)) continue;
    if (loom_float_to_bf16(x) != bf16_reference(x) && bf16_wrong++ == 0) first_bf16 = u;
    if (loom_float_to_fp16(x) != fp16_reference(x) && fp16_wrong++ == 0) first_fp16 = u;
  }
  CHECK(bf16_wrong == 0, "%d bf16 roundings differ, first float bits 0x%08x", bf16_wrong,
        first_bf16);
  CHECK(fp16_wrong == 0, "%d fp16 roundings differ, first float bits 0x%08x", fp16_wrong,
        first_fp16);
}

/* The value loom_dtype_load must return after loom_dtype_store(value). */
static double stored_value(loom_dtype dtype, double value) {
  switch (dtype) {
    case LOOM_FLOAT32: return (float)value;
    case LOOM_FLOAT64: return value;
    case LOOM_BFLOAT16: return bf16_reference_value(bf16_reference((float)value));
    case LOOM_FLOAT16: return fp16_reference_value(fp16_reference((float)value));
    case LOOM_INT32:
    case LOOM_INT64: return trunc(value);
    case LOOM_UINT8: {
      double w = fmod(trunc(value), 256);
      return w < 0 ? w + 256 : w;
    }
    default: return NAN;
  }
}

static void test_dtype_load_store(void) {
  loom_rng rng = input_rng(41);
  enum { N = 64 };
  for (int d = 0; d < LOOM_DTYPE_COUNT; d++) {
    const loom_dtype dtype = (loom_dtype)d;
    const size_t bytes = loom_dtype_size(dtype);
    unsigned char buffer[N * 8], poison[N * 8];
    for (size_t i = 0; i < sizeof poison; i++) poison[i] = (unsigned char)loom_rng_u32(&rng);
    int wrong = 0, clobbered = 0;
    for (int trial = 0; trial < 200; trial++) {
      memcpy(buffer, poison, sizeof buffer);
      size_t index = loom_rng_below(&rng, N);
      double value;
      switch (dtype) {
        case LOOM_INT32: value = (double)(int32_t)loom_rng_u32(&rng) * 0.999; break;
        case LOOM_INT64: value = (double)((int64_t)(loom_rng_u64(&rng) >> 11) - (1ll << 52)); break;
        case LOOM_UINT8: value = (double)loom_rng_below(&rng, 2000) - 1000; break;
        default: value = loom_rng_normal(&rng) * ldexp(1, (int)loom_rng_below(&rng, 40) - 20);
      }
      loom_dtype_store(buffer, dtype, index, value);
      double loaded = loom_dtype_load(buffer, dtype, index), want = stored_value(dtype, value);
      if (loaded != want && wrong++ == 0)
        check_failed(__LINE__, "load(store(v))", "%s: stored %.17g loaded %.17g want %.17g",
                     loom_dtype_name(dtype), value, loaded, want);
      if (memcmp(buffer, poison, index * bytes) != 0 ||
          memcmp(buffer + (index + 1) * bytes, poison + (index + 1) * bytes,
                 (N - index - 1) * bytes) != 0)
        clobbered++;
    }
    CHECK(wrong == 0, "%s: %d wrong round trips", loom_dtype_name(dtype), wrong);
    CHECK(clobbered == 0, "%s: %d stores wrote outside their element", loom_dtype_name(dtype),
          clobbered);
  }
  uint8_t bytes[4] = {7, 7, 7, 7};
  loom_dtype_store(bytes, LOOM_UINT8, 0, 300);
  loom_dtype_store(bytes, LOOM_UINT8, 1, -1);
  loom_dtype_store(bytes, LOOM_UINT8, 2, 256);
  loom_dtype_store(bytes, LOOM_UINT8, 3, -257);
  CHECK(bytes[0] == 44 && bytes[1] == 255 && bytes[2] == 0 && bytes[3] == 255,
        "uint8 wrap: %u %u %u %u", bytes[0], bytes[1], bytes[2], bytes[3]);
  CHECK(loom_dtype_load(bytes, LOOM_UINT8, 1) == 255.0, "uint8 load");
  int32_t ints[2];
  loom_dtype_store(ints, LOOM_INT32, 0, 2.7);
  loom_dtype_store(ints, LOOM_INT32, 1, -2.7);
  CHECK(ints[0] == 2 && ints[1] == -2, "int32 truncation: %d %d", ints[0], ints[1]);
  uint16_t halves[2];
  loom_dtype_store(halves, LOOM_FLOAT16, 0, 65520.0);
  loom_dtype_store(halves, LOOM_BFLOAT16, 1, 1.0 + 0x1p-8);
  CHECK(halves[0] == 0x7c00 && isinf(loom_dtype_load(halves, LOOM_FLOAT16, 0)), "fp16 store");
  CHECK(halves[1] == 0x3f80 && loom_dtype_load(halves, LOOM_BFLOAT16, 1) == 1.0, "bf16 store");
}

int register_dtype_suite(void) {
  static const unit_test tests[] = {
      {"sizes and names", test_dtype_sizes_and_names},
      {"16-bit round trips (exhaustive)", test_dtype_16bit_exhaustive},
      {"16-bit rounding", test_dtype_16bit_rounding},
      {"load and store", test_dtype_load_store},
      {NULL, NULL}};
  return unit_add_suite("dtype", tests);
}
