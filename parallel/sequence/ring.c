/* Ring attention (see ring.h). Forward, step s of R: the key/value block of ring position
 * (p - s) mod R is here; the exchange that brings the next one is posted first, then this
 * rank's queries attend to the block chunk by chunk (a query chunk after a key chunk sees all
 * of it, the same chunk is causal, an earlier one nothing), updating each row's running max m,
 * sum l and unnormalised output. Backward, step s: the same block visits again; this rank's
 * contribution to the block's dK, dV goes into a fresh buffer, the partial sum of the ranks it
 * visited before arrives meanwhile, the two are added and sent on, so after R hops the owner
 * holds the complete gradient. Key/value messages are (B, T_local, 2, H, hd): the K and V rows
 * of qkv side by side, as are the gradient messages. */
#include "parallel/sequence/ring.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "collectives/coll.h"
#include "runtime/log.h"

struct loom_ring_attention {
  loom_group *group;
  int size, position, prev, next; /* prev, next: group ranks */
  int *order;                     /* (size) group ranks in ring order */
  loom_sp_split split;
  int tag;
  float *kv[2], *dkv[2], *incoming; /* (B, T_local, 2, H, hd) each */
  size_t block_floats;
  float *rows; /* (2, B, H, T_local): m and l in forward, D in backward */
  size_t rows_floats;
  float *scores; /* (T_local) one query's scores against a key chunk */
  size_t score_floats;
  loom_ring_stats stats;
};

loom_status loom_sp_split_parse(const char *word, loom_sp_split *out) {
  if (word && strcmp(word, "zigzag") == 0) *out = LOOM_SP_ZIGZAG;
  else if (word && strcmp(word, "contiguous") == 0) *out = LOOM_SP_CONTIGUOUS;
  else
    return loom_error_set(LOOM_ERR_ARG, "sequence split '%s': zigzag or contiguous",
                          word ? word : "(null)");
  return LOOM_OK;
}

loom_status loom_sp_split_check(loom_sp_split split, int T, int ranks) {
  int parts = split == LOOM_SP_ZIGZAG ? 2 * ranks : ranks;
  if (ranks < 1 || T < parts || T % parts)
    return loom_error_set(LOOM_ERR_ARG, "sequence split over %d ranks (%s): the context (%d) must "
                          "be a multiple of %d", ranks,
                          split == LOOM_SP_ZIGZAG ? "zigzag, 2 chunks per rank" : "contiguous",
                          T, parts);
  return LOOM_OK;
}

// the chunks ring position `rank` holds: their count (1 or 2), first positions and length
static int chunks_of(loom_sp_split split, int T, int ranks, int rank, int start[2], int *length) {
  if (split == LOOM_SP_ZIGZAG) {
    *length = T / (2 * ranks);
    start[0] = rank * *length, start[1] = (2 * ranks - 1 - rank) * *length;
    return 2;
  }
  *length = T / ranks;
  start[0] = rank * *length;
  return 1;
}

void loom_sp_split_positions(loom_sp_split split, int T, int ranks, int rank, int *positions) {
  int start[2], length, n = chunks_of(split, T, ranks, rank, start, &length);
  for (int c = 0; c < n; c++)
    for (int t = 0; t < length; t++) positions[c * length + t] = start[c] + t;
}

loom_status loom_ring_attention_create(const loom_ring_params *p, loom_ring_attention **out) {
  if (!out) return loom_error_set(LOOM_ERR_ARG, "loom_ring_attention_create: out is NULL");
  *out = NULL;
  if (!p || !p->group) return loom_error_set(LOOM_ERR_ARG, "loom_ring_attention_create: a group is needed");
  int group_size = loom_group_size(p->group), me = loom_group_rank(p->group);
  int size = p->size ? p->size : group_size;
  if (size < 1 || size > group_size || p->tag < 0 || (!p->order && p->size && p->size != group_size && me >= size))
    return loom_error_set(LOOM_ERR_ARG, "loom_ring_attention_create: ring of %d ranks of a group "
                          "of %d (tag %d)%s", size, group_size, p->tag,
                          !p->order && me >= size ? ": this rank is not in it" : "");
  if (p->split != LOOM_SP_ZIGZAG && p->split != LOOM_SP_CONTIGUOUS)
    return loom_error_set(LOOM_ERR_ARG, "loom_ring_attention_create: split %d is not a loom_sp_split", (int)p->split);
  loom_ring_attention *r = calloc(1, sizeof *r);
  int *order = malloc(sizeof(int) * (size_t)size);
  if (!r || !order) {
    free(r), free(order);
    return loom_error_set(LOOM_ERR_NOMEM, "ring attention of %d ranks", size);
  }
  r->group = p->group, r->size = size, r->order = order, r->split = p->split, r->tag = p->tag;
  r->position = -1;
  for (int i = 0; i < size; i++) {
    order[i] = p->order ? p->order[i] : i;
    int repeated = 0;
    for (int j = 0; j < i; j++) repeated |= order[j] == order[i];
    if (order[i] < 0 || order[i] >= group_size || repeated) {
      loom_status s = loom_error_set(LOOM_ERR_ARG, "loom_ring_attention_create: ring entry %d is "
                                     "group rank %d: outside [0, %d) or repeated", i, order[i], group_size);
      loom_ring_attention_destroy(r);
      return s;
    }
    if (order[i] == me) r->position = i;
  }
  if (r->position < 0) {
    loom_ring_attention_destroy(r);
    return loom_error_set(LOOM_ERR_ARG, "loom_ring_attention_create: group rank %d is not in the ring", me);
  }
  r->prev = order[(r->position + size - 1) % size], r->next = order[(r->position + 1) % size];
  *out = r;
  return LOOM_OK;
}

void loom_ring_attention_destroy(loom_ring_attention *r) {
  if (!r) return;
  for (int i = 0; i < 2; i++) free(r->kv[i]), free(r->dkv[i]);
  free(r->incoming), free(r->rows), free(r->scores), free(r->order), free(r);
}

int loom_ring_attention_position(const loom_ring_attention *r) { return r->position; }
int loom_ring_attention_size(const loom_ring_attention *r) { return r->size; }

void loom_ring_attention_stats(const loom_ring_attention *r, loom_ring_stats *out) { *out = r->stats; }

// This thread's CPU seconds: the block computation's cost even when ranks share cores.
static double cpu_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static loom_status grow(float **buf, size_t *have, size_t floats) {
  if (floats <= *have) return LOOM_OK;
  float *grown = realloc(*buf, sizeof(float) * floats);
  if (!grown) return loom_error_set(LOOM_ERR_NOMEM, "ring attention buffer of %zu floats", floats);
  *buf = grown, *have = floats;
  return LOOM_OK;
}

// Arguments and buffers for a pass of (B, T_local, H, hd).
static loom_status prepare(loom_ring_attention *r, const char *call, int B, int T_local, int H,
                           int hd, const void *a, const void *b, const void *c) {
  if (B < 1 || T_local < 1 || H < 1 || hd < 1 || !a || !b || !c)
    return loom_error_set(LOOM_ERR_ARG, "%s: B=%d T_local=%d H=%d hd=%d (each >= 1) and buffers "
                          "(none NULL)", call, B, T_local, H, hd);
  if ((int64_t)T_local * r->size > INT_MAX || (int64_t)3 * H * hd > INT_MAX)
    return loom_error_set(LOOM_ERR_ARG, "%s: %d tokens x %d ranks or %d heads x %d exceed 2^31 - 1",
                          call, T_local, r->size, H, hd);
  LOOM_CHECK(loom_sp_split_check(r->split, T_local * r->size, r->size));
  size_t block = (size_t)B * T_local * 2 * H * hd;
  if (block > r->block_floats) { /* five blocks of one size */
    float **blocks[5] = {&r->kv[0], &r->kv[1], &r->dkv[0], &r->dkv[1], &r->incoming};
    for (int i = 0; i < 5; i++) {
      size_t have = r->block_floats;
      LOOM_CHECK(grow(blocks[i], &have, block));
    }
    r->block_floats = block;
  }
  LOOM_CHECK(grow(&r->rows, &r->rows_floats, (size_t)2 * B * H * T_local));
  return grow(&r->scores, &r->score_floats, (size_t)T_local);
}

// K and V rows of qkv (B T_local rows of 3 d) into a message (rows of 2 d)
static void pack_kv(const float *qkv, size_t rows, int d, float *kv) {
  for (size_t t = 0; t < rows; t++) memcpy(kv + t * 2 * d, qkv + t * 3 * d + d, sizeof(float) * 2 * (size_t)d);
}

// Progress for the transfers in flight while computing (MPI moves large messages only inside
// its calls); a failure ends the pass.
static loom_status poke(loom_req **req) {
  if (!*req) return LOOM_OK;
  int done = 0;
  loom_status s = loom_test(req, &done);
  return s == LOOM_INPROGRESS ? LOOM_OK : s;
}

// Online-softmax update of `rows` queries against `keys` keys (causal: query i sees keys
// 0..i of the same chunk). q rows q_ld apart, k and v rows kv_ld apart, o rows o_ld apart; m,
// l: each query's running max and sum of exp(score - m), scores scaled.
static double attend(const float *q, size_t q_ld, const float *k, const float *v, size_t kv_ld,
                     int rows, int keys, int causal, int hd, float scale, float *o, size_t o_ld,
                     float *m, float *l, float *s) {
  double pairs = 0;
  for (int i = 0; i < rows; i++) {
    int n = causal ? i + 1 : keys;
    const float *qi = q + (size_t)i * q_ld;
    float max = m[i];
    for (int j = 0; j < n; j++) {
      const float *kj = k + (size_t)j * kv_ld;
      float dot = 0;
      for (int e = 0; e < hd; e++) dot += qi[e] * kj[e];
      s[j] = dot * scale;
      if (s[j] > max) max = s[j];
    }
    float alpha = expf(m[i] - max), sum = 0, *oi = o + (size_t)i * o_ld;
    for (int e = 0; e < hd; e++) oi[e] *= alpha;
    for (int j = 0; j < n; j++) {
      float pj = expf(s[j] - max);
      const float *vj = v + (size_t)j * kv_ld;
      sum += pj;
      for (int e = 0; e < hd; e++) oi[e] += pj * vj[e];
    }
    l[i] = l[i] * alpha + sum, m[i] = max;
    pairs += n;
  }
  return pairs;
}

// Gradients of `rows` queries against `keys` keys: dq += dS K, dk += dS^T Q, dv += P^T dO with
// P = exp(scores - lse) and dS = P (dO V^T - D) scale; dk, dv rows kv_ld apart like k, v.
static double attend_backward(const float *q, size_t q_ld, const float *k, const float *v,
                              size_t kv_ld, int rows, int keys, int causal, int hd, float scale,
                              const float *dout, size_t o_ld, const float *lse, const float *D,
                              float *dq, float *dk, float *dv) {
  double pairs = 0;
  for (int i = 0; i < rows; i++) {
    int n = causal ? i + 1 : keys;
    const float *qi = q + (size_t)i * q_ld, *gi = dout + (size_t)i * o_ld;
    float *dqi = dq + (size_t)i * q_ld;
    for (int j = 0; j < n; j++) {
      const float *kj = k + (size_t)j * kv_ld, *vj = v + (size_t)j * kv_ld;
      float dot = 0, dp = 0;
      for (int e = 0; e < hd; e++) dot += qi[e] * kj[e], dp += gi[e] * vj[e];
      float pij = expf(dot * scale - lse[i]), ds = pij * (dp - D[i]) * scale;
      float *dkj = dk + (size_t)j * kv_ld, *dvj = dv + (size_t)j * kv_ld;
      for (int e = 0; e < hd; e++) {
        dvj[e] += pij * gi[e];
        dqi[e] += ds * kj[e];
        dkj[e] += ds * qi[e];
      }
    }
    pairs += n;
  }
  return pairs;
}

typedef struct {
  int B, T_local, H, hd, d;
  int my_n, my_start[2], owner_n, owner_start[2], length; /* chunks */
  float scale;
} pass_shape;

static pass_shape shape_of(const loom_ring_attention *r, int B, int T_local, int H, int hd, int owner) {
  pass_shape p = {.B = B, .T_local = T_local, .H = H, .hd = hd, .d = H * hd,
                  .scale = 1.0f / sqrtf((float)hd)};
  int T = T_local * r->size;
  p.my_n = chunks_of(r->split, T, r->size, r->position, p.my_start, &p.length);
  p.owner_n = chunks_of(r->split, T, r->size, owner, p.owner_start, &p.length);
  return p;
}

// Which part of a query chunk at `qs` sees a key chunk at `ks`: -1 none, 0 all, 1 causal.
static int relation(int qs, int ks) { return qs > ks ? 0 : qs == ks ? 1 : -1; }

// This rank's queries against the block `kv` of ring position `owner`.
static loom_status forward_block(loom_ring_attention *r, const pass_shape *p, const float *qkv,
                                 const float *kv, float *out, float *m, float *l, loom_req **req) {
  int d = p->d, len = p->length, Tl = p->T_local;
  for (int b = 0; b < p->B; b++)
    for (int h = 0; h < p->H; h++) {
      for (int a = 0; a < p->my_n; a++)
        for (int c = 0; c < p->owner_n; c++) {
          int rel = relation(p->my_start[a], p->owner_start[c]);
          if (rel < 0) continue;
          size_t qrow = (size_t)b * Tl + (size_t)a * len, krow = (size_t)b * Tl + (size_t)c * len;
          size_t at = ((size_t)b * p->H + h) * Tl + (size_t)a * len;
          r->stats.pairs += attend(qkv + qrow * 3 * d + h * p->hd, 3 * (size_t)d,
                                   kv + krow * 2 * d + h * p->hd, kv + krow * 2 * d + d + h * p->hd,
                                   2 * (size_t)d, len, len, rel, p->hd, p->scale,
                                   out + qrow * d + h * p->hd, (size_t)d, m + at, l + at, r->scores);
        }
      LOOM_CHECK(poke(req));
    }
  return LOOM_OK;
}

loom_status loom_ring_attention_forward(loom_ring_attention *r, int B, int T_local, int H, int hd,
                                        const float *qkv, float *out, float *lse) {
  LOOM_CHECK(prepare(r, "loom_ring_attention_forward", B, T_local, H, hd, qkv, out, lse));
  int R = r->size, d = H * hd;
  size_t rows = (size_t)B * T_local, block = rows * 2 * d, per_head = (size_t)B * H * T_local;
  float *m = r->rows, *l = r->rows + per_head;
  for (size_t i = 0; i < per_head; i++) m[i] = -INFINITY, l[i] = 0;
  memset(out, 0, sizeof(float) * rows * d);
  pack_kv(qkv, rows, d, r->kv[0]);
  loom_req *req = NULL;
  loom_status status = LOOM_OK;
  for (int s = 0; s < R && status == LOOM_OK; s++) {
    float *here = r->kv[s & 1], *coming = r->kv[(s + 1) & 1];
    if (s + 1 < R) {
      loom_p2p ops[2] = {{loom_buf_host(here, block, LOOM_FLOAT32), r->next, r->tag, 1},
                         {loom_buf_host(coming, block, LOOM_FLOAT32), r->prev, r->tag, 0}};
      LOOM_CHECK(loom_p2p_batch(r->group, ops, 2, NULL, &req));
      r->stats.elements_sent += (double)block;
    }
    pass_shape p = shape_of(r, B, T_local, H, hd, (r->position - s + R) % R);
    double start = loom_now(), cpu_start = cpu_now();
    status = forward_block(r, &p, qkv, here, out, m, l, &req);
    double computed = loom_now();
    r->stats.compute_seconds += computed - start;
    r->stats.compute_cpu_seconds += cpu_now() - cpu_start;
    if (s + 1 < R) r->stats.transfers++, r->stats.transfers_hidden += req == NULL;
    loom_status waited = loom_wait(&req);
    if (status == LOOM_OK) status = waited;
    r->stats.wait_seconds += loom_now() - computed;
  }
  LOOM_CHECK(status);
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++)
      for (int t = 0; t < T_local; t++) {
        size_t at = ((size_t)b * H + h) * T_local + t;
        float *o = out + ((size_t)b * T_local + t) * d + h * hd, inv = 1.0f / l[at];
        for (int e = 0; e < hd; e++) o[e] *= inv;
        lse[at] = m[at] + logf(l[at]);
      }
  r->stats.forwards++;
  return LOOM_OK;
}

// This rank's queries against block `kv` of ring position `owner`: dq into dqkv's Q part,
// the block's dK, dV into `dkv`.
static loom_status backward_block(loom_ring_attention *r, const pass_shape *p, const float *qkv,
                                  const float *kv, const float *dout, const float *lse,
                                  const float *D, float *dqkv, float *dkv, loom_req **reqs,
                                  int nreqs) {
  int d = p->d, len = p->length, Tl = p->T_local;
  for (int b = 0; b < p->B; b++)
    for (int h = 0; h < p->H; h++) {
      for (int a = 0; a < p->my_n; a++)
        for (int c = 0; c < p->owner_n; c++) {
          int rel = relation(p->my_start[a], p->owner_start[c]);
          if (rel < 0) continue;
          size_t qrow = (size_t)b * Tl + (size_t)a * len, krow = (size_t)b * Tl + (size_t)c * len;
          size_t at = ((size_t)b * p->H + h) * Tl + (size_t)a * len;
          size_t k_at = krow * 2 * d + h * p->hd;
          r->stats.pairs += attend_backward(
              qkv + qrow * 3 * d + h * p->hd, 3 * (size_t)d, kv + k_at, kv + k_at + d,
              2 * (size_t)d, len, len, rel, p->hd, p->scale, dout + qrow * d + h * p->hd,
              (size_t)d, lse + at, D + at, dqkv + qrow * 3 * d + h * p->hd, dkv + k_at,
              dkv + k_at + d);
        }
      for (int i = 0; i < nreqs; i++) LOOM_CHECK(poke(&reqs[i]));
    }
  return LOOM_OK;
}

loom_status loom_ring_attention_backward(loom_ring_attention *r, int B, int T_local, int H, int hd,
                                         const float *qkv, const float *out, const float *lse,
                                         const float *dout, float *dqkv) {
  LOOM_CHECK(prepare(r, "loom_ring_attention_backward", B, T_local, H, hd, qkv, out, lse));
  if (!dout || !dqkv) return loom_error_set(LOOM_ERR_ARG, "loom_ring_attention_backward: dout or dqkv is NULL");
  int R = r->size, d = H * hd;
  size_t rows = (size_t)B * T_local, block = rows * 2 * d;
  float *D = r->rows; /* (B, H, T_local): dO . O per query and head */
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++)
      for (int t = 0; t < T_local; t++) {
        size_t row = ((size_t)b * T_local + t) * d + h * hd;
        float dot = 0;
        for (int e = 0; e < hd; e++) dot += dout[row + e] * out[row + e];
        D[((size_t)b * H + h) * T_local + t] = dot;
      }
  memset(dqkv, 0, sizeof(float) * rows * 3 * d);
  pack_kv(qkv, rows, d, r->kv[0]);
  enum { KV, PARTIAL_IN, PARTIAL_OUT };
  loom_req *reqs[3] = {NULL, NULL, NULL};
  loom_status status = LOOM_OK;
  float *partial = r->dkv[0];
  for (int s = 0; s < R && status == LOOM_OK; s++) {
    float *here = r->kv[s & 1], *coming = r->kv[(s + 1) & 1];
    partial = r->dkv[s & 1]; /* its send of two steps ago was waited for at the last step */
    /* the block's gradient summed over the ranks it visited before; posted before the next
     * block's exchange so that each peer's messages are received in the order they are sent
     * (kv 0, partial 0, kv 1, partial 1, ...), as transports matching by order need */
    if (s > 0 && (status = loom_recv_async(r->group, loom_buf_host(r->incoming, block, LOOM_FLOAT32),
                                           r->prev, r->tag + 1, &reqs[PARTIAL_IN])) != LOOM_OK)
      break;
    if (s + 1 < R) {
      loom_p2p ops[2] = {{loom_buf_host(here, block, LOOM_FLOAT32), r->next, r->tag, 1},
                         {loom_buf_host(coming, block, LOOM_FLOAT32), r->prev, r->tag, 0}};
      if ((status = loom_p2p_batch(r->group, ops, 2, NULL, &reqs[KV])) != LOOM_OK) break;
      r->stats.elements_sent += (double)block;
    }
    memset(partial, 0, sizeof(float) * block);
    pass_shape p = shape_of(r, B, T_local, H, hd, (r->position - s + R) % R);
    double start = loom_now(), cpu_start = cpu_now();
    status = backward_block(r, &p, qkv, here, dout, lse, D, dqkv, partial, reqs, 3);
    double computed = loom_now();
    r->stats.compute_seconds += computed - start;
    r->stats.compute_cpu_seconds += cpu_now() - cpu_start;
    if (s + 1 < R) r->stats.transfers++, r->stats.transfers_hidden += reqs[KV] == NULL;
    if (s > 0) r->stats.transfers++, r->stats.transfers_hidden += reqs[PARTIAL_IN] == NULL;
    loom_status waited = loom_wait(&reqs[PARTIAL_IN]);
    if (status == LOOM_OK) status = waited;
    if (s > 0 && status == LOOM_OK)
      for (size_t i = 0; i < block; i++) partial[i] += r->incoming[i];
    waited = loom_wait(&reqs[PARTIAL_OUT]);
    if (status == LOOM_OK) status = waited;
    if (R > 1 && status == LOOM_OK) {
      status = loom_send_async(r->group, loom_buf_host(partial, block, LOOM_FLOAT32), r->next,
                               r->tag + 1, &reqs[PARTIAL_OUT]);
      r->stats.elements_sent += (double)block;
    }
    waited = loom_wait(&reqs[KV]);
    if (status == LOOM_OK) status = waited;
    r->stats.wait_seconds += loom_now() - computed;
  }
  if (status == LOOM_OK && R > 1) { /* this rank's own block, back with every rank's part */
    double start = loom_now();
    status = loom_recv(r->group, loom_buf_host(r->incoming, block, LOOM_FLOAT32), r->prev, r->tag + 1);
    partial = r->incoming;
    r->stats.wait_seconds += loom_now() - start;
  }
  loom_status waited = loom_wait_all(reqs, 3);
  LOOM_CHECK(status);
  LOOM_CHECK(waited);
  for (size_t t = 0; t < rows; t++) memcpy(dqkv + t * 3 * d + d, partial + t * 2 * d, sizeof(float) * 2 * (size_t)d);
  r->stats.backwards++;
  return LOOM_OK;
}
