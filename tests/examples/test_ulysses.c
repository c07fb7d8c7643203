/* Ulysses attention (examples/gpt/gpt_ulysses.h) on the world as the SP group: each rank holds
 * its T / sp tokens of every sequence; its output and its input gradients equal, bit for bit,
 * the rows of the local causal attention run on whole sequences by one rank (each head's
 * products have the same shapes and inputs either way). Random Q, K, V and output gradients
 * from the run's seed; heads or context not divisible by sp are refused with the numbers. */
#include <stdlib.h>
#include <string.h>

#include "../mpi/check.h"
#include "../../examples/gpt/gpt_ulysses.h"

enum { B = 2, T = 12, H = 4, HD = 4, D = H * HD };

// rows [first, first + rows) of every sequence of x (B, T, width) into out (B, rows, width)
static void take_rows(const float *x, int width, int first, int rows, float *out) {
  for (int b = 0; b < B; b++)
    memcpy(out + (size_t)b * rows * width, x + ((size_t)b * T + first) * width, sizeof(float) * (size_t)rows * width);
}

static void expect_same(check_state *st, const char *what, const float *got, const float *want, size_t n) {
  for (size_t i = 0; i < n; i++) expect_near(st, what, i, got[i], want[i], 0);
}

int main(int argc, char **argv) {
  loom_config config = LOOM_CONFIG_INIT;
  check_state st = {0};
  int early = check_start(&st, &config, &argc, &argv, 3571u);
  if (early >= 0) return early;
  loom_group *world = loom_ctx_world(st.ctx);
  int p = st.size;
  if (gpt_ulysses_check(p, H, T) != LOOM_OK) { /* the shape of this test needs p | 4 and p | 12 */
    if (st.rank == 0) printf("skipped: %s\n", loom_error_string());
    loom_finalize(st.ctx);
    return 77;
  }
  int rows = T / p, first = st.rank * rows;
  size_t full_qkv = (size_t)B * T * 3 * D, full_out = (size_t)B * T * D;
  float *qkv = malloc(sizeof(float) * full_qkv), *dout = malloc(sizeof(float) * full_out);
  float *out = malloc(sizeof(float) * full_out), *dqkv = malloc(sizeof(float) * full_qkv);
  float *p_full = malloc(sizeof(float) * gpt_attention_local.saved_floats(NULL, B, T, D, H));
  for (size_t i = 0; i < full_qkv; i++) qkv[i] = (float)input_value(LOOM_FLOAT32, st.seed, 0, i);
  for (size_t i = 0; i < full_out; i++) dout[i] = (float)input_value(LOOM_FLOAT32, st.seed, 1, i);
  gpt_attention_local.forward(NULL, qkv, B, T, D, H, out, p_full);
  gpt_attention_local.backward(NULL, dout, qkv, p_full, B, T, D, H, dqkv);

  gpt_ulysses *u;
  CHECK_OK(&st, gpt_ulysses_create(world, NULL, &u));
  gpt_attention a = gpt_ulysses_attention(u);
  size_t local_qkv = (size_t)B * rows * 3 * D, local_out = (size_t)B * rows * D;
  float *my_qkv = malloc(sizeof(float) * local_qkv), *my_dout = malloc(sizeof(float) * local_out);
  float *my_out = malloc(sizeof(float) * local_out), *my_dqkv = malloc(sizeof(float) * local_qkv);
  float *saved = malloc(sizeof(float) * a.saved_floats(a.user, B, rows, D, H));
  float *want_out = malloc(sizeof(float) * local_out), *want_dqkv = malloc(sizeof(float) * local_qkv);
  take_rows(qkv, 3 * D, first, rows, my_qkv), take_rows(dout, D, first, rows, my_dout);
  take_rows(out, D, first, rows, want_out), take_rows(dqkv, 3 * D, first, rows, want_dqkv);
  poison(my_out, sizeof(float) * local_out), poison(my_dqkv, sizeof(float) * local_qkv);
  a.forward(a.user, my_qkv, B, rows, D, H, my_out, saved);
  CHECK_OK(&st, gpt_ulysses_status(u));
  expect_same(&st, "Ulysses attention output", my_out, want_out, local_out);
  a.backward(a.user, my_dout, my_qkv, saved, B, rows, D, H, my_dqkv);
  CHECK_OK(&st, gpt_ulysses_status(u));
  expect_same(&st, "Ulysses attention dqkv", my_dqkv, want_dqkv, local_qkv);

  st.checks++;
  if (gpt_ulysses_check(3, 4, 12) != LOOM_ERR_ARG || !strstr(loom_error_string(), "sp=3 must divide the heads (4)"))
    st.failures++, fprintf(stderr, "rank %d: FAIL sp 3 with 4 heads: %s\n", st.rank, loom_error_string());
  gpt_ulysses_destroy(u);
  free(qkv), free(dout), free(out), free(dqkv), free(p_full), free(my_qkv), free(my_dout);
  free(my_out), free(my_dqkv), free(saved), free(want_out), free(want_dqkv);
  int code = check_finish(&st, "test_ulysses");
  loom_finalize(st.ctx);
  return code;
}
