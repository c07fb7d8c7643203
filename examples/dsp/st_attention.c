/* Strided multi-head self-attention (see st_attention.h). Per group the saved floats are the
 * gathered input X (L, C), [Q K V] (L, 3C), the probabilities (H, L, L) and the head outputs
 * O (L, C). */
#include "st_attention.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

size_t st_attention_params(int C) { return (size_t)C * 3 * C + (size_t)C * C; }

static size_t per_group(int C, int H, int L) { return (size_t)5 * L * C + (size_t)H * L * L; }

size_t st_attention_saved(int C, int H, const st_groups *g) {
  return per_group(C, H, g->tokens) * (size_t)g->groups;
}

static size_t token_at(const st_groups *g, int group, int token) {
  return (size_t)(group / g->inner) * g->outer_stride + (size_t)(group % g->inner) * g->group_stride +
         (size_t)token * g->token_stride;
}

// c (m, n) (+)= a (m, k) b (k, n), or a^T / b^T as flagged; row-major, plain loops
static void matmul(int m, int n, int k, const float *a, int ta, const float *b, int tb, float *c,
                   int accumulate) {
  for (int i = 0; i < m; i++)
    for (int j = 0; j < n; j++) {
      float sum = accumulate ? c[(size_t)i * n + j] : 0.0f;
      for (int p = 0; p < k; p++)
        sum += (ta ? a[(size_t)p * m + i] : a[(size_t)i * k + p]) *
               (tb ? b[(size_t)j * k + p] : b[(size_t)p * n + j]);
      c[(size_t)i * n + j] = sum;
    }
}

void st_attention_forward(const float *params, int C, int H, const st_groups *g, const float *x,
                          float *x_out, float *saved) {
  int L = g->tokens, hd = C / H;
  const float *wqkv = params, *wo = params + (size_t)C * 3 * C;
  float scale = 1.0f / sqrtf((float)hd), *y = malloc(sizeof(float) * (size_t)L * C);
  for (int group = 0; group < g->groups; group++) {
    float *X = saved + per_group(C, H, L) * (size_t)group, *qkv = X + (size_t)L * C;
    float *P = qkv + (size_t)L * 3 * C, *O = P + (size_t)H * L * L;
    for (int i = 0; i < L; i++) memcpy(X + (size_t)i * C, x + token_at(g, group, i), sizeof(float) * (size_t)C);
    matmul(L, 3 * C, C, X, 0, wqkv, 0, qkv, 0);
    for (int h = 0; h < H; h++)
      for (int i = 0; i < L; i++) {
        float *row = P + ((size_t)h * L + i) * L, max = -INFINITY, sum = 0;
        const float *q = qkv + (size_t)i * 3 * C + h * hd;
        for (int j = 0; j < L; j++) {
          const float *k = qkv + (size_t)j * 3 * C + C + h * hd;
          float dot = 0;
          for (int e = 0; e < hd; e++) dot += q[e] * k[e];
          row[j] = dot * scale;
          max = fmaxf(max, row[j]);
        }
        for (int j = 0; j < L; j++) sum += row[j] = expf(row[j] - max);
        float *o = O + (size_t)i * C + h * hd;
        for (int e = 0; e < hd; e++) o[e] = 0;
        for (int j = 0; j < L; j++) {
          row[j] /= sum;
          const float *v = qkv + (size_t)j * 3 * C + 2 * C + h * hd;
          for (int e = 0; e < hd; e++) o[e] += row[j] * v[e];
        }
      }
    matmul(L, C, C, O, 0, wo, 0, y, 0);
    for (int i = 0; i < L; i++) {
      size_t at = token_at(g, group, i);
      for (int c = 0; c < C; c++) x_out[at + c] = x[at + c] + y[(size_t)i * C + c];
    }
  }
  free(y);
}

void st_attention_backward(const float *params, int C, int H, const st_groups *g,
                           const float *saved, const float *dx_out, float *dx, float *dparams) {
  int L = g->tokens, hd = C / H;
  const float *wqkv = params, *wo = params + (size_t)C * 3 * C;
  float *dwqkv = dparams, *dwo = dparams + (size_t)C * 3 * C, scale = 1.0f / sqrtf((float)hd);
  float *dY = malloc(sizeof(float) * (size_t)L * C * 6), *dO = dY + (size_t)L * C;
  float *dqkv = dO + (size_t)L * C, *dX = dqkv + (size_t)L * 3 * C;
  float *dP = malloc(sizeof(float) * (size_t)L);
  for (int group = 0; group < g->groups; group++) {
    const float *X = saved + per_group(C, H, L) * (size_t)group, *qkv = X + (size_t)L * C;
    const float *P = qkv + (size_t)L * 3 * C, *O = P + (size_t)H * L * L;
    for (int i = 0; i < L; i++) memcpy(dY + (size_t)i * C, dx_out + token_at(g, group, i), sizeof(float) * (size_t)C);
    matmul(C, C, L, O, 1, dY, 0, dwo, 1); /* dWo += O^T dY */
    matmul(L, C, C, dY, 0, wo, 1, dO, 0); /* dO = dY Wo^T */
    memset(dqkv, 0, sizeof(float) * (size_t)L * 3 * C);
    for (int h = 0; h < H; h++)
      for (int i = 0; i < L; i++) {
        const float *row = P + ((size_t)h * L + i) * L, *go = dO + (size_t)i * C + h * hd;
        const float *q = qkv + (size_t)i * 3 * C + h * hd;
        float D = 0, *dq = dqkv + (size_t)i * 3 * C + h * hd;
        for (int j = 0; j < L; j++) {
          const float *v = qkv + (size_t)j * 3 * C + 2 * C + h * hd;
          float dot = 0;
          for (int e = 0; e < hd; e++) dot += go[e] * v[e];
          dP[j] = dot, D += row[j] * dot;
        }
        for (int j = 0; j < L; j++) {
          const float *k = qkv + (size_t)j * 3 * C + C + h * hd;
          float *dk = dqkv + (size_t)j * 3 * C + C + h * hd, *dv = dk + C;
          float ds = row[j] * (dP[j] - D) * scale;
          for (int e = 0; e < hd; e++) dv[e] += row[j] * go[e], dq[e] += ds * k[e], dk[e] += ds * q[e];
        }
      }
    matmul(C, 3 * C, L, X, 1, dqkv, 0, dwqkv, 1); /* dWqkv += X^T dqkv */
    matmul(L, C, 3 * C, dqkv, 0, wqkv, 1, dX, 0); /* dX = dqkv Wqkv^T */
    for (int i = 0; i < L; i++) {
      size_t at = token_at(g, group, i);
      for (int c = 0; c < C; c++) dx[at + c] = dX[(size_t)i * C + c] + dY[(size_t)i * C + c];
    }
  }
  free(dY), free(dP);
}
