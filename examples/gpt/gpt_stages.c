/* The GPT as pipeline stages on the CPU (see gpt_stages.h). A stage pass for micro-batch j
 * runs in the slot the micro-batch took at its forward: the slot holds the stage's block
 * buffers (a gpt_cpu part) and the residual stream between its blocks; it is given back after
 * the micro-batch's last backward pass (B, or W when split). */
#include "gpt_stages.h"

#include <mpi.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  gpt_cpu *model; /* this stage's blocks (and head) for one micro-batch */
  float *x;       /* (blocks + 1, N, d): the stage input, then each block's output */
  float *embed_dx;/* (N, d) stage 0: the gradient at the embedding's output, for its W */
} slot;

typedef struct {
  int stage, first_block, blocks, embed, head;
  int slot_count, *slot_of; /* (microbatches) slot of each micro-batch in flight, -1 when none */
  int *free_slots, free_count;
  slot *slots;
} local_stage;

struct gpt_stages {
  gpt_layout layout;
  const loom_pipeline_schedule *schedule;
  loom_group *pp;
  loom_ddp *ddp;
  int rank, S, m, chunks, B, T;
  size_t N, d;
  float *params;       /* (total) */
  float *grad32;       /* (total) one pass's float32 gradient */
  double *grad64;      /* (total) the step's, for the owned tensors (the table's buffers) */
  double *head_wte64;  /* (V d) last stage: the head's part of wte's gradient */
  float *g0, *g1;      /* (N, d) each: gradients between a stage's blocks */
  int *tokens, *targets; /* (m, N) */
  double *loss, scale;   /* (m) summed cross-entropy of each micro-batch */
  int *owner;          /* (tensor count) stage owning each tensor */
  int *table_index;    /* (tensor count) parameter-table index of an owned tensor, else -1 */
  loom_pipeline_tensor *boundaries; /* (S - 1) what crosses each: (N, d) float32 */
  int first_rank, last_rank; /* pipeline ranks of stage 0 (owns wte) and of the last stage */
  local_stage *local;  /* (chunks) */
  size_t activation_bytes;
  const gpt_attention *attention; /* sequence parallelism: across the SP group (else NULL) */
  const int *positions;           /* (T) and the positions of this rank's tokens (else NULL) */
};

static int stage_first_block(const gpt_stages *g, int s) { return s * g->layout.shape.layers / g->S; }

static local_stage *local_of(gpt_stages *g, int stage) {
  for (int c = 0; c < g->chunks; c++)
    if (g->local[c].stage == stage) return &g->local[c];
  return NULL;
}

static int owner_stage(const gpt_stages *g, int tensor) {
  int count = g->layout.count;
  if (tensor < 2) return 0;              /* wte, wpe */
  if (tensor >= count - 2) return g->S - 1; /* ln_f */
  int layer = (tensor - 2) / GPT_BLOCK_TENSORS;
  for (int s = g->S - 1; s >= 0; s--)
    if (layer >= stage_first_block(g, s)) return s;
  return 0;
}

/* Most micro-batches of `chunk` in flight at once in this rank's list (F to its last
 * backward pass): the slots the stage needs. */
static int peak_in_flight(const gpt_stages *g, int chunk) {
  int count, live = 0, peak = 0;
  const loom_pipeline_action *a = loom_pipeline_actions(g->schedule, g->rank, &count);
  for (int i = 0; i < count; i++) {
    if (a[i].chunk != chunk) continue;
    if (a[i].op == LOOM_PIPELINE_FORWARD && ++live > peak) peak = live;
    if (a[i].op == LOOM_PIPELINE_BACKWARD || a[i].op == LOOM_PIPELINE_BACKWARD_WEIGHT) live--;
  }
  return peak;
}

static loom_status create_local(gpt_stages *g, local_stage *l) {
  l->slot_of = malloc(sizeof(int) * (size_t)g->m);
  l->free_slots = malloc(sizeof(int) * (size_t)l->slot_count);
  l->slots = calloc((size_t)l->slot_count, sizeof *l->slots);
  if (!l->slot_of || !l->free_slots || !l->slots) return loom_error_set(LOOM_ERR_NOMEM, "GPT stage slots");
  for (int j = 0; j < g->m; j++) l->slot_of[j] = -1;
  for (int k = 0; k < l->slot_count; k++) {
    slot *sl = &l->slots[k];
    LOOM_CHECK(gpt_cpu_create_part(&g->layout, g->B, g->T, g->attention, l->first_block, l->blocks, l->head, &sl->model));
    if (g->positions) LOOM_CHECK(gpt_cpu_set_positions(sl->model, g->positions));
    sl->x = malloc(sizeof(float) * ((size_t)l->blocks + 1) * g->N * g->d);
    sl->embed_dx = l->embed ? malloc(sizeof(float) * g->N * g->d) : NULL;
    if (!sl->x || (l->embed && !sl->embed_dx)) return loom_error_set(LOOM_ERR_NOMEM, "GPT stage residuals");
    l->free_slots[l->free_count++] = l->slot_count - 1 - k;
    g->activation_bytes += gpt_cpu_block_activation_bytes(sl->model) * (size_t)l->blocks +
                           (l->head ? gpt_cpu_head_activation_bytes(sl->model) : 0) +
                           sizeof(float) * ((size_t)l->blocks + 1 + (size_t)l->embed) * g->N * g->d;
  }
  return LOOM_OK;
}

loom_status gpt_stages_create(loom_group *pp, const gpt_layout *layout,
                              const loom_pipeline_schedule *schedule, int B, int T, uint64_t seed,
                              const gpt_attention *attention, const int *positions,
                              gpt_stages **out) {
  *out = NULL;
  int S = loom_pipeline_schedule_stages(schedule), L = layout->shape.layers;
  if (S > L)
    return loom_error_set(LOOM_ERR_ARG, "pipeline: %d stages (pp=%d x chunks=%d) but the model has "
                          "%d blocks; every stage needs at least one block (use fewer stages or "
                          "more --layers)", S, loom_pipeline_schedule_ranks(schedule),
                          loom_pipeline_schedule_chunks(schedule), L);
  if (loom_group_size(pp) != loom_pipeline_schedule_ranks(schedule))
    return loom_error_set(LOOM_ERR_ARG, "pipeline: the PP group has %d ranks, the schedule %d",
                          loom_group_size(pp), loom_pipeline_schedule_ranks(schedule));
  int flag = 0, *tag_ub = NULL, m = loom_pipeline_schedule_microbatches(schedule);
  if (MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &tag_ub, &flag) != MPI_SUCCESS)
    return loom_error_set(LOOM_ERR_MPI, "GPT stages: reading MPI_TAG_UB failed");
  if (flag && 2LL * m * S + 1 > *tag_ub) /* wte_tag and wte_tag + 1 */
    return loom_error_set(LOOM_ERR_ARG, "GPT stages: %d micro-batches x %d stages need message "
                          "tags up to %lld, MPI allows %d; use fewer micro-batches", m, S,
                          2LL * m * S + 1, *tag_ub);
  gpt_stages *g = calloc(1, sizeof *g);
  if (!g) return loom_error_set(LOOM_ERR_NOMEM, "GPT stages");
  g->layout = *layout, g->schedule = schedule, g->pp = pp, g->rank = loom_group_rank(pp);
  g->S = S, g->m = loom_pipeline_schedule_microbatches(schedule);
  g->first_rank = loom_pipeline_stage_rank(schedule, 0), g->last_rank = loom_pipeline_stage_rank(schedule, S - 1);
  g->chunks = loom_pipeline_schedule_chunks(schedule), g->B = B, g->T = T;
  g->attention = attention, g->positions = positions;
  g->N = (size_t)B * T, g->d = (size_t)layout->shape.width;
  size_t P = layout->total, wte = layout->tensor[0].count;
  g->params = malloc(sizeof(float) * P), g->grad32 = calloc(P, sizeof(float));
  g->grad64 = calloc(P, sizeof(double)), g->head_wte64 = calloc(wte, sizeof(double));
  g->g0 = malloc(sizeof(float) * g->N * g->d), g->g1 = malloc(sizeof(float) * g->N * g->d);
  g->tokens = malloc(sizeof(int) * g->N * (size_t)g->m), g->targets = malloc(sizeof(int) * g->N * (size_t)g->m);
  g->loss = calloc((size_t)g->m, sizeof(double));
  g->owner = malloc(sizeof(int) * (size_t)layout->count), g->table_index = malloc(sizeof(int) * (size_t)layout->count);
  g->local = calloc((size_t)g->chunks, sizeof *g->local);
  g->boundaries = malloc(sizeof *g->boundaries * (size_t)S);
  loom_status status = LOOM_OK;
  if (!g->params || !g->grad32 || !g->grad64 || !g->head_wte64 || !g->g0 || !g->g1 || !g->tokens ||
      !g->targets || !g->loss || !g->owner || !g->table_index || !g->local || !g->boundaries)
    status = loom_error_set(LOOM_ERR_NOMEM, "GPT stages (%zu parameters)", P);
  if (status == LOOM_OK) {
    gpt_init_params(layout, seed, g->params);
    for (int i = 0; i < layout->count; i++) g->owner[i] = owner_stage(g, i), g->table_index[i] = -1;
    for (int b = 0; b < S - 1; b++) g->boundaries[b] = (loom_pipeline_tensor){g->N * g->d, LOOM_FLOAT32};
  }
  for (int c = 0; status == LOOM_OK && c < g->chunks; c++) {
    local_stage *l = &g->local[c];
    l->stage = loom_pipeline_rank_stage(schedule, g->rank, c);
    l->first_block = stage_first_block(g, l->stage);
    l->blocks = stage_first_block(g, l->stage + 1) - l->first_block;
    l->embed = l->stage == 0, l->head = l->stage == S - 1;
    l->slot_count = peak_in_flight(g, c);
    status = create_local(g, l);
  }
  if (status != LOOM_OK) {
    gpt_stages_destroy(g);
    return status;
  }
  *out = g;
  return LOOM_OK;
}

void gpt_stages_destroy(gpt_stages *g) {
  if (!g) return;
  for (int c = 0; g->local && c < g->chunks; c++) {
    local_stage *l = &g->local[c];
    for (int k = 0; l->slots && k < l->slot_count; k++) {
      gpt_cpu_destroy(l->slots[k].model);
      free(l->slots[k].x), free(l->slots[k].embed_dx);
    }
    free(l->slots), free(l->slot_of), free(l->free_slots);
  }
  free(g->local), free(g->params), free(g->grad32), free(g->grad64), free(g->head_wte64);
  free(g->g0), free(g->g1), free(g->tokens), free(g->targets), free(g->loss);
  free(g->owner), free(g->table_index), free(g->boundaries), free(g);
}

const float *gpt_stages_params(const gpt_stages *g) { return g->params; }
size_t gpt_stages_activation_bytes(const gpt_stages *g) { return g->activation_bytes; }

double gpt_stages_microbatches_in_flight(const gpt_stages *g) {
  int slots = 0;
  for (int c = 0; c < g->chunks; c++) slots += g->local[c].slot_count;
  return (double)slots / g->chunks;
}

loom_status gpt_stages_add_params(gpt_stages *g, loom_params *params, int decay_group,
                                  int no_decay_group) {
  for (int i = 0; i < g->layout.count; i++) {
    if (!local_of(g, g->owner[i])) continue;
    const gpt_tensor *t = &g->layout.tensor[i];
    loom_param p = {.name = t->name,
                    .value = loom_buf_host(g->params + t->offset, t->count, LOOM_FLOAT32),
                    .grad = loom_buf_host(g->grad64 + t->offset, t->count, LOOM_FLOAT64),
                    .spec = {.dtype = LOOM_FLOAT32, .ndims = t->ndims, .shape = {t->shape[0], t->shape[1]}},
                    .reduce_axis = LOOM_AXIS_GRAD,
                    .group = t->decay ? decay_group : no_decay_group};
    g->table_index[i] = loom_params_count(params);
    LOOM_CHECK(loom_params_add(params, &p, NULL));
  }
  return LOOM_OK;
}

loom_status gpt_stages_set_microbatch(gpt_stages *g, int j, const int *tokens, const int *targets) {
  if (j < 0 || j >= g->m)
    return loom_error_set(LOOM_ERR_ARG, "GPT stages: micro-batch %d outside [0, %d)", j, g->m);
  memcpy(g->tokens + (size_t)j * g->N, tokens, sizeof(int) * g->N);
  memcpy(g->targets + (size_t)j * g->N, targets, sizeof(int) * g->N);
  return LOOM_OK;
}

/* Tags of the two wte transfers, above the executor's (below 2 m S); checked at creation. */
static int wte_tag(const gpt_stages *g) { return 2 * g->m * g->S; }

loom_status gpt_stages_begin_step(gpt_stages *g, double scale, loom_ddp *ddp) {
  g->scale = scale, g->ddp = ddp;
  for (int i = 0; i < g->layout.count; i++)
    if (g->table_index[i] >= 0) {
      const gpt_tensor *t = &g->layout.tensor[i];
      memset(g->grad64 + t->offset, 0, sizeof(double) * t->count);
    }
  memset(g->head_wte64, 0, sizeof(double) * g->layout.tensor[0].count);
  memset(g->loss, 0, sizeof(double) * (size_t)g->m);
  int first = g->first_rank, last = g->last_rank;
  if (first == last) return LOOM_OK;
  loom_buf wte = loom_buf_host(g->params, g->layout.tensor[0].count, LOOM_FLOAT32);
  if (g->rank == first) return loom_send(g->pp, wte, last, wte_tag(g));
  if (g->rank == last) return loom_recv(g->pp, wte, first, wte_tag(g));
  return LOOM_OK;
}

static loom_status mark_ready(gpt_stages *g, int stage, int with_wte) {
  for (int i = g->layout.count - 1; g->ddp && i >= 0; i--)
    if (g->owner[i] == stage && (i != 0 || with_wte)) LOOM_CHECK(loom_ddp_param_ready(g->ddp, g->table_index[i]));
  return LOOM_OK;
}

loom_status gpt_stages_end_step(gpt_stages *g, double *loss_sum) {
  int first = g->first_rank, last = g->last_rank;
  size_t wte = g->layout.tensor[0].count;
  loom_buf head = loom_buf_host(g->head_wte64, wte, LOOM_FLOAT64);
  if (first != last && g->rank == last) LOOM_CHECK(loom_send(g->pp, head, first, wte_tag(g) + 1));
  if (first != last && g->rank == first) LOOM_CHECK(loom_recv(g->pp, head, last, wte_tag(g) + 1));
  if (g->rank == first) {
    for (size_t i = 0; i < wte; i++) g->grad64[i] += g->head_wte64[i]; /* embedding part + head part */
    if (g->ddp) LOOM_CHECK(loom_ddp_param_ready(g->ddp, g->table_index[0]));
  }
  double sum = 0;
  if (g->rank == last)
    for (int j = 0; j < g->m; j++) sum += g->loss[j]; /* micro-batch order, as the plain run */
  loom_buf one = loom_buf_host(&sum, 1, LOOM_FLOAT64);
  LOOM_CHECK(loom_broadcast(g->pp, one, last));
  *loss_sum = sum;
  return LOOM_OK;
}

loom_status gpt_stages_gather_params(gpt_stages *g) {
  for (int i = 0; i < g->layout.count; i++) {
    const gpt_tensor *t = &g->layout.tensor[i];
    loom_buf b = loom_buf_host(g->params + t->offset, t->count, LOOM_FLOAT32);
    LOOM_CHECK(loom_broadcast(g->pp, b, loom_pipeline_stage_rank(g->schedule, g->owner[i])));
  }
  return LOOM_OK;
}

/* float32 gradient of tensors [first, end) from zero, for one pass */
static void zero_pass(gpt_stages *g, int first, int end) {
  const gpt_tensor *a = &g->layout.tensor[first], *b = &g->layout.tensor[end - 1];
  memset(g->grad32 + a->offset, 0, sizeof(float) * (b->offset + b->count - a->offset));
}

/* into[i] += the pass's float32 gradient over tensors [first, end), at layout offsets (into is
 * grad64, or head_wte64 for wte, which starts the layout) */
static void add_pass(gpt_stages *g, int first, int end, double *into) {
  const gpt_tensor *a = &g->layout.tensor[first], *b = &g->layout.tensor[end - 1];
  for (size_t i = a->offset; i < b->offset + b->count; i++) into[i] += g->grad32[i];
}

static loom_status on_forward(void *user, int stage, int j, const loom_buf *input, loom_buf *output) {
  gpt_stages *g = user;
  local_stage *l = local_of(g, stage);
  if (!l)
    return loom_error_set(LOOM_ERR_INTERNAL, "GPT stages: stage %d is not on pipeline rank %d", stage, g->rank);
  if (l->slot_of[j] >= 0)
    return loom_error_set(LOOM_ERR_INTERNAL, "GPT stage %d: second forward of micro-batch %d", stage, j);
  if (l->free_count == 0)
    return loom_error_set(LOOM_ERR_INTERNAL, "GPT stage %d: all %d activation slots in use at the "
                          "forward of micro-batch %d (the schedule has more in flight than counted)",
                          stage, l->slot_count, j);
  int k = l->slot_of[j] = l->free_slots[--l->free_count];
  slot *sl = &l->slots[k];
  size_t nd = g->N * g->d;
  if (l->embed) gpt_embed_forward(sl->model, g->params, g->tokens + (size_t)j * g->N, sl->x);
  else memcpy(sl->x, input->ptr, sizeof(float) * nd);
  for (int b = 0; b < l->blocks; b++)
    gpt_block_forward(sl->model, l->first_block + b, g->params, sl->x + nd * b, sl->x + nd * (b + 1));
  float *x_out = sl->x + nd * (size_t)l->blocks;
  if (l->head) g->loss[j] = gpt_head_forward(sl->model, g->params, x_out, g->targets + (size_t)j * g->N, g->scale);
  else memcpy(output->ptr, x_out, sizeof(float) * nd);
  return LOOM_OK;
}

static loom_status weight_pass(gpt_stages *g, local_stage *l, int j);

static loom_status on_backward(void *user, int stage, int j, const loom_buf *output_grad,
                               loom_buf *input_grad, int weights) {
  gpt_stages *g = user;
  local_stage *l = local_of(g, stage);
  if (!l || l->slot_of[j] < 0)
    return loom_error_set(LOOM_ERR_INTERNAL, "GPT stage %d: backward of micro-batch %d before its forward", stage, j);
  slot *sl = &l->slots[l->slot_of[j]];
  size_t nd = g->N * g->d;
  float *g0 = g->g0, *g1 = g->g1;
  if (l->head) gpt_head_backward_input(sl->model, g->params, g0);
  else memcpy(g0, output_grad->ptr, sizeof(float) * nd);
  for (int b = l->blocks - 1; b >= 0; b--) {
    gpt_block_backward_input(sl->model, l->first_block + b, g->params, g0, g1);
    float *t = g0;
    g0 = g1, g1 = t;
  }
  if (l->embed) memcpy(sl->embed_dx, g0, sizeof(float) * nd);
  else memcpy(input_grad->ptr, g0, sizeof(float) * nd);
  return weights ? weight_pass(g, l, j) : LOOM_OK;
}

/* The stage's weight gradients of micro-batch j: each unit's float32 from zero, into float64. */
static loom_status weight_pass(gpt_stages *g, local_stage *l, int j) {
  slot *sl = &l->slots[l->slot_of[j]];
  int count = g->layout.count;
  if (l->head) { /* wte's head part apart; ln_f into the table */
    zero_pass(g, 0, 1), zero_pass(g, count - 2, count);
    gpt_head_backward_weight(sl->model, g->grad32);
    add_pass(g, 0, 1, g->head_wte64), add_pass(g, count - 2, count, g->grad64);
  }
  if (l->blocks > 0) {
    int first = gpt_tensor_index(&g->layout, l->first_block, 0);
    int end = gpt_tensor_index(&g->layout, l->first_block + l->blocks, 0);
    zero_pass(g, first, end);
    for (int b = l->blocks - 1; b >= 0; b--) gpt_block_backward_weight(sl->model, l->first_block + b, g->grad32);
    add_pass(g, first, end, g->grad64);
  }
  if (l->embed) {
    zero_pass(g, 0, 2);
    gpt_embed_backward_weight(sl->model, g->tokens + (size_t)j * g->N, sl->embed_dx, g->grad32);
    add_pass(g, 0, 2, g->grad64);
  }
  l->free_slots[l->free_count++] = l->slot_of[j]; /* the micro-batch is done here */
  l->slot_of[j] = -1;
  return LOOM_OK;
}

static loom_status on_backward_weight(void *user, int stage, int j) {
  gpt_stages *g = user;
  local_stage *l = local_of(g, stage);
  if (!l || l->slot_of[j] < 0)
    return loom_error_set(LOOM_ERR_INTERNAL, "GPT stage %d: weight pass of micro-batch %d without its backward", stage, j);
  return weight_pass(g, l, j);
}

static loom_status on_stage_finished(void *user, int stage) {
  return mark_ready(user, stage, 0); /* wte waits for the head's part (gpt_stages_end_step) */
}

void gpt_stages_executor_params(gpt_stages *g, loom_pipeline_executor_params *params) {
  params->schedule = g->schedule;
  params->boundaries = g->boundaries;
  params->on_device = 0;
  params->ops = (loom_pipeline_stage_ops){.user = g, .forward = on_forward, .backward = on_backward,
                                          .backward_weight = on_backward_weight,
                                          .stage_finished = on_stage_finished};
}
