/* ISA-L Reed-Solomon (see erasure.h). Encoding: ec_init_tables on the parity rows of a Cauchy
 * matrix, then ec_encode_data. Rebuilding: take k surviving rows of the (k + m) x k generator,
 * invert that k x k matrix, and the rows of the inverse for the lost data fragments give the
 * decoding coefficients (applied to the k survivors with ec_encode_data). */
#include "checkpoint/erasure.h"

#include <stdlib.h>
#include <string.h>

#ifdef LOOM_HAVE_ISAL
#include <isa-l/erasure_code.h>
#endif

int loom_ec_available(void) {
#ifdef LOOM_HAVE_ISAL
  return 1;
#else
  return 0;
#endif
}

static loom_status check_shape(const char *call, int k, int m) {
  if (k < 1 || m < 0 || k + m > LOOM_EC_MAX_FRAGMENTS)
    return loom_error_set(LOOM_ERR_ARG, "%s: k=%d, m=%d; need k >= 1, m >= 0 and k + m <= %d",
                          call, k, m, LOOM_EC_MAX_FRAGMENTS);
#ifndef LOOM_HAVE_ISAL
  return loom_error_set(LOOM_ERR_UNSUPPORTED, "%s: this build has no ISA-L; install libisal-dev "
                        "and rebuild", call);
#else
  return LOOM_OK;
#endif
}

#ifdef LOOM_HAVE_ISAL
/* ec_encode_data over any length: the code works byte by byte, so pieces of at most 1 GiB
 * (ISA-L takes an int length) give the same bytes. */
static void encode_pieces(size_t len, int k, int rows, unsigned char *tables, const uint8_t *const *in,
                          uint8_t **out) {
  enum { PIECE = 1 << 30 };
  for (size_t done = 0; done < len; done += PIECE) {
    unsigned char *sources[LOOM_EC_MAX_FRAGMENTS], *targets[LOOM_EC_MAX_FRAGMENTS];
    for (int j = 0; j < k; j++) sources[j] = (unsigned char *)in[j] + done;
    for (int i = 0; i < rows; i++) targets[i] = out[i] + done;
    ec_encode_data((int)(len - done < PIECE ? len - done : PIECE), k, rows, tables, sources, targets);
  }
}
#endif

loom_status loom_ec_encode(int k, int m, size_t len, const uint8_t *const *data, uint8_t **parity) {
  LOOM_CHECK(check_shape("loom_ec_encode", k, m));
#ifdef LOOM_HAVE_ISAL
  if (m == 0 || len == 0) return LOOM_OK;
  int rows = k + m;
  unsigned char *matrix = malloc((size_t)rows * k), *tables = malloc(32 * (size_t)k * m);
  if (!matrix || !tables) {
    free(matrix);
    free(tables);
    return loom_error_set(LOOM_ERR_NOMEM, "loom_ec_encode tables (k=%d, m=%d)", k, m);
  }
  gf_gen_cauchy1_matrix(matrix, rows, k);
  ec_init_tables(k, m, &matrix[k * k], tables);
  encode_pieces(len, k, m, tables, data, parity);
  free(matrix);
  free(tables);
#endif
  return LOOM_OK;
}

loom_status loom_ec_rebuild(int k, int m, size_t len, const uint8_t *const *fragments,
                            uint8_t **rebuilt) {
  LOOM_CHECK(check_shape("loom_ec_rebuild", k, m));
#ifdef LOOM_HAVE_ISAL
  int rows = k + m, survivors[LOOM_EC_MAX_FRAGMENTS], lost[LOOM_EC_MAX_FRAGMENTS];
  int survivor_count = 0, lost_count = 0;
  for (int i = 0; i < rows && survivor_count < k; i++)
    if (fragments[i]) survivors[survivor_count++] = i;
  for (int j = 0; j < k; j++)
    if (!fragments[j]) lost[lost_count++] = j;
  if (survivor_count < k)
    return loom_error_set(LOOM_ERR_CORRUPT, "erasure rebuild: %d of %d fragments survive, %d are "
                          "needed (more than m=%d lost)", survivor_count, rows, k, m);
  if (lost_count == 0 || len == 0) return LOOM_OK;
  unsigned char *matrix = malloc((size_t)rows * k), *chosen = malloc((size_t)k * k),
                *inverse = malloc((size_t)k * k), *decode = malloc((size_t)lost_count * k),
                *tables = malloc(32 * (size_t)k * lost_count);
  loom_status status = LOOM_OK;
  if (!matrix || !chosen || !inverse || !decode || !tables) {
    status = loom_error_set(LOOM_ERR_NOMEM, "erasure rebuild tables (k=%d, m=%d)", k, m);
    goto done;
  }
  gf_gen_cauchy1_matrix(matrix, rows, k);
  for (int r = 0; r < k; r++) memcpy(&chosen[r * k], &matrix[survivors[r] * k], (size_t)k);
  if (gf_invert_matrix(chosen, inverse, k) != 0) { /* a Cauchy matrix's k rows are invertible */
    status = loom_error_set(LOOM_ERR_STATE, "erasure rebuild: singular decoding matrix");
    goto done;
  }
  /* data = inverse * survivors, so lost data fragment j is row j of the inverse. */
  for (int i = 0; i < lost_count; i++) memcpy(&decode[i * k], &inverse[lost[i] * k], (size_t)k);
  const uint8_t *sources[LOOM_EC_MAX_FRAGMENTS];
  uint8_t *targets[LOOM_EC_MAX_FRAGMENTS];
  for (int r = 0; r < k; r++) sources[r] = fragments[survivors[r]];
  for (int i = 0; i < lost_count; i++) targets[i] = rebuilt[lost[i]];
  ec_init_tables(k, lost_count, decode, tables);
  encode_pieces(len, k, lost_count, tables, sources, targets);
done:
  free(matrix);
  free(chosen);
  free(inverse);
  free(decode);
  free(tables);
  return status;
#else
  return LOOM_OK;
#endif
}
