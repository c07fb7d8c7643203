/* The plain double-precision GPT-2 forward and backward (see gpt_ref.h): loops only, no BLAS,
 * no fusion, written for reading and for testing the fast paths against. N = B*T rows. */
#include "gpt_ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* y (N, out) = x (N, in) W^T + b, W (out, in). */
static void linear(const double *x, const double *w, const double *b, int n, int in, int out,
                   double *y) {
  for (int r = 0; r < n; r++)
    for (int o = 0; o < out; o++) {
      double sum = b ? b[o] : 0.0;
      for (int i = 0; i < in; i++) sum += x[(size_t)r * in + i] * w[(size_t)o * in + i];
      y[(size_t)r * out + o] = sum;
    }
}

/* dx += dy W, dW += dy^T x, db += sum dy (any of dx, dW, db may be NULL). */
static void linear_backward(const double *dy, const double *x, const double *w, int n, int in,
                            int out, double *dx, double *dw, double *db) {
  for (int r = 0; r < n; r++)
    for (int o = 0; o < out; o++) {
      double g = dy[(size_t)r * out + o];
      if (db) db[o] += g;
      for (int i = 0; i < in; i++) {
        if (dx) dx[(size_t)r * in + i] += g * w[(size_t)o * in + i];
        if (dw) dw[(size_t)o * in + i] += g * x[(size_t)r * in + i];
      }
    }
}

/* LayerNorm over d features of each row, eps 1e-5; keeps mean and 1/std per row. */
static void layernorm(const double *x, const double *w, const double *b, int n, int d, double *y,
                      double *mean, double *rstd) {
  for (int r = 0; r < n; r++) {
    const double *xr = x + (size_t)r * d;
    double m = 0, v = 0;
    for (int i = 0; i < d; i++) m += xr[i];
    m /= d;
    for (int i = 0; i < d; i++) v += (xr[i] - m) * (xr[i] - m);
    double s = 1.0 / sqrt(v / d + 1e-5);
    for (int i = 0; i < d; i++) y[(size_t)r * d + i] = (xr[i] - m) * s * w[i] + b[i];
    mean[r] = m, rstd[r] = s;
  }
}

static void layernorm_backward(const double *dy, const double *x, const double *w,
                               const double *mean, const double *rstd, int n, int d, double *dx,
                               double *dw, double *db) {
  for (int r = 0; r < n; r++) {
    const double *xr = x + (size_t)r * d, *g = dy + (size_t)r * d;
    double mean_g = 0, mean_gx = 0;
    for (int i = 0; i < d; i++) {
      double norm = (xr[i] - mean[r]) * rstd[r];
      mean_g += g[i] * w[i], mean_gx += g[i] * w[i] * norm;
      dw[i] += g[i] * norm, db[i] += g[i];
    }
    mean_g /= d, mean_gx /= d;
    for (int i = 0; i < d; i++) {
      double norm = (xr[i] - mean[r]) * rstd[r];
      dx[(size_t)r * d + i] += rstd[r] * (g[i] * w[i] - mean_g - norm * mean_gx);
    }
  }
}

static const double kGeluC = 0.7978845608028654; /* sqrt(2 / pi) */

static double gelu(double x) { return 0.5 * x * (1.0 + tanh(kGeluC * (x + 0.044715 * x * x * x))); }

static double gelu_grad(double x) {
  double u = kGeluC * (x + 0.044715 * x * x * x), t = tanh(u);
  return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * kGeluC * (1.0 + 3.0 * 0.044715 * x * x);
}

/* Causal attention of qkv (B, T, 3d) into out (B, T, d); probabilities p (B, H, T, T). */
static void attention(const double *qkv, int B, int T, int d, int H, double *out, double *p) {
  int hs = d / H;
  double scale = 1.0 / sqrt((double)hs);
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++)
      for (int t = 0; t < T; t++) {
        const double *q = qkv + ((size_t)b * T + t) * 3 * d + h * hs;
        double *row = p + (((size_t)b * H + h) * T + t) * T, max = -INFINITY, sum = 0;
        for (int s = 0; s <= t; s++) {
          const double *k = qkv + ((size_t)b * T + s) * 3 * d + d + h * hs;
          double dot = 0;
          for (int i = 0; i < hs; i++) dot += q[i] * k[i];
          row[s] = dot * scale;
          if (row[s] > max) max = row[s];
        }
        for (int s = 0; s <= t; s++) sum += row[s] = exp(row[s] - max);
        for (int s = 0; s < T; s++) row[s] = s <= t ? row[s] / sum : 0.0;
        double *o = out + ((size_t)b * T + t) * d + h * hs;
        for (int i = 0; i < hs; i++) {
          double acc = 0;
          for (int s = 0; s <= t; s++) acc += row[s] * qkv[((size_t)b * T + s) * 3 * d + 2 * d + h * hs + i];
          o[i] = acc;
        }
      }
}

static void attention_backward(const double *dout, const double *qkv, const double *p, int B,
                               int T, int d, int H, double *dqkv) {
  int hs = d / H;
  double scale = 1.0 / sqrt((double)hs);
  double *dp = malloc(sizeof(double) * (size_t)T);
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++)
      for (int t = 0; t < T; t++) {
        const double *row = p + (((size_t)b * H + h) * T + t) * T;
        const double *go = dout + ((size_t)b * T + t) * d + h * hs;
        double dot_sum = 0;
        for (int s = 0; s <= t; s++) {
          const double *v = qkv + ((size_t)b * T + s) * 3 * d + 2 * d + h * hs;
          double *dv = dqkv + ((size_t)b * T + s) * 3 * d + 2 * d + h * hs;
          dp[s] = 0;
          for (int i = 0; i < hs; i++) dp[s] += go[i] * v[i], dv[i] += row[s] * go[i];
          dot_sum += dp[s] * row[s];
        }
        const double *q = qkv + ((size_t)b * T + t) * 3 * d + h * hs;
        double *dq = dqkv + ((size_t)b * T + t) * 3 * d + h * hs;
        for (int s = 0; s <= t; s++) {
          double ds = row[s] * (dp[s] - dot_sum) * scale;
          const double *k = qkv + ((size_t)b * T + s) * 3 * d + d + h * hs;
          double *dk = dqkv + ((size_t)b * T + s) * 3 * d + d + h * hs;
          for (int i = 0; i < hs; i++) dq[i] += ds * k[i], dk[i] += ds * q[i];
        }
      }
  free(dp);
}

/* Per-block activations kept for backward. */
typedef struct {
  double *x, *ln1, *mean1, *rstd1, *qkv, *p, *att, *x2, *ln2, *mean2, *rstd2, *fc, *gelu;
} block_acts;

loom_status gpt_ref_forward_backward(const gpt_layout *l, const double *params, const int *tokens,
                                     const int *targets, int B, int T, double *loss,
                                     double *grads) {
  const gpt_shape *s = &l->shape;
  if (T > s->context || B < 1 || T < 1)
    return loom_error_set(LOOM_ERR_ARG, "gpt reference: B=%d, T=%d (context %d)", B, T, s->context);
  int d = s->width, H = s->heads, V = s->vocab, L = s->layers;
  size_t N = (size_t)B * T, nd = N * d;
  const double *P = params;
#define W(layer, which) (P + l->tensor[gpt_tensor_index(l, layer, which)].offset)
#define G(layer, which) (grads + l->tensor[gpt_tensor_index(l, layer, which)].offset)
  /* One arena: per block 2 + 13 row buffers, plus the head. */
  size_t per_block = nd * 6 + N * 4 + N * 3 * d + (size_t)B * H * T * T + N * 8 * d;
  size_t total = per_block * L + nd * 3 + N * 2 + N * V + nd * 2 + N * 4 * d + N * 3 * d;
  double *arena = calloc(total, sizeof(double));
  block_acts *acts = calloc((size_t)L, sizeof *acts);
  if (!arena || !acts) {
    free(arena), free(acts);
    return loom_error_set(LOOM_ERR_NOMEM, "gpt reference activations (%zu doubles)", total);
  }
  double *at = arena;
#define TAKE(n) (at += (n), at - (n))
  double *x = TAKE(nd);
  for (size_t r = 0; r < N; r++) {
    int tok = tokens[r], pos = (int)(r % T);
    for (int i = 0; i < d; i++)
      x[r * d + i] = W(0, GPT_WTE)[(size_t)tok * d + i] + W(0, GPT_WPE)[(size_t)pos * d + i];
  }
  for (int layer = 0; layer < L; layer++) {
    block_acts *a = &acts[layer];
    a->x = x;
    a->ln1 = TAKE(nd), a->mean1 = TAKE(N), a->rstd1 = TAKE(N), a->qkv = TAKE(N * 3 * d);
    a->p = TAKE((size_t)B * H * T * T), a->att = TAKE(nd), a->x2 = TAKE(nd), a->ln2 = TAKE(nd);
    a->mean2 = TAKE(N), a->rstd2 = TAKE(N), a->fc = TAKE(N * 4 * d), a->gelu = TAKE(N * 4 * d);
    double *out = TAKE(nd);
    layernorm(x, W(layer, GPT_LN1_W), W(layer, GPT_LN1_B), (int)N, d, a->ln1, a->mean1, a->rstd1);
    linear(a->ln1, W(layer, GPT_QKV_W), W(layer, GPT_QKV_B), (int)N, d, 3 * d, a->qkv);
    attention(a->qkv, B, T, d, H, a->att, a->p);
    linear(a->att, W(layer, GPT_PROJ_W), W(layer, GPT_PROJ_B), (int)N, d, d, a->x2);
    for (size_t i = 0; i < nd; i++) a->x2[i] += x[i];
    layernorm(a->x2, W(layer, GPT_LN2_W), W(layer, GPT_LN2_B), (int)N, d, a->ln2, a->mean2, a->rstd2);
    linear(a->ln2, W(layer, GPT_FC_W), W(layer, GPT_FC_B), (int)N, d, 4 * d, a->fc);
    for (size_t i = 0; i < N * 4 * d; i++) a->gelu[i] = gelu(a->fc[i]);
    linear(a->gelu, W(layer, GPT_FCPROJ_W), W(layer, GPT_FCPROJ_B), (int)N, 4 * d, d, out);
    for (size_t i = 0; i < nd; i++) out[i] += a->x2[i];
    x = out;
  }
  double *lnf = TAKE(nd), *meanf = TAKE(N), *rstdf = TAKE(N), *logits = TAKE(N * V);
  layernorm(x, W(0, GPT_LNF_W), W(0, GPT_LNF_B), (int)N, d, lnf, meanf, rstdf);
  linear(lnf, W(0, GPT_WTE), NULL, (int)N, d, V, logits);
  /* Mean cross-entropy; logits become their gradient (softmax - onehot) / N. */
  double sum = 0;
  for (size_t r = 0; r < N; r++) {
    double *z = logits + r * V, max = -INFINITY, norm = 0;
    for (int v = 0; v < V; v++) max = z[v] > max ? z[v] : max;
    for (int v = 0; v < V; v++) norm += exp(z[v] - max);
    sum -= z[targets[r]] - max - log(norm);
    for (int v = 0; v < V; v++) z[v] = (exp(z[v] - max) / norm - (v == targets[r])) / (double)N;
  }
  *loss = sum / (double)N;
  memset(grads, 0, sizeof(double) * l->total);
  double *dx = TAKE(nd), *dln = TAKE(nd), *dfc = TAKE(N * 4 * d), *dqkv = TAKE(N * 3 * d);
  linear_backward(logits, lnf, W(0, GPT_WTE), (int)N, d, V, dln, G(0, GPT_WTE), NULL);
  layernorm_backward(dln, x, W(0, GPT_LNF_W), meanf, rstdf, (int)N, d, dx, G(0, GPT_LNF_W),
                     G(0, GPT_LNF_B));
  double *datt = dln; /* reused per block */
  for (int layer = L - 1; layer >= 0; layer--) {
    block_acts *a = &acts[layer];
    /* out = x2 + mlp(ln2(x2)): dx flows to x2 directly and through the MLP */
    memset(dfc, 0, sizeof(double) * N * 4 * d);
    linear_backward(dx, a->gelu, W(layer, GPT_FCPROJ_W), (int)N, 4 * d, d, dfc,
                    G(layer, GPT_FCPROJ_W), G(layer, GPT_FCPROJ_B));
    for (size_t i = 0; i < N * 4 * d; i++) dfc[i] *= gelu_grad(a->fc[i]);
    memset(dln, 0, sizeof(double) * nd);
    linear_backward(dfc, a->ln2, W(layer, GPT_FC_W), (int)N, d, 4 * d, dln, G(layer, GPT_FC_W),
                    G(layer, GPT_FC_B));
    layernorm_backward(dln, a->x2, W(layer, GPT_LN2_W), a->mean2, a->rstd2, (int)N, d, dx,
                       G(layer, GPT_LN2_W), G(layer, GPT_LN2_B));
    /* x2 = x + proj(attn(ln1(x))) */
    memset(datt, 0, sizeof(double) * nd);
    linear_backward(dx, a->att, W(layer, GPT_PROJ_W), (int)N, d, d, datt, G(layer, GPT_PROJ_W),
                    G(layer, GPT_PROJ_B));
    memset(dqkv, 0, sizeof(double) * N * 3 * d);
    attention_backward(datt, a->qkv, a->p, B, T, d, H, dqkv);
    memset(datt, 0, sizeof(double) * nd);
    linear_backward(dqkv, a->ln1, W(layer, GPT_QKV_W), (int)N, d, 3 * d, datt,
                    G(layer, GPT_QKV_W), G(layer, GPT_QKV_B));
    layernorm_backward(datt, a->x, W(layer, GPT_LN1_W), a->mean1, a->rstd1, (int)N, d, dx,
                       G(layer, GPT_LN1_W), G(layer, GPT_LN1_B));
  }
  for (size_t r = 0; r < N; r++) {
    int tok = tokens[r], pos = (int)(r % T);
    for (int i = 0; i < d; i++) {
      G(0, GPT_WTE)[(size_t)tok * d + i] += dx[r * d + i];
      G(0, GPT_WPE)[(size_t)pos * d + i] += dx[r * d + i];
    }
  }
#undef TAKE
#undef W
#undef G
  free(arena), free(acts);
  return LOOM_OK;
}
