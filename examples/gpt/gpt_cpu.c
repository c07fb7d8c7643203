/* GPT-2 in float32 on the CPU (see gpt_cpu.h). The formulas are those of gpt_ref.c; the
 * matrix products go to OpenBLAS. */
#include "gpt_cpu.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  const float *x;                   /* input (N, d), the caller's */
  float *ln1, *mean1, *rstd1;       /* (N, d), (N), (N) */
  float *qkv, *saved, *att;         /* (N, 3d), attention's, (N, d) */
  float *x2, *ln2, *mean2, *rstd2;  /* x + proj(att) (N, d); LayerNorm 2 */
  float *fc, *gelu;                 /* (N, 4d) before and after GELU */
  /* kept by backward-input for backward-weight: gradients of each product's output and of
   * each LayerNorm's output */
  float *d_out, *d_fc, *d_ln2, *d_x2, *d_qkv, *d_ln1;
} block_buffers;

struct gpt_cpu {
  gpt_layout layout;
  gpt_attention attention;
  int B, T;
  int *positions;        /* (T) position of each of the T tokens: 0 .. T-1 unless sequence
                            parallelism gives this rank other parts of the sequence */
  size_t N;
  block_buffers *blocks;
  float *lnf, *meanf, *rstdf, *logits, *d_lnf; /* head: (N, d), (N), (N), (N, V), (N, d) */
  const float *head_x;
  float *scratch;        /* (N, 4d) */
  float *residuals;      /* gpt_cpu_train_step's x_0 .. x_L (L + 1, N, d) */
  float *residual_grads; /* and its two gradient buffers (2, N, d) */
  float *arena;
  size_t block_floats, head_floats;
};

/* C (m, n) = op(A) op(B) + beta C, row-major. */
static void gemm(int trans_a, int trans_b, int m, int n, int k, const float *a, int lda,
                 const float *b, int ldb, float beta, float *c, int ldc) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
}

/* y (N, out) = x (N, in) W^T + b */
static void linear_forward(const float *x, const float *w, const float *b, size_t n, int in,
                           int out, float *y) {
  for (size_t r = 0; r < n; r++) memcpy(y + r * out, b, sizeof(float) * (size_t)out);
  gemm(0, 1, (int)n, out, in, x, in, w, in, 1.0f, y, out);
}

/* dW (out, in) += dy^T x, db += column sums of dy */
static void linear_backward_weight(const float *dy, const float *x, size_t n, int in, int out,
                                   float *dw, float *db) {
  gemm(1, 0, out, in, (int)n, dy, out, x, in, 1.0f, dw, in);
  for (size_t r = 0; r < n; r++)
    for (int o = 0; o < out; o++) db[o] += dy[r * out + o];
}

/* tanh(u) = 1 - 2 / (e^(2u) + 1), with e^x = 2^n e^r (n = round(x log2 e), |r| <= ln2 / 2,
 * degree-6 Taylor polynomial), u clamped to [-9, 9] (tanh(9) = 1 - 3e-8). Within 2.1e-7 of
 * tanh in absolute terms over all u (tanhf: 1e-7), which is what GELU needs: it uses 1 + t
 * and 1 - t^2. Branch-free so that the loops below vectorize (glibc's tanhf took a quarter
 * of the CPU step). */
static inline float tanh_approx(float u) {
  float x = 2.0f * (u > 9.0f ? 9.0f : u < -9.0f ? -9.0f : u);
  float n = (x * 1.44269504f + 12582912.0f) - 12582912.0f; /* round to nearest */
  float r = x - n * 0.693145752f - n * 1.42860677e-06f;      /* ln 2 in two parts */
  float p = 1.0f + r * (1.0f + r * (0.5f + r * (0.166666672f + r * (0.0416666679f +
                                                 r * (0.00833333377f + r * 0.00138888892f)))));
  int32_t bits = ((int32_t)n + 127) << 23;
  float scale;
  memcpy(&scale, &bits, sizeof scale);
  return 1.0f - 2.0f / (p * scale + 1.0f);
}

/* Built for AVX-512, AVX2 and baseline x86-64; the loader picks one (gcc target_clones). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTOR_CLONES
#endif

static const float kGeluC = 0.7978845608f; /* sqrt(2 / pi) */

/* GPT-2's tanh GELU: y = v/2 (1 + tanh(c (v + 0.044715 v^3))), c = sqrt(2/pi). */
VECTOR_CLONES static void gelu_forward(const float *v, size_t n, float *y) {
  for (size_t i = 0; i < n; i++)
    y[i] = 0.5f * v[i] * (1.0f + tanh_approx(kGeluC * (v[i] + 0.044715f * v[i] * v[i] * v[i])));
}

/* dy *= GELU'(v) = (1 + t)/2 + v/2 (1 - t^2) c (1 + 3 0.044715 v^2). */
VECTOR_CLONES static void gelu_backward(const float *v, size_t n, float *dy) {
  for (size_t i = 0; i < n; i++) {
    float x = v[i], t = tanh_approx(kGeluC * (x + 0.044715f * x * x * x));
    dy[i] *= 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * kGeluC * (1.0f + 3.0f * 0.044715f * x * x);
  }
}

static void layernorm_forward(const float *x, const float *w, const float *b, size_t n, int d,
                              float *y, float *mean, float *rstd) {
  for (size_t r = 0; r < n; r++) {
    const float *xr = x + r * d;
    float m = 0, v = 0;
    for (int i = 0; i < d; i++) m += xr[i];
    m /= (float)d;
    for (int i = 0; i < d; i++) v += (xr[i] - m) * (xr[i] - m);
    float s = 1.0f / sqrtf(v / (float)d + 1e-5f);
    for (int i = 0; i < d; i++) y[r * d + i] = (xr[i] - m) * s * w[i] + b[i];
    mean[r] = m, rstd[r] = s;
  }
}

/* dx (+= when accumulate, else =) from dy through the normalisation (weights w). */
static void layernorm_backward_input(const float *dy, const float *x, const float *w,
                                     const float *mean, const float *rstd, size_t n, int d,
                                     float *dx, int accumulate) {
  for (size_t r = 0; r < n; r++) {
    const float *xr = x + r * d, *g = dy + r * d;
    float mean_g = 0, mean_gx = 0;
    for (int i = 0; i < d; i++) {
      float norm = (xr[i] - mean[r]) * rstd[r];
      mean_g += g[i] * w[i], mean_gx += g[i] * w[i] * norm;
    }
    mean_g /= (float)d, mean_gx /= (float)d;
    for (int i = 0; i < d; i++) {
      float norm = (xr[i] - mean[r]) * rstd[r];
      float v = rstd[r] * (g[i] * w[i] - mean_g - norm * mean_gx);
      dx[r * d + i] = accumulate ? dx[r * d + i] + v : v;
    }
  }
}

static void layernorm_backward_weight(const float *dy, const float *x, const float *mean,
                                      const float *rstd, size_t n, int d, float *dw, float *db) {
  for (size_t r = 0; r < n; r++)
    for (int i = 0; i < d; i++) {
      float g = dy[r * d + i];
      dw[i] += g * (x[r * d + i] - mean[r]) * rstd[r], db[i] += g;
    }
}


/* ---- local causal attention ---- */

static size_t local_saved(void *user, int B, int T, int d, int H) {
  (void)user, (void)d;
  return (size_t)B * H * T * T;
}

static void local_forward(void *user, const float *qkv, int B, int T, int d, int H, float *out,
                          float *p) {
  (void)user;
  int hs = d / H, ld = 3 * d;
  float scale = 1.0f / sqrtf((float)hs);
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++) {
      const float *q = qkv + (size_t)b * T * ld + h * hs, *k = q + d, *v = q + 2 * d;
      float *s = p + ((size_t)b * H + h) * T * T;
      gemm(0, 1, T, T, hs, q, ld, k, ld, 0.0f, s, T); /* (T, T) = Q K^T */
      for (int t = 0; t < T; t++) {
        float *row = s + (size_t)t * T, max = -INFINITY, sum = 0;
        for (int j = 0; j <= t; j++) max = fmaxf(max, row[j] * scale);
        for (int j = 0; j <= t; j++) sum += row[j] = expf(row[j] * scale - max);
        for (int j = 0; j < T; j++) row[j] = j <= t ? row[j] / sum : 0.0f;
      }
      gemm(0, 0, T, hs, T, s, T, v, ld, 0.0f, out + (size_t)b * T * d + h * hs, d); /* P V */
    }
}

static void local_backward(void *user, const float *dout, const float *qkv, const float *p,
                           int B, int T, int d, int H, float *dqkv) {
  (void)user;
  int hs = d / H, ld = 3 * d;
  float scale = 1.0f / sqrtf((float)hs);
  float *ds = malloc(sizeof(float) * (size_t)T * T);
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++) {
      const float *q = qkv + (size_t)b * T * ld + h * hs, *k = q + d, *v = q + 2 * d;
      const float *pr = p + ((size_t)b * H + h) * T * T, *go = dout + (size_t)b * T * d + h * hs;
      float *dq = dqkv + (size_t)b * T * ld + h * hs, *dk = dq + d, *dv = dq + 2 * d;
      gemm(1, 0, T, hs, T, pr, T, go, d, 0.0f, dv, ld);   /* dV = P^T dO */
      gemm(0, 1, T, T, hs, go, d, v, ld, 0.0f, ds, T);    /* dP = dO V^T */
      for (int t = 0; t < T; t++) {                       /* dS = P (dP - sum(P dP)) scale */
        float *row = ds + (size_t)t * T, dot = 0;
        const float *prow = pr + (size_t)t * T;
        for (int j = 0; j <= t; j++) dot += prow[j] * row[j];
        for (int j = 0; j < T; j++) row[j] = j <= t ? prow[j] * (row[j] - dot) * scale : 0.0f;
      }
      gemm(0, 0, T, hs, T, ds, T, k, ld, 0.0f, dq, ld);   /* dQ = dS K */
      gemm(1, 0, T, hs, T, ds, T, q, ld, 0.0f, dk, ld);   /* dK = dS^T Q */
    }
  free(ds);
}

const gpt_attention gpt_attention_local = {local_saved, local_forward, local_backward, NULL};

/* ---- the model ---- */

loom_status gpt_cpu_create(const gpt_layout *layout, int B, int T, const gpt_attention *attention,
                           gpt_cpu **out) {
  return gpt_cpu_create_part(layout, B, T, attention, 0, layout->shape.layers, 1, out);
}

loom_status gpt_cpu_create_part(const gpt_layout *layout, int B, int T, const gpt_attention *attention,
                                int first_block, int blocks, int head, gpt_cpu **out) {
  const gpt_shape *s = &layout->shape;
  if (B < 1 || T < 1 || T > s->context)
    return loom_error_set(LOOM_ERR_ARG, "gpt_cpu_create: B=%d must be >= 1 and T=%d in [1, %d] "
                          "(the context)", B, T, s->context);
  if (first_block < 0 || blocks < 0 || first_block + blocks > s->layers)
    return loom_error_set(LOOM_ERR_ARG, "gpt_cpu_create: blocks [%d, %d) outside the model's %d",
                          first_block, first_block + blocks, s->layers);
  int whole = first_block == 0 && blocks == s->layers && head;
  gpt_cpu *m = calloc(1, sizeof *m);
  if (!m) return loom_error_set(LOOM_ERR_NOMEM, "allocating the GPT model");
  m->layout = *layout;
  m->attention = attention ? *attention : gpt_attention_local;
  m->B = B, m->T = T, m->N = (size_t)B * T;
  m->positions = malloc(sizeof(int) * (size_t)T);
  if (!m->positions) {
    free(m);
    return loom_error_set(LOOM_ERR_NOMEM, "allocating the GPT model");
  }
  for (int t = 0; t < T; t++) m->positions[t] = t;
  size_t N = m->N, d = (size_t)s->width;
  size_t saved = m->attention.saved_floats(m->attention.user, B, T, s->width, s->heads);
  /* per block: ln1, att, x2, ln2, d_out, d_ln2, d_x2, d_ln1 (N d each); qkv, d_qkv (3 N d);
   * fc, gelu, d_fc (4 N d); 4 row statistics; attention's own */
  m->block_floats = 8 * N * d + 6 * N * d + 12 * N * d + 4 * N + saved;
  m->head_floats = 2 * N * d + 2 * N + N * (size_t)s->vocab;
  size_t total = m->block_floats * (size_t)blocks + (head ? m->head_floats : 0) + 4 * N * d +
                 (whole ? ((size_t)s->layers + 3) * N * d : 0);
  m->arena = malloc(sizeof(float) * total);
  m->blocks = calloc((size_t)s->layers, sizeof *m->blocks);
  if (!m->arena || !m->blocks) {
    gpt_cpu_destroy(m);
    return loom_error_set(LOOM_ERR_NOMEM, "GPT activations: %zu MB for B=%d T=%d",
                          total * sizeof(float) >> 20, B, T);
  }
  float *at = m->arena;
#define TAKE(n) (at += (n), at - (n))
  for (int l = first_block; l < first_block + blocks; l++) {
    block_buffers *k = &m->blocks[l];
    k->ln1 = TAKE(N * d), k->mean1 = TAKE(N), k->rstd1 = TAKE(N), k->qkv = TAKE(3 * N * d);
    k->saved = TAKE(saved), k->att = TAKE(N * d), k->x2 = TAKE(N * d), k->ln2 = TAKE(N * d);
    k->mean2 = TAKE(N), k->rstd2 = TAKE(N), k->fc = TAKE(4 * N * d), k->gelu = TAKE(4 * N * d);
    k->d_out = TAKE(N * d), k->d_fc = TAKE(4 * N * d), k->d_ln2 = TAKE(N * d);
    k->d_x2 = TAKE(N * d), k->d_qkv = TAKE(3 * N * d), k->d_ln1 = TAKE(N * d);
  }
  if (head) {
    m->lnf = TAKE(N * d), m->meanf = TAKE(N), m->rstdf = TAKE(N);
    m->logits = TAKE(N * (size_t)s->vocab), m->d_lnf = TAKE(N * d);
  }
  m->scratch = TAKE(4 * N * d);
  if (whole) m->residuals = TAKE(((size_t)s->layers + 1) * N * d), m->residual_grads = TAKE(2 * N * d);
#undef TAKE
  *out = m;
  return LOOM_OK;
}

void gpt_cpu_destroy(gpt_cpu *m) {
  if (!m) return;
  free(m->arena), free(m->blocks), free(m->positions), free(m);
}

loom_status gpt_cpu_set_positions(gpt_cpu *m, const int *positions) {
  for (int t = 0; t < m->T; t++)
    if (positions[t] < 0 || positions[t] >= m->layout.shape.context)
      return loom_error_set(LOOM_ERR_ARG, "GPT: token %d of each sequence at position %d, outside "
                            "the context of %d", t, positions[t], m->layout.shape.context);
  memcpy(m->positions, positions, sizeof(int) * (size_t)m->T);
  return LOOM_OK;
}

size_t gpt_cpu_block_activation_bytes(const gpt_cpu *m) { return m->block_floats * sizeof(float); }
size_t gpt_cpu_head_activation_bytes(const gpt_cpu *m) { return m->head_floats * sizeof(float); }

#define PARAM(p, layer, which) ((p) + m->layout.tensor[gpt_tensor_index(&m->layout, layer, which)].offset)

void gpt_embed_forward(gpt_cpu *m, const float *params, const int *tokens, float *x) {
  int d = m->layout.shape.width;
  const float *wte = PARAM(params, 0, GPT_WTE), *wpe = PARAM(params, 0, GPT_WPE);
  for (size_t r = 0; r < m->N; r++) {
    const float *e = wte + (size_t)tokens[r] * d, *pos = wpe + (size_t)m->positions[r % (size_t)m->T] * d;
    for (int i = 0; i < d; i++) x[r * d + i] = e[i] + pos[i];
  }
}

void gpt_embed_backward_weight(gpt_cpu *m, const int *tokens, const float *dx, float *grads) {
  int d = m->layout.shape.width;
  float *wte = PARAM(grads, 0, GPT_WTE), *wpe = PARAM(grads, 0, GPT_WPE);
  for (size_t r = 0; r < m->N; r++) {
    float *e = wte + (size_t)tokens[r] * d, *pos = wpe + (size_t)m->positions[r % (size_t)m->T] * d;
    for (int i = 0; i < d; i++) e[i] += dx[r * d + i], pos[i] += dx[r * d + i];
  }
}

void gpt_block_forward(gpt_cpu *m, int l, const float *params, const float *x, float *out) {
  const gpt_shape *s = &m->layout.shape;
  block_buffers *k = &m->blocks[l];
  size_t N = m->N, nd = N * (size_t)s->width;
  int d = s->width;
  k->x = x;
  layernorm_forward(x, PARAM(params, l, GPT_LN1_W), PARAM(params, l, GPT_LN1_B), N, d, k->ln1,
                    k->mean1, k->rstd1);
  linear_forward(k->ln1, PARAM(params, l, GPT_QKV_W), PARAM(params, l, GPT_QKV_B), N, d, 3 * d, k->qkv);
  m->attention.forward(m->attention.user, k->qkv, m->B, m->T, d, s->heads, k->att, k->saved);
  linear_forward(k->att, PARAM(params, l, GPT_PROJ_W), PARAM(params, l, GPT_PROJ_B), N, d, d, k->x2);
  for (size_t i = 0; i < nd; i++) k->x2[i] += x[i];
  layernorm_forward(k->x2, PARAM(params, l, GPT_LN2_W), PARAM(params, l, GPT_LN2_B), N, d, k->ln2,
                    k->mean2, k->rstd2);
  linear_forward(k->ln2, PARAM(params, l, GPT_FC_W), PARAM(params, l, GPT_FC_B), N, d, 4 * d, k->fc);
  gelu_forward(k->fc, 4 * nd, k->gelu);
  linear_forward(k->gelu, PARAM(params, l, GPT_FCPROJ_W), PARAM(params, l, GPT_FCPROJ_B), N, 4 * d,
                 d, out);
  for (size_t i = 0; i < nd; i++) out[i] += k->x2[i];
}

void gpt_block_backward_input(gpt_cpu *m, int l, const float *params, const float *dout,
                              float *dx) {
  const gpt_shape *s = &m->layout.shape;
  block_buffers *k = &m->blocks[l];
  size_t N = m->N, nd = N * (size_t)s->width;
  int d = s->width;
  memcpy(k->d_out, dout, sizeof(float) * nd);
  /* MLP: d_fc = (dout W_fcproj) * gelu'(fc) */
  gemm(0, 0, (int)N, 4 * d, d, dout, d, PARAM(params, l, GPT_FCPROJ_W), 4 * d, 0.0f, k->d_fc, 4 * d);
  gelu_backward(k->fc, 4 * nd, k->d_fc);
  gemm(0, 0, (int)N, d, 4 * d, k->d_fc, 4 * d, PARAM(params, l, GPT_FC_W), d, 0.0f, k->d_ln2, d);
  memcpy(k->d_x2, dout, sizeof(float) * nd); /* the residual, plus LayerNorm 2's path */
  layernorm_backward_input(k->d_ln2, k->x2, PARAM(params, l, GPT_LN2_W), k->mean2, k->rstd2, N, d,
                           k->d_x2, 1);
  /* attention: d_att = d_x2 W_proj, then through attention into d_qkv */
  float *d_att = m->scratch;
  gemm(0, 0, (int)N, d, d, k->d_x2, d, PARAM(params, l, GPT_PROJ_W), d, 0.0f, d_att, d);
  m->attention.backward(m->attention.user, d_att, k->qkv, k->saved, m->B, m->T, d, s->heads, k->d_qkv);
  gemm(0, 0, (int)N, d, 3 * d, k->d_qkv, 3 * d, PARAM(params, l, GPT_QKV_W), d, 0.0f, k->d_ln1, d);
  memcpy(dx, k->d_x2, sizeof(float) * nd);
  layernorm_backward_input(k->d_ln1, k->x, PARAM(params, l, GPT_LN1_W), k->mean1, k->rstd1, N, d,
                           dx, 1);
}

void gpt_block_backward_weight(gpt_cpu *m, int l, float *grads) {
  int d = m->layout.shape.width;
  size_t N = m->N;
  block_buffers *k = &m->blocks[l];
  linear_backward_weight(k->d_out, k->gelu, N, 4 * d, d, PARAM(grads, l, GPT_FCPROJ_W),
                         PARAM(grads, l, GPT_FCPROJ_B));
  linear_backward_weight(k->d_fc, k->ln2, N, d, 4 * d, PARAM(grads, l, GPT_FC_W),
                         PARAM(grads, l, GPT_FC_B));
  layernorm_backward_weight(k->d_ln2, k->x2, k->mean2, k->rstd2, N, d, PARAM(grads, l, GPT_LN2_W),
                            PARAM(grads, l, GPT_LN2_B));
  linear_backward_weight(k->d_x2, k->att, N, d, d, PARAM(grads, l, GPT_PROJ_W),
                         PARAM(grads, l, GPT_PROJ_B));
  linear_backward_weight(k->d_qkv, k->ln1, N, d, 3 * d, PARAM(grads, l, GPT_QKV_W),
                         PARAM(grads, l, GPT_QKV_B));
  layernorm_backward_weight(k->d_ln1, k->x, k->mean1, k->rstd1, N, d, PARAM(grads, l, GPT_LN1_W),
                            PARAM(grads, l, GPT_LN1_B));
}

double gpt_head_forward(gpt_cpu *m, const float *params, const float *x, const int *targets,
                        double scale) {
  int d = m->layout.shape.width, V = m->layout.shape.vocab;
  size_t N = m->N;
  m->head_x = x;
  layernorm_forward(x, PARAM(params, 0, GPT_LNF_W), PARAM(params, 0, GPT_LNF_B), N, d, m->lnf,
                    m->meanf, m->rstdf);
  gemm(0, 1, (int)N, V, d, m->lnf, d, PARAM(params, 0, GPT_WTE), d, 0.0f, m->logits, V);
  if (!targets) return 0.0;
  double loss = 0;
  for (size_t r = 0; r < N; r++) { /* the logits become (softmax - onehot) * scale */
    float *z = m->logits + r * V, max = -INFINITY;
    double norm = 0;
    for (int v = 0; v < V; v++) max = fmaxf(max, z[v]);
    for (int v = 0; v < V; v++) norm += (double)(z[v] = expf(z[v] - max));
    loss -= log((double)z[targets[r]] / norm);
    for (int v = 0; v < V; v++) z[v] = (float)(((double)z[v] / norm - (v == targets[r])) * scale);
  }
  return loss;
}

const float *gpt_head_logits(const gpt_cpu *m) { return m->logits; }

void gpt_head_backward_input(gpt_cpu *m, const float *params, float *dx) {
  int d = m->layout.shape.width, V = m->layout.shape.vocab;
  gemm(0, 0, (int)m->N, d, V, m->logits, V, PARAM(params, 0, GPT_WTE), d, 0.0f, m->d_lnf, d);
  layernorm_backward_input(m->d_lnf, m->head_x, PARAM(params, 0, GPT_LNF_W), m->meanf, m->rstdf,
                           m->N, d, dx, 0);
}

void gpt_head_backward_weight(gpt_cpu *m, float *grads) {
  int d = m->layout.shape.width, V = m->layout.shape.vocab;
  gemm(1, 0, V, d, (int)m->N, m->logits, V, m->lnf, d, 1.0f, PARAM(grads, 0, GPT_WTE), d);
  layernorm_backward_weight(m->d_lnf, m->head_x, m->meanf, m->rstdf, m->N, d,
                            PARAM(grads, 0, GPT_LNF_W), PARAM(grads, 0, GPT_LNF_B));
}

double gpt_cpu_train_step(gpt_cpu *m, const float *params, const int *tokens, const int *targets,
                          double scale, float *grads, float *embed_grads) {
  int L = m->layout.shape.layers;
  size_t nd = m->N * (size_t)m->layout.shape.width;
  float *xs = m->residuals, *g0 = m->residual_grads, *g1 = g0 + nd;
  gpt_embed_forward(m, params, tokens, xs);
  for (int l = 0; l < L; l++) gpt_block_forward(m, l, params, xs + nd * l, xs + nd * (l + 1));
  double loss = gpt_head_forward(m, params, xs + nd * L, targets, scale);
  gpt_head_backward_input(m, params, g0);
  gpt_head_backward_weight(m, grads);
  for (int l = L - 1; l >= 0; l--) {
    gpt_block_backward_input(m, l, params, g0, g1);
    gpt_block_backward_weight(m, l, grads);
    float *t = g0;
    g0 = g1, g1 = t;
  }
  gpt_embed_backward_weight(m, tokens, g0, embed_grads);
  return loss;
}
