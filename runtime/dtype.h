/* Element types and buffer views shared by every module.
 * A loom_buf never owns memory: it names a pointer, an element count, a dtype and the device
 * the memory lives on, so the backend of a collective follows from the buffer. */
#ifndef LOOM_RUNTIME_DTYPE_H
#define LOOM_RUNTIME_DTYPE_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LOOM_DTYPE_MAP(X)            \
  X(FLOAT32, float32, 4)             \
  X(FLOAT64, float64, 8)             \
  X(BFLOAT16, bfloat16, 2)           \
  X(FLOAT16, float16, 2)             \
  X(INT32, int32, 4)                 \
  X(INT64, int64, 8)                 \
  X(UINT8, uint8, 1)

typedef enum {
#define LOOM_DTYPE_ENUM(upper, lower, bytes) LOOM_##upper,
  LOOM_DTYPE_MAP(LOOM_DTYPE_ENUM)
#undef LOOM_DTYPE_ENUM
  LOOM_DTYPE_COUNT
} loom_dtype;

/* Bytes per element; 0 for a value outside the enum. */
size_t loom_dtype_size(loom_dtype dtype);
/* "float32", "bfloat16", ...; "invalid" outside the enum. */
const char *loom_dtype_name(loom_dtype dtype);
/* Parses a dtype name; LOOM_ERR_ARG listing the accepted names otherwise. */
loom_status loom_dtype_parse(const char *name, loom_dtype *out);
int loom_dtype_is_float(loom_dtype dtype);

/* Where memory lives. CUDA buffers are rejected with LOOM_ERR_UNSUPPORTED until the NCCL
 * backend is built. */
typedef enum { LOOM_DEVICE_CPU = 0, LOOM_DEVICE_CUDA = 1 } loom_device_kind;
typedef struct {
  loom_device_kind kind;
  int ordinal; /* CUDA device ordinal; 0 for CPU */
} loom_device;

typedef struct {
  void *ptr;
  size_t count; /* elements, not bytes */
  loom_dtype dtype;
  loom_device device;
} loom_buf;

/* A host-memory view. */
static inline loom_buf loom_buf_host(void *ptr, size_t count, loom_dtype dtype) {
  loom_buf b = {ptr, count, dtype, {LOOM_DEVICE_CPU, 0}};
  return b;
}
static inline size_t loom_buf_bytes(loom_buf b) { return b.count * loom_dtype_size(b.dtype); }

/* Round-to-nearest-even conversions for the 16-bit float formats (NaN stays NaN). */
uint16_t loom_float_to_bf16(float value);
float loom_bf16_to_float(uint16_t bits);
uint16_t loom_float_to_fp16(float value);
float loom_fp16_to_float(uint16_t bits);

/* Element i of a buffer of any dtype as a double, and the reverse (rounded to the dtype,
 * integers converted with C semantics, uint8 taken modulo 256). Used by references and by
 * the 16-bit reduction path. */
double loom_dtype_load(const void *ptr, loom_dtype dtype, size_t index);
void loom_dtype_store(void *ptr, loom_dtype dtype, size_t index, double value);

#ifdef __cplusplus
}
#endif
#endif
