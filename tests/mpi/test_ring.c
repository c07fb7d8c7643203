/* Ring attention (parallel/sequence/ring.h) against causal attention computed in double
 * precision on whole sequences: random shapes (odd contexts where the split allows them),
 * both splits, the ring in group order, in a shuffled order and as two rings over the even and
 * the odd ranks of one group (reversed), and one ring reused for a larger shape. Each rank's
 * output, log-sum-exp and gradients dQ, dK, dV equal the reference rows of its positions within
 * 1e-5 of the largest reference element of the tensor (float32 sums over at most 40 keys of terms below 1 in magnitude).
 * Bad shapes and rings are refused with their numbers. Inputs from the run's seed. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "parallel/sequence/ring.h"
#include "runtime/rng.h"

typedef struct {
  int B, T, H, hd;
} shape;

// Causal attention of qkv (B, T, 3, H, hd) in double: out (B, T, H, hd), lse (B, H, T), and
// dqkv from dout.
static void reference(const shape *s, const double *qkv, const double *dout, double *out,
                      double *lse, double *dqkv) {
  int T = s->T, H = s->H, hd = s->hd, d = H * hd;
  double scale = 1.0 / sqrt((double)hd), *p = malloc(sizeof(double) * (size_t)T);
  memset(dqkv, 0, sizeof(double) * (size_t)s->B * T * 3 * d);
  for (int b = 0; b < s->B; b++)
    for (int h = 0; h < H; h++)
      for (int i = 0; i < T; i++) {
        const double *q = qkv + ((size_t)b * T + i) * 3 * d + h * hd, *g = dout + ((size_t)b * T + i) * d + h * hd;
        double max = -INFINITY, sum = 0, D = 0;
        for (int j = 0; j <= i; j++) {
          const double *k = qkv + ((size_t)b * T + j) * 3 * d + d + h * hd;
          double dot = 0;
          for (int e = 0; e < hd; e++) dot += q[e] * k[e];
          p[j] = dot * scale;
          max = fmax(max, p[j]);
        }
        for (int j = 0; j <= i; j++) sum += p[j] = exp(p[j] - max);
        double *o = out + ((size_t)b * T + i) * d + h * hd;
        for (int e = 0; e < hd; e++) o[e] = 0;
        for (int j = 0; j <= i; j++) {
          p[j] /= sum;
          const double *v = qkv + ((size_t)b * T + j) * 3 * d + 2 * d + h * hd;
          for (int e = 0; e < hd; e++) o[e] += p[j] * v[e];
        }
        lse[((size_t)b * H + h) * T + i] = max + log(sum);
        for (int e = 0; e < hd; e++) D += g[e] * o[e];
        double *dq = dqkv + ((size_t)b * T + i) * 3 * d + h * hd;
        for (int j = 0; j <= i; j++) {
          const double *k = qkv + ((size_t)b * T + j) * 3 * d + d + h * hd, *v = k + d;
          double *dk = dqkv + ((size_t)b * T + j) * 3 * d + d + h * hd, *dv = dk + d, dp = 0;
          for (int e = 0; e < hd; e++) dp += g[e] * v[e];
          double ds = p[j] * (dp - D) * scale;
          for (int e = 0; e < hd; e++) dv[e] += p[j] * g[e], dq[e] += ds * k[e], dk[e] += ds * q[e];
        }
      }
  free(p);
}

static double largest(const double *x, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; i++) m = fmax(m, fabs(x[i]));
  return m;
}

// One case: the ring of `order` (R group ranks, NULL: the world in order) over the world, or
// `reuse` (a ring that already ran other shapes: its buffers grow).
static void run_case(check_state *st, const shape *s, loom_sp_split split, const int *order, int R,
                     uint64_t seed, const char *label, loom_ring_attention *reuse) {
  loom_group *world = loom_ctx_world(st->ctx);
  loom_ring_params rp = LOOM_RING_PARAMS_INIT;
  rp.group = world, rp.size = R, rp.order = order, rp.split = split;
  loom_ring_attention *ring = reuse;
  if (!ring) CHECK_OK(st, loom_ring_attention_create(&rp, &ring));
  int pos = loom_ring_attention_position(ring), Tl = s->T / R, d = s->H * s->hd;
  size_t n_qkv = (size_t)s->B * s->T * 3 * d, n_out = (size_t)s->B * s->T * d, n_lse = (size_t)s->B * s->H * s->T;
  double *qkv = malloc(sizeof(double) * n_qkv), *dout = malloc(sizeof(double) * n_out);
  double *out = malloc(sizeof(double) * n_out), *lse = malloc(sizeof(double) * n_lse);
  double *dqkv = malloc(sizeof(double) * n_qkv);
  for (size_t i = 0; i < n_qkv; i++) qkv[i] = input_value(LOOM_FLOAT32, seed, 0, i);
  for (size_t i = 0; i < n_out; i++) dout[i] = input_value(LOOM_FLOAT32, seed, 1, i);
  reference(s, qkv, dout, out, lse, dqkv);
  double tol_out = 1e-5 * largest(out, n_out), tol_lse = 1e-5 * largest(lse, n_lse);
  double tol_dqkv = 1e-5 * largest(dqkv, n_qkv);

  int *positions = malloc(sizeof(int) * (size_t)Tl);
  loom_sp_split_positions(split, s->T, R, pos, positions);
  size_t l_qkv = (size_t)s->B * Tl * 3 * d, l_out = (size_t)s->B * Tl * d, l_lse = (size_t)s->B * s->H * Tl;
  float *my_qkv = malloc(sizeof(float) * l_qkv), *my_dout = malloc(sizeof(float) * l_out);
  float *my_out = malloc(sizeof(float) * l_out), *my_lse = malloc(sizeof(float) * l_lse);
  float *my_dqkv = malloc(sizeof(float) * l_qkv);
  for (int b = 0; b < s->B; b++)
    for (int t = 0; t < Tl; t++) {
      size_t from = (size_t)b * s->T + positions[t], to = (size_t)b * Tl + t;
      for (int e = 0; e < 3 * d; e++) my_qkv[to * 3 * d + e] = (float)qkv[from * 3 * d + e];
      for (int e = 0; e < d; e++) my_dout[to * d + e] = (float)dout[from * d + e];
    }
  poison(my_out, sizeof(float) * l_out), poison(my_lse, sizeof(float) * l_lse);
  poison(my_dqkv, sizeof(float) * l_qkv);
  CHECK_OK(st, loom_ring_attention_forward(ring, s->B, Tl, s->H, s->hd, my_qkv, my_out, my_lse));
  CHECK_OK(st, loom_ring_attention_backward(ring, s->B, Tl, s->H, s->hd, my_qkv, my_out, my_lse,
                                            my_dout, my_dqkv));
  char what[160];
  for (int b = 0; b < s->B; b++)
    for (int t = 0; t < Tl; t++) {
      size_t from = (size_t)b * s->T + positions[t], to = (size_t)b * Tl + t;
      snprintf(what, sizeof what, "%s out (b %d, position %d)", label, b, positions[t]);
      for (int e = 0; e < d; e++) expect_near(st, what, (size_t)e, my_out[to * d + e], out[from * d + e], tol_out);
      snprintf(what, sizeof what, "%s dqkv (b %d, position %d)", label, b, positions[t]);
      for (int e = 0; e < 3 * d; e++)
        expect_near(st, what, (size_t)e, my_dqkv[to * 3 * d + e], dqkv[from * 3 * d + e], tol_dqkv);
      for (int h = 0; h < s->H; h++)
        expect_near(st, "lse", (size_t)h, my_lse[((size_t)b * s->H + h) * Tl + t],
                    lse[((size_t)b * s->H + h) * s->T + positions[t]], tol_lse);
    }
  loom_ring_stats stats;
  loom_ring_attention_stats(ring, &stats);
  if (reuse) goto done; /* its counts hold the earlier calls */
  st->checks++;
  double block = (double)s->B * Tl * 2 * d; /* forward, (R-1) + R backward */
  double want_sent = R > 1 ? block * (3.0 * R - 2) : 0;
  if (stats.elements_sent != want_sent || stats.forwards != 1 || stats.backwards != 1)
    st->failures++, fprintf(stderr, "rank %d: FAIL %s: %.0f elements sent (want %.0f), %lld forwards, "
                            "%lld backwards\n", st->rank, label, stats.elements_sent, want_sent,
                            (long long)stats.forwards, (long long)stats.backwards);
  st->checks++;
  if (stats.transfers != (R > 1 ? 3 * (R - 1) : 0) || stats.transfers_hidden > stats.transfers)
    st->failures++, fprintf(stderr, "rank %d: FAIL %s: %lld transfers (want %d), %lld hidden\n", st->rank,
                            label, (long long)stats.transfers, R > 1 ? 3 * (R - 1) : 0, (long long)stats.transfers_hidden);
  loom_ring_attention_destroy(ring);
done:
  free(qkv), free(dout), free(out), free(lse), free(dqkv), free(positions), free(my_qkv);
  free(my_dout), free(my_out), free(my_lse), free(my_dqkv);
}

static void expect_refused(check_state *st, loom_status s, const char *needle, const char *what) {
  st->checks++;
  if (s != LOOM_ERR_ARG || !strstr(loom_error_string(), needle))
    st->failures++, fprintf(stderr, "rank %d: FAIL %s: status %d, message '%s' (want '%s')\n",
                            st->rank, what, (int)s, loom_error_string(), needle);
}

int main(int argc, char **argv) {
  loom_config config = LOOM_CONFIG_INIT;
  check_state st = {0};
  int early = check_start(&st, &config, &argc, &argv, 4447u);
  if (early >= 0) return early;
  int p = st.size;
  loom_rng rng;
  loom_rng_init(&rng, st.seed, 0, 0);
  int *shuffled = malloc(sizeof(int) * (size_t)p), *half = malloc(sizeof(int) * (size_t)p);
  for (int c = 0; c < 6; c++) {
    loom_sp_split split = c % 2 ? LOOM_SP_CONTIGUOUS : LOOM_SP_ZIGZAG;
    int parts = split == LOOM_SP_ZIGZAG ? 2 * p : p;
    shape s = {.B = 1 + (int)(loom_rng_below(&rng, 2)), .H = 1 + (int)(loom_rng_below(&rng, 3)),
               .hd = 1 + (int)(loom_rng_below(&rng, 8))};
    s.T = parts * (1 + (int)loom_rng_below(&rng, split == LOOM_SP_ZIGZAG ? 3 : 5));
    if (c == 1 && p % 2) s.T = p * 3; /* an odd context, contiguous */
    const char *name = split == LOOM_SP_ZIGZAG ? "zigzag" : "contiguous";
    char label[96];
    snprintf(label, sizeof label, "%s ring in order (B %d T %d H %d hd %d)", name, s.B, s.T, s.H, s.hd);
    run_case(&st, &s, split, NULL, p, st.seed + (uint64_t)c, label, NULL);
    for (int i = 0; i < p; i++) shuffled[i] = i; /* the same permutation on every rank */
    for (int i = p - 1; i > 0; i--) {
      int j = (int)loom_rng_below(&rng, (uint64_t)(i + 1)), keep = shuffled[i];
      shuffled[i] = shuffled[j], shuffled[j] = keep;
    }
    snprintf(label, sizeof label, "%s ring shuffled (T %d)", name, s.T);
    run_case(&st, &s, split, shuffled, p, st.seed + 100u + (uint64_t)c, label, NULL);
    if (p >= 4 && p % 2 == 0) { /* two rings: the even ranks, and the odd ones reversed */
      int R = p / 2, odd = st.rank % 2;
      for (int i = 0; i < R; i++) half[i] = odd ? p - 1 - 2 * i : 2 * i;
      shape hs = s;
      hs.T = (split == LOOM_SP_ZIGZAG ? 2 * R : R) * 2;
      snprintf(label, sizeof label, "%s ring of the %s ranks (T %d)", name, odd ? "odd" : "even", hs.T);
      run_case(&st, &hs, split, half, R, st.seed + 200u + (uint64_t)c, label, NULL);
    }
  }
  loom_group *world = loom_ctx_world(st.ctx);
  loom_ring_params rp = LOOM_RING_PARAMS_INIT;
  rp.group = world;
  loom_ring_attention *ring = NULL;
  CHECK_OK(&st, loom_ring_attention_create(&rp, &ring));
  shape small = {.B = 1, .T = 2 * p, .H = 1, .hd = 3}, large = {.B = 2, .T = 6 * p, .H = 3, .hd = 5};
  run_case(&st, &small, LOOM_SP_ZIGZAG, NULL, p, st.seed + 300u, "one ring, a small shape", ring);
  run_case(&st, &large, LOOM_SP_ZIGZAG, NULL, p, st.seed + 301u, "the same ring, a larger shape", ring);
  float x[64] = {0};
  expect_refused(&st, loom_ring_attention_forward(ring, 1, 3, 1, 1, x, x + 16, x + 32),
                 "must be a multiple of", "zigzag with an odd T_local");
  loom_ring_attention_destroy(ring);
  expect_refused(&st, loom_sp_split_check(LOOM_SP_ZIGZAG, 6, 4), "context (6) must be a multiple of 8",
                 "context 6 over 4 zigzag ranks");
  expect_refused(&st, loom_sp_split_check(LOOM_SP_CONTIGUOUS, 3, 4), "context (3) must be a multiple of 4",
                 "sp larger than the sequence");
  int repeated[2] = {0, 0};
  rp.order = repeated, rp.size = 2;
  if (p >= 2)
    expect_refused(&st, loom_ring_attention_create(&rp, &ring), "outside [0, ", "a repeated ring entry");
  loom_sp_split split;
  expect_refused(&st, loom_sp_split_parse("diagonal", &split), "zigzag or contiguous", "an unknown split");
  free(shuffled), free(half);
  int code = check_finish(&st, "test_ring");
  loom_finalize(st.ctx);
  return code;
}
