// GPT-2 on one GPU (see gpt_cuda.h): the units of gpt_cpu.c with bfloat16 activations,
// cuBLASLt products (gpt_gemm.cu) and the kernels of gpt_kernels.cu.
#include "gpt_cuda.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gpt_attention.cuh"
#include "gpt_gemm.cuh"
#include "gpt_kernels.cuh"

namespace {

// What one block keeps from its forward for its backward (device; bf16 unless said).
struct block_saved {
  const bf16 *x;            // input (N, d), the caller's
  bf16 *ln1;                // (N, d)
  float *mean1, *rstd1;     // (N)
  bf16 *qkv;                // (N, 3d) flash: the projection; batched: q, k, v below
  bf16 *q, *k, *v;          // batched: (B, H, T, hd) each, inside qkv's memory
  float *lse;               // flash: (B, H, T) log-sum-exp of the scaled scores
  bf16 *P;                  // batched: (B, H, T, T) causal softmax probabilities
  bf16 *att;                // (N, d) attention output before c_proj
  bf16 *x2;                 // (N, d) x + proj(att)
  bf16 *ln2;                // (N, d)
  float *mean2, *rstd2;     // (N)
  bf16 *fc;                 // (N, 4d) before GELU (GELU is recomputed for backward-weight)
};

// Gradients a block's backward-input keeps for its backward-weight.
struct block_grads {
  const bf16 *d_out; // (N, d) gradient of the block output: the caller's, or d_out_copy
  bf16 *d_out_copy;  // (N, d) kept when backward is split (the caller's buffer moves on)
  bf16 *d_fc;   // (N, 4d) before GELU
  bf16 *d_ln2;  // (N, d)
  bf16 *d_x2;   // (N, d)
  bf16 *d_qkv;  // (N, 3d)
  bf16 *d_ln1;  // (N, d)
};

loom_status cuda_check(cudaError_t e, const char *what) {
  if (e == cudaSuccess) return LOOM_OK;
  return loom_error_set(LOOM_ERR_CUDA, "GPT on the GPU: %s: %s", what, cudaGetErrorString(e));
}

}  // namespace

struct gpt_cuda {
  gpt_layout layout;
  int B, T, N, d, H, hd, V, Vp, L, split, flash;
  cudaStream_t stream;
  gpt_blas *gemm;
  float *master, *grads; // (total) float32
  bf16 *w;               // (total) bfloat16 copy
  block_saved *saved;    // (L)
  block_grads *kept;     // (L) when split, else (1)
  // head
  const bf16 *head_x;
  bf16 *lnf, *logits;    // (N, d), (N, Vp)
  float *meanf, *rstdf, *row_loss; // (N)
  // scratch shared by all blocks
  bf16 *qkv, *heads, *heads2, *dqkv_heads; // (N, 3d), (N, d), (N, d), (3 N d)
  bf16 *dS;              // batched: (B, H, T, T)
  float *S;              // batched: (B, H, T, T) scores, then their gradient
  float *delta;          // flash: (B, H, T)
  bf16 *wide;            // (N, 4d): GELU output, its gradient
  float *column_partial; // gpt_k_column_scratch(4d)
  bf16 *residual;        // (L + 3) x (N, d)
  int *tokens, *targets, *order, *starts, *token_of; // device (N), (N), (N), (N + 1), (N)
  int *host_counts, *host_order, *host_starts, *host_token_of; // host (V), (N), (N + 1), (N)
  float *host_loss;      // (N)
  int unique_tokens;
  void *arena;
  size_t arena_bytes, block_bytes, head_bytes;
};

// Device pointer of tensor (layer, which) in a flat array of `base` (masters, gradients).
template <typename E> static E *tensor(const gpt_cuda *m, E *base, int layer, int which) {
  return base + m->layout.tensor[gpt_tensor_index(&m->layout, layer, which)].offset;
}

// The bfloat16 copy holds the token embedding (offset 0 of the layout) padded from V to Vp
// rows with zeros, so the three products over the vocabulary run on aligned shapes; every
// later tensor sits (Vp - V) d elements further than its layout offset.
static size_t weight_offset(const gpt_cuda *m, size_t offset) {
  return offset == 0 ? 0 : offset + (size_t)(m->Vp - m->V) * m->d;
}

// bfloat16 copy of tensor (layer, which).
static bf16 *weight(const gpt_cuda *m, int layer, int which) {
  return m->w + weight_offset(m, m->layout.tensor[gpt_tensor_index(&m->layout, layer, which)].offset);
}

extern "C" {

loom_status gpt_cuda_create(const gpt_layout *layout, int B, int T, int split_backward,
                            gpt_attention_kind attention, void *stream, gpt_cuda **out) {
  const gpt_shape *s = &layout->shape;
  if (B < 1 || T < 1 || T > s->context)
    return loom_error_set(LOOM_ERR_ARG, "gpt_cuda_create: B=%d must be >= 1 and T=%d in [1, %d] "
                          "(the context)", B, T, s->context);
  if (s->width % 8 || (s->width / s->heads) % 8)
    return loom_error_set(LOOM_ERR_ARG, "the GPT CUDA path needs width (%d) and head size (%d) "
                          "divisible by 8 (16-byte rows for cuBLASLt)", s->width, s->width / s->heads);
  int flash = attention == GPT_ATTENTION_FLASH;
  if (flash && !gpt_flash_supported(s->width / s->heads))
    return loom_error_set(LOOM_ERR_ARG, "flash attention is built for head sizes 32, 64 and 128, "
                          "not %d (width %d / heads %d); use the batched attention", s->width / s->heads,
                          s->width, s->heads);
  gpt_cuda *m = (gpt_cuda *)calloc(1, sizeof *m);
  if (!m) return loom_error_set(LOOM_ERR_NOMEM, "allocating the GPT model");
  m->layout = *layout, m->flash = flash;
  m->B = B, m->T = T, m->N = B * T, m->d = s->width, m->H = s->heads, m->hd = s->width / s->heads;
  m->V = s->vocab, m->Vp = (s->vocab + 127) / 128 * 128, m->L = s->layers, m->split = split_backward;
  m->stream = (cudaStream_t)stream;
  m->saved = (block_saved *)calloc((size_t)m->L, sizeof *m->saved);
  int sets = split_backward ? m->L : 1;
  m->kept = (block_grads *)calloc((size_t)sets, sizeof *m->kept);
  size_t N = (size_t)m->N, d = (size_t)m->d, P = layout->total;
  size_t BHT = (size_t)B * m->H * T, BHTT = flash ? 0 : BHT * T; // score-sized buffers: batched only
  m->host_counts = (int *)malloc(sizeof(int) * (size_t)m->V);
  m->host_order = (int *)malloc(sizeof(int) * N);
  m->host_starts = (int *)malloc(sizeof(int) * (N + 1));
  m->host_token_of = (int *)malloc(sizeof(int) * N);
  m->host_loss = (float *)malloc(sizeof(float) * N);
  if (!m->saved || !m->kept || !m->host_counts || !m->host_order || !m->host_starts ||
      !m->host_token_of || !m->host_loss) {
    gpt_cuda_destroy(m);
    return loom_error_set(LOOM_ERR_NOMEM, "GPT on the GPU: host buffers");
  }
  // bytes, in one arena (every piece rounded to 256 bytes)
  auto round = [](size_t bytes) { return (bytes + 255) / 256 * 256; };
  m->block_bytes = round(2 * N * d) * 4 + round(2 * N * 3 * d) + round(2 * N * 4 * d) +
                   round(2 * BHTT) + round(4 * N) * 4 + round(4 * BHT);
  size_t grad_set = round(2 * N * d) * 4 + round(2 * N * 4 * d) + round(2 * N * 3 * d);
  m->head_bytes = round(2 * N * d) + round(2 * N * (size_t)m->Vp) + round(4 * N) * 3;
  size_t pad = (size_t)(m->Vp - m->V) * d; // zero rows of the bfloat16 token embedding
  size_t params = round(4 * P) * 2 + round(2 * (P + pad));
  size_t scratch = round(2 * N * 3 * d) + round(2 * N * d) * 2 + round(2 * 3 * N * d) +
                   round(2 * BHTT) + round(4 * BHTT) + round(2 * N * 4 * d) +
                   round(4 * gpt_k_column_scratch(4 * m->d)) + round(2 * N * d) * ((size_t)m->L + 3) +
                   round(4 * N) * 3 + round(4 * (N + 1)) + round(4 * N) + round(4 * BHT);
  m->arena_bytes = params + m->block_bytes * (size_t)m->L + grad_set * (size_t)sets + m->head_bytes + scratch;
  loom_status status = cuda_check(cudaMalloc(&m->arena, m->arena_bytes), "device memory");
  if (status != LOOM_OK) {
    cudaGetLastError(); /* clear it: a later launch must not report this failure as its own */
    loom_error_set(LOOM_ERR_CUDA, "GPT on the GPU: %.2f GiB of device memory for B=%d T=%d: %s",
                   m->arena_bytes / 1073741824.0, B, T, loom_error_string());
    gpt_cuda_destroy(m);
    return LOOM_ERR_CUDA;
  }
  char *at = (char *)m->arena;
  auto take = [&](size_t bytes) { void *p = at; at += round(bytes); return p; };
  m->master = (float *)take(4 * P), m->grads = (float *)take(4 * P), m->w = (bf16 *)take(2 * (P + pad));
  for (int l = 0; l < m->L; l++) {
    block_saved *k = &m->saved[l];
    k->ln1 = (bf16 *)take(2 * N * d), k->qkv = (bf16 *)take(2 * N * 3 * d);
    k->q = k->qkv, k->k = k->q + N * d, k->v = k->k + N * d;
    k->att = (bf16 *)take(2 * N * d), k->x2 = (bf16 *)take(2 * N * d), k->ln2 = (bf16 *)take(2 * N * d);
    k->fc = (bf16 *)take(2 * N * 4 * d), k->P = flash ? NULL : (bf16 *)take(2 * BHTT);
    k->lse = (float *)take(4 * BHT);
    k->mean1 = (float *)take(4 * N), k->rstd1 = (float *)take(4 * N);
    k->mean2 = (float *)take(4 * N), k->rstd2 = (float *)take(4 * N);
  }
  for (int g = 0; g < sets; g++) {
    block_grads *k = &m->kept[g];
    k->d_out_copy = (bf16 *)take(2 * N * d), k->d_ln2 = (bf16 *)take(2 * N * d);
    k->d_x2 = (bf16 *)take(2 * N * d), k->d_ln1 = (bf16 *)take(2 * N * d);
    k->d_fc = (bf16 *)take(2 * N * 4 * d), k->d_qkv = (bf16 *)take(2 * N * 3 * d);
  }
  m->lnf = (bf16 *)take(2 * N * d), m->logits = (bf16 *)take(2 * N * (size_t)m->Vp);
  m->meanf = (float *)take(4 * N), m->rstdf = (float *)take(4 * N), m->row_loss = (float *)take(4 * N);
  m->qkv = (bf16 *)take(2 * N * 3 * d), m->heads = (bf16 *)take(2 * N * d), m->heads2 = (bf16 *)take(2 * N * d);
  m->dqkv_heads = (bf16 *)take(2 * 3 * N * d), m->delta = (float *)take(4 * BHT);
  m->dS = flash ? NULL : (bf16 *)take(2 * BHTT), m->S = flash ? NULL : (float *)take(4 * BHTT);
  m->wide = (bf16 *)take(2 * N * 4 * d);
  m->column_partial = (float *)take(4 * gpt_k_column_scratch(4 * m->d));
  m->residual = (bf16 *)take(2 * N * d * ((size_t)m->L + 3));
  m->tokens = (int *)take(4 * N), m->targets = (int *)take(4 * N), m->order = (int *)take(4 * N);
  m->starts = (int *)take(4 * (N + 1)), m->token_of = (int *)take(4 * N);
  status = gpt_gemm_create(m->stream, &m->gemm);
  if (status == LOOM_OK) status = gpt_cuda_zero_grads(m);
  if (status == LOOM_OK)
    status = cuda_check(cudaMemsetAsync(m->w + (size_t)m->V * d, 0, 2 * pad, m->stream),
                        "zeroing the token embedding's padding");
  if (status != LOOM_OK) {
    gpt_cuda_destroy(m);
    return status;
  }
  *out = m;
  return LOOM_OK;
}

void gpt_cuda_destroy(gpt_cuda *m) {
  if (!m) return;
  gpt_gemm_destroy(m->gemm);
  if (m->arena) cudaFree(m->arena);
  free(m->saved), free(m->kept);
  free(m->host_counts), free(m->host_order), free(m->host_starts), free(m->host_token_of);
  free(m->host_loss);
  free(m);
}

size_t gpt_cuda_memory_in_use(void) {
  size_t free_bytes = 0, total = 0;
  return cudaMemGetInfo(&free_bytes, &total) == cudaSuccess ? total - free_bytes : 0;
}

size_t gpt_cuda_block_activation_bytes(const gpt_cuda *m) { return m->block_bytes; }
size_t gpt_cuda_head_activation_bytes(const gpt_cuda *m) { return m->head_bytes; }
size_t gpt_cuda_device_bytes(const gpt_cuda *m) { return m->arena_bytes + (32u << 20); }
float *gpt_cuda_master(gpt_cuda *m) { return m->master; }
void *gpt_cuda_weight(gpt_cuda *m, size_t offset) { return m->w + weight_offset(m, offset); }
float *gpt_cuda_grads(gpt_cuda *m) { return m->grads; }
void *gpt_cuda_residual(gpt_cuda *m, int i) { return m->residual + (size_t)i * m->N * m->d; }

loom_status gpt_cuda_refresh_weights(gpt_cuda *m) {
  size_t wte = (size_t)m->V * m->d; // the token embedding, then everything after its padding
  LOOM_CHECK(gpt_k_to_bf16(m->master, wte, m->w, m->stream));
  return gpt_k_to_bf16(m->master + wte, m->layout.total - wte, m->w + weight_offset(m, wte), m->stream);
}

loom_status gpt_cuda_set_params(gpt_cuda *m, const float *host) {
  LOOM_CHECK(cuda_check(cudaMemcpyAsync(m->master, host, sizeof(float) * m->layout.total,
                                        cudaMemcpyHostToDevice, m->stream), "copying parameters in"));
  return gpt_cuda_refresh_weights(m);
}

static loom_status to_host(gpt_cuda *m, const float *device, float *host, const char *what) {
  LOOM_CHECK(cuda_check(cudaMemcpyAsync(host, device, sizeof(float) * m->layout.total,
                                        cudaMemcpyDeviceToHost, m->stream), what));
  return cuda_check(cudaStreamSynchronize(m->stream), what);
}

loom_status gpt_cuda_get_params(gpt_cuda *m, float *host) {
  return to_host(m, m->master, host, "copying parameters out");
}

loom_status gpt_cuda_get_grads(gpt_cuda *m, float *host) {
  return to_host(m, m->grads, host, "copying gradients out");
}

loom_status gpt_cuda_zero_grads(gpt_cuda *m) {
  return cuda_check(cudaMemsetAsync(m->grads, 0, sizeof(float) * m->layout.total, m->stream),
                    "zeroing gradients");
}

// tokens to the device, with their positions grouped by token (a counting sort on the host)
// for the deterministic embedding backward.
static loom_status upload_tokens(gpt_cuda *m, const int *tokens) {
  int N = m->N, V = m->V;
  for (int n = 0; n < N; n++)
    if (tokens[n] < 0 || tokens[n] >= V)
      return loom_error_set(LOOM_ERR_ARG, "GPT on the GPU: token %d at position %d is outside "
                            "the vocabulary [0, %d)", tokens[n], n, V);
  memset(m->host_counts, 0, sizeof(int) * (size_t)V);
  for (int n = 0; n < N; n++) m->host_counts[tokens[n]]++;
  int u = 0, at = 0;
  for (int t = 0; t < V; t++)
    if (m->host_counts[t]) {
      m->host_token_of[u] = t, m->host_starts[u] = at;
      at += m->host_counts[t];
      m->host_counts[t] = m->host_starts[u]; // next free slot of token t
      u++;
    }
  m->host_starts[u] = N, m->unique_tokens = u;
  for (int n = 0; n < N; n++) m->host_order[m->host_counts[tokens[n]]++] = n;
  cudaStream_t st = m->stream;
  LOOM_CHECK(cuda_check(cudaMemcpyAsync(m->tokens, tokens, sizeof(int) * N, cudaMemcpyHostToDevice, st), "tokens"));
  LOOM_CHECK(cuda_check(cudaMemcpyAsync(m->order, m->host_order, sizeof(int) * N, cudaMemcpyHostToDevice, st), "token order"));
  LOOM_CHECK(cuda_check(cudaMemcpyAsync(m->starts, m->host_starts, sizeof(int) * (u + 1), cudaMemcpyHostToDevice, st), "token starts"));
  return cuda_check(cudaMemcpyAsync(m->token_of, m->host_token_of, sizeof(int) * u, cudaMemcpyHostToDevice, st), "token ids");
}

loom_status gpt_cuda_embed_forward(gpt_cuda *m, const int *tokens, void *x) {
  LOOM_CHECK(upload_tokens(m, tokens));
  return gpt_k_embed_forward(m->tokens, weight(m, 0, GPT_WTE), weight(m, 0, GPT_WPE),
                             m->N, m->T, m->d, (bf16 *)x, m->stream);
}

loom_status gpt_cuda_embed_backward_weight(gpt_cuda *m, const void *dx) {
  return gpt_k_embed_backward((const bf16 *)dx, m->B, m->T, m->d, m->order, m->starts, m->token_of,
                              m->unique_tokens, tensor(m, m->grads, 0, GPT_WTE),
                              tensor(m, m->grads, 0, GPT_WPE), m->stream);
}

loom_status gpt_cuda_block_forward(gpt_cuda *m, int l, const void *x_in, void *x_out) {
  block_saved *k = &m->saved[l];
  const bf16 *x = (const bf16 *)x_in;
  int N = m->N, d = m->d, T = m->T, hd = m->hd, BH = m->B * m->H;
  cudaStream_t st = m->stream;
  k->x = x;
  LOOM_CHECK(gpt_k_layernorm_forward(x, weight(m, l, GPT_LN1_W), weight(m, l, GPT_LN1_B),
                                     N, d, k->ln1, k->mean1, k->rstd1, st));
  float scale = 1.0f / sqrtf((float)hd);
  if (m->flash) {
    LOOM_CHECK(gpt_gemm(m->gemm, 0, 1, N, 3 * d, d, k->ln1, d, weight(m, l, GPT_QKV_W), d, 0.0f,
                        NULL, k->qkv, 3 * d, 0, weight(m, l, GPT_QKV_B)));
    LOOM_CHECK(gpt_flash_forward(k->qkv, m->B, T, m->H, hd, scale, k->att, k->lse, st));
  } else {
    LOOM_CHECK(gpt_gemm(m->gemm, 0, 1, N, 3 * d, d, k->ln1, d, weight(m, l, GPT_QKV_W), d, 0.0f,
                        NULL, m->qkv, 3 * d, 0, weight(m, l, GPT_QKV_B)));
    LOOM_CHECK(gpt_k_qkv_heads(m->qkv, k->q, k->k, k->v, m->B, T, m->H, hd, 1, st));
    // S = q k^T per (sequence, head); P = causal softmax(S / sqrt(hd)); heads = P v
    LOOM_CHECK(gpt_gemm_batched(m->gemm, 0, 1, T, T, hd, 1.0f, k->q, hd, (long long)T * hd, k->k, hd,
                                (long long)T * hd, 0.0f, m->S, T, (long long)T * T, BH, 1));
    LOOM_CHECK(gpt_k_causal_softmax(m->S, BH * T, T, scale, k->P, st));
    LOOM_CHECK(gpt_gemm_batched(m->gemm, 0, 0, T, hd, T, 1.0f, k->P, T, (long long)T * T, k->v, hd,
                                (long long)T * hd, 0.0f, m->heads, hd, (long long)T * hd, BH, 0));
    LOOM_CHECK(gpt_k_rows_heads(k->att, m->heads, m->B, T, m->H, hd, 0, st));
  }
  // x2 = x + att W_proj^T + b; ln2; fc = ln2 W_fc^T + b; out = x2 + gelu(fc) W_fcproj^T + b
  LOOM_CHECK(gpt_gemm(m->gemm, 0, 1, N, d, d, k->att, d, weight(m, l, GPT_PROJ_W), d, 1.0f, x,
                      k->x2, d, 0, weight(m, l, GPT_PROJ_B)));
  LOOM_CHECK(gpt_k_layernorm_forward(k->x2, weight(m, l, GPT_LN2_W), weight(m, l, GPT_LN2_B),
                                     N, d, k->ln2, k->mean2, k->rstd2, st));
  LOOM_CHECK(gpt_gemm(m->gemm, 0, 1, N, 4 * d, d, k->ln2, d, weight(m, l, GPT_FC_W), d, 0.0f,
                      NULL, k->fc, 4 * d, 0, weight(m, l, GPT_FC_B)));
  LOOM_CHECK(gpt_k_gelu_forward(k->fc, (size_t)N * 4 * d, m->wide, st));
  return gpt_gemm(m->gemm, 0, 1, N, d, 4 * d, m->wide, 4 * d, weight(m, l, GPT_FCPROJ_W), 4 * d,
                  1.0f, k->x2, x_out, d, 0, weight(m, l, GPT_FCPROJ_B));
}

loom_status gpt_cuda_block_backward_input(gpt_cuda *m, int l, const void *dx_out, void *dx_in) {
  block_saved *k = &m->saved[l];
  block_grads *g = &m->kept[m->split ? l : 0];
  int N = m->N, d = m->d, T = m->T, hd = m->hd, BH = m->B * m->H;
  cudaStream_t st = m->stream;
  g->d_out = (const bf16 *)dx_out;
  if (m->split) {
    LOOM_CHECK(cuda_check(cudaMemcpyAsync(g->d_out_copy, dx_out, sizeof(bf16) * N * d,
                                          cudaMemcpyDeviceToDevice, st), "keeping the output gradient"));
    g->d_out = g->d_out_copy;
  }
  // MLP: d_fc = (dout W_fcproj) gelu'(fc); d_ln2 = d_fc W_fc; d_x2 = dout + LN2'(d_ln2)
  LOOM_CHECK(gpt_gemm(m->gemm, 0, 0, N, 4 * d, d, g->d_out, d, weight(m, l, GPT_FCPROJ_W),
                      4 * d, 0.0f, NULL, g->d_fc, 4 * d, 0, NULL));
  LOOM_CHECK(gpt_k_gelu_backward(g->d_fc, k->fc, (size_t)N * 4 * d, g->d_fc, st));
  LOOM_CHECK(gpt_gemm(m->gemm, 0, 0, N, d, 4 * d, g->d_fc, 4 * d, weight(m, l, GPT_FC_W), d,
                      0.0f, NULL, g->d_ln2, d, 0, NULL));
  LOOM_CHECK(gpt_k_layernorm_backward(g->d_ln2, k->x2, weight(m, l, GPT_LN2_W), k->mean2,
                                      k->rstd2, N, d, g->d_out, g->d_x2, st));
  // attention: d_att = d_x2 W_proj, to heads dO; dP = dO v^T, dv = P^T dO; dS; dq = dS k, dk = dS^T q
  LOOM_CHECK(gpt_gemm(m->gemm, 0, 0, N, d, d, g->d_x2, d, weight(m, l, GPT_PROJ_W), d, 0.0f,
                      NULL, m->heads2, d, 0, NULL));
  float scale = 1.0f / sqrtf((float)hd);
  if (m->flash) {
    LOOM_CHECK(gpt_flash_backward(k->qkv, k->att, m->heads2, k->lse, m->B, T, m->H, hd, scale,
                                  m->delta, g->d_qkv, st));
  } else {
    LOOM_CHECK(gpt_k_rows_heads(m->heads2, m->heads, m->B, T, m->H, hd, 1, st));
    long long sh = (long long)T * hd, ss = (long long)T * T;
    bf16 *dq = m->dqkv_heads, *dk = dq + (size_t)N * d, *dv = dk + (size_t)N * d;
    LOOM_CHECK(gpt_gemm_batched(m->gemm, 0, 1, T, T, hd, 1.0f, m->heads, hd, sh, k->v, hd, sh, 0.0f,
                                m->S, T, ss, BH, 1));
    LOOM_CHECK(gpt_gemm_batched(m->gemm, 1, 0, T, hd, T, 1.0f, k->P, T, ss, m->heads, hd, sh, 0.0f,
                                dv, hd, sh, BH, 0));
    LOOM_CHECK(gpt_k_causal_softmax_backward(m->S, k->P, BH * T, T, scale, m->dS, st));
    LOOM_CHECK(gpt_gemm_batched(m->gemm, 0, 0, T, hd, T, 1.0f, m->dS, T, ss, k->k, hd, sh, 0.0f, dq,
                                hd, sh, BH, 0));
    LOOM_CHECK(gpt_gemm_batched(m->gemm, 1, 0, T, hd, T, 1.0f, m->dS, T, ss, k->q, hd, sh, 0.0f, dk,
                                hd, sh, BH, 0));
    LOOM_CHECK(gpt_k_qkv_heads(g->d_qkv, dq, dk, dv, m->B, T, m->H, hd, 0, st));
  }
  // d_ln1 = d_qkv W_qkv; dx = d_x2 + LN1'(d_ln1)
  LOOM_CHECK(gpt_gemm(m->gemm, 0, 0, N, d, 3 * d, g->d_qkv, 3 * d, weight(m, l, GPT_QKV_W), d,
                      0.0f, NULL, g->d_ln1, d, 0, NULL));
  return gpt_k_layernorm_backward(g->d_ln1, k->x, weight(m, l, GPT_LN1_W), k->mean1, k->rstd1,
                                  N, d, g->d_x2, (bf16 *)dx_in, st);
}

// dW += dy^T x (float32), db += column sums of dy
static loom_status linear_backward_weight(gpt_cuda *m, const bf16 *dy, const bf16 *x, int in,
                                          int out, float *dw, float *db) {
  LOOM_CHECK(gpt_gemm(m->gemm, 1, 0, out, in, m->N, dy, out, x, in, 1.0f, dw, dw, in, 1, NULL));
  return gpt_k_column_sums(dy, NULL, NULL, NULL, m->N, out, m->column_partial, NULL, db, m->stream);
}

loom_status gpt_cuda_block_backward_weight(gpt_cuda *m, int l) {
  block_saved *k = &m->saved[l];
  block_grads *g = &m->kept[m->split ? l : 0];
  int N = m->N, d = m->d;
  float *G = m->grads;
  LOOM_CHECK(gpt_k_gelu_forward(k->fc, (size_t)N * 4 * d, m->wide, m->stream));
  LOOM_CHECK(linear_backward_weight(m, g->d_out, m->wide, 4 * d, d, tensor(m, G, l, GPT_FCPROJ_W),
                                    tensor(m, G, l, GPT_FCPROJ_B)));
  LOOM_CHECK(linear_backward_weight(m, g->d_fc, k->ln2, d, 4 * d, tensor(m, G, l, GPT_FC_W),
                                    tensor(m, G, l, GPT_FC_B)));
  LOOM_CHECK(gpt_k_column_sums(g->d_ln2, k->x2, k->mean2, k->rstd2, N, d, m->column_partial,
                               tensor(m, G, l, GPT_LN2_W), tensor(m, G, l, GPT_LN2_B), m->stream));
  LOOM_CHECK(linear_backward_weight(m, g->d_x2, k->att, d, d, tensor(m, G, l, GPT_PROJ_W),
                                    tensor(m, G, l, GPT_PROJ_B)));
  LOOM_CHECK(linear_backward_weight(m, g->d_qkv, k->ln1, d, 3 * d, tensor(m, G, l, GPT_QKV_W),
                                    tensor(m, G, l, GPT_QKV_B)));
  return gpt_k_column_sums(g->d_ln1, k->x, k->mean1, k->rstd1, N, d, m->column_partial,
                           tensor(m, G, l, GPT_LN1_W), tensor(m, G, l, GPT_LN1_B), m->stream);
}

loom_status gpt_cuda_head_forward(gpt_cuda *m, const void *x, const int *targets, double scale,
                                  int grad, double *loss_sum) {
  int N = m->N, d = m->d;
  cudaStream_t st = m->stream;
  for (int n = 0; n < N; n++)
    if (targets[n] < 0 || targets[n] >= m->V)
      return loom_error_set(LOOM_ERR_ARG, "GPT on the GPU: target %d at position %d is outside "
                            "the vocabulary [0, %d)", targets[n], n, m->V);
  m->head_x = (const bf16 *)x;
  LOOM_CHECK(gpt_k_layernorm_forward(m->head_x, weight(m, 0, GPT_LNF_W), weight(m, 0, GPT_LNF_B),
                                     N, d, m->lnf, m->meanf, m->rstdf, st));
  // logits over the padded vocabulary: columns V..Vp are zero (zero rows of wte), and stay
  // zero as gradients, so the products below may run over Vp too
  LOOM_CHECK(gpt_gemm(m->gemm, 0, 1, N, m->Vp, d, m->lnf, d, weight(m, 0, GPT_WTE), d, 0.0f,
                      NULL, m->logits, m->Vp, 0, NULL));
  LOOM_CHECK(cuda_check(cudaMemcpyAsync(m->targets, targets, sizeof(int) * N, cudaMemcpyHostToDevice, st), "targets"));
  LOOM_CHECK(gpt_k_cross_entropy(m->logits, N, m->V, m->Vp, m->targets, (float)scale, grad, m->row_loss, st));
  LOOM_CHECK(cuda_check(cudaMemcpyAsync(m->host_loss, m->row_loss, sizeof(float) * N,
                                        cudaMemcpyDeviceToHost, st), "losses"));
  LOOM_CHECK(cuda_check(cudaStreamSynchronize(st), "the forward pass"));
  double sum = 0;
  for (int n = 0; n < N; n++) sum += m->host_loss[n];
  *loss_sum = sum;
  return LOOM_OK;
}

loom_status gpt_cuda_head_backward_input(gpt_cuda *m, void *dx) {
  int N = m->N, d = m->d;
  bf16 *d_lnf = m->heads2;
  LOOM_CHECK(gpt_gemm(m->gemm, 0, 0, N, d, m->Vp, m->logits, m->Vp, weight(m, 0, GPT_WTE), d,
                      0.0f, NULL, d_lnf, d, 0, NULL));
  // no residual into the head: dx = LN_f'(d_lnf); the zeroed `wide` buffer stands for it
  LOOM_CHECK(cuda_check(cudaMemsetAsync(m->wide, 0, sizeof(bf16) * N * d, m->stream), "zeroing"));
  LOOM_CHECK(gpt_k_layernorm_backward(d_lnf, m->head_x, weight(m, 0, GPT_LNF_W), m->meanf,
                                      m->rstdf, N, d, m->wide, (bf16 *)dx, m->stream));
  // LN_f's weight gradients need d_lnf: computed here, while it is at hand
  return gpt_k_column_sums(d_lnf, m->head_x, m->meanf, m->rstdf, N, d, m->column_partial,
                           tensor(m, m->grads, 0, GPT_LNF_W), tensor(m, m->grads, 0, GPT_LNF_B),
                           m->stream);
}

loom_status gpt_cuda_head_backward_weight(gpt_cuda *m) {
  // dwte (V, d) += dlogits^T lnf. The float32 gradient has V rows, not Vp: the rows up to a
  // multiple of 128 in one aligned product, the rest (V mod 128 rows) in a small one.
  int aligned = m->V / 128 * 128, rest = m->V - aligned;
  float *dwte = tensor(m, m->grads, 0, GPT_WTE);
  if (aligned > 0)
    LOOM_CHECK(gpt_gemm(m->gemm, 1, 0, aligned, m->d, m->N, m->logits, m->Vp, m->lnf, m->d, 1.0f,
                        dwte, dwte, m->d, 1, NULL));
  if (rest == 0) return LOOM_OK;
  float *tail = dwte + (size_t)aligned * m->d;
  return gpt_gemm(m->gemm, 1, 0, rest, m->d, m->N, m->logits + aligned, m->Vp, m->lnf, m->d, 1.0f,
                  tail, tail, m->d, 1, NULL);
}

loom_status gpt_cuda_train_step(gpt_cuda *m, const int *tokens, const int *targets, double scale,
                                int split, double *loss_sum) {
  if (split && !m->split)
    return loom_error_set(LOOM_ERR_ARG, "gpt_cuda_train_step: split order needs a model created "
                          "with split_backward");
  int L = m->L;
  LOOM_CHECK(gpt_cuda_embed_forward(m, tokens, gpt_cuda_residual(m, 0)));
  for (int l = 0; l < L; l++)
    LOOM_CHECK(gpt_cuda_block_forward(m, l, gpt_cuda_residual(m, l), gpt_cuda_residual(m, l + 1)));
  LOOM_CHECK(gpt_cuda_head_forward(m, gpt_cuda_residual(m, L), targets, scale, 1, loss_sum));
  void *g0 = gpt_cuda_residual(m, L + 1), *g1 = gpt_cuda_residual(m, L + 2);
  LOOM_CHECK(gpt_cuda_head_backward_input(m, g0));
  if (!split) LOOM_CHECK(gpt_cuda_head_backward_weight(m));
  for (int l = L - 1; l >= 0; l--) {
    LOOM_CHECK(gpt_cuda_block_backward_input(m, l, g0, g1));
    if (!split) LOOM_CHECK(gpt_cuda_block_backward_weight(m, l));
    void *t = g0;
    g0 = g1, g1 = t;
  }
  if (split) {
    LOOM_CHECK(gpt_cuda_head_backward_weight(m));
    for (int l = L - 1; l >= 0; l--) LOOM_CHECK(gpt_cuda_block_backward_weight(m, l));
  }
  return gpt_cuda_embed_backward_weight(m, g0);
}

loom_status gpt_cuda_eval(gpt_cuda *m, const int *tokens, const int *targets, double *loss_sum) {
  int L = m->L;
  LOOM_CHECK(gpt_cuda_embed_forward(m, tokens, gpt_cuda_residual(m, 0)));
  for (int l = 0; l < L; l++)
    LOOM_CHECK(gpt_cuda_block_forward(m, l, gpt_cuda_residual(m, l), gpt_cuda_residual(m, l + 1)));
  return gpt_cuda_head_forward(m, gpt_cuda_residual(m, L), targets, 1.0, 0, loss_sum);
}

}  // extern "C"
