/* Dynamic sequence parallelism (DSP, Zhao et al., "DSP: Dynamic Sequence Parallelism for
 * Multi-Dimensional Transformers") on a spatial-temporal block trained on synthetic video
 * [batch, time, space, channels]: the block attends over space within each frame, then over
 * time at each space position. With time sharded over the ranks the spatial attention is
 * local; loom_reshard then switches the sharded dimension to space, the temporal attention is
 * local too, and a second reshard switches back. Per block and rank that is 2 N C / p elements
 * forward (N = B T S tokens) and the same backward, where Ulysses on the flattened sequence
 * moves Q, K, V and the output of each of the two attentions, 8 N C / p.
 *
 * Training: predict the next frame (mean squared error), SGD; gradients summed over the world.
 * Frames and space positions need not divide by the rank count (the split rule of
 * reshard.h). --verify also runs the whole problem on every rank without sharding and checks
 * the sharded run against it (outputs bit for bit; each group's arithmetic is the same either
 * way), and the single-rank gradients against central differences.
 *   mpirun -np P dsp_video [--batch 2 --frames 8 --space 12 --channels 16 --heads 4 --steps 5
 *                          --lr 20 --verify] (--help lists them; --seed picks the video) */
#include <loom.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parallel/sequence/reshard.h"
#include "st_attention.h"

typedef struct {
  int B, T, S, C, H, steps, verify;
  double lr;
  uint64_t seed;
} options;

typedef struct {
  int64_t t0, Tl, s0, Sl; /* this rank's frames (time-sharded) and space positions */
  st_groups spatial, temporal, spatial_full, temporal_full;
  double resharded_forward, resharded_backward; /* elements of this rank's shards */
} layout;

// Synthetic video: moving waves plus noise from the seed; the target is the next frame.
static float pixel(const options *o, int b, int t, int s, int c) {
  t %= o->T;
  uint64_t h = o->seed ^ ((uint64_t)(((b * o->T + t) * o->S + s) * o->C + c) * 0x9e3779b97f4a7c15ull);
  h ^= h >> 31, h *= 0xbf58476d1ce4e5b9ull, h ^= h >> 29;
  double noise = (double)(h >> 11) / 9007199254740992.0 - 0.5;
  return (float)(sin(0.4 * t + 0.7 * s + 0.3 * c + b) + 0.1 * noise);
}

// x or target (next frame) for frames [t0, t0 + Tl) of (B, T, S, C)
static void fill(const options *o, int64_t t0, int64_t Tl, int next, float *x) {
  size_t at = 0;
  for (int b = 0; b < o->B; b++)
    for (int64_t t = t0; t < t0 + Tl; t++)
      for (int s = 0; s < o->S; s++)
        for (int c = 0; c < o->C; c++) x[at++] = pixel(o, b, (int)t + next, s, c);
}

static st_groups over_space(const options *o, int64_t frames) {
  return (st_groups){.groups = (int)(o->B * frames), .tokens = o->S, .inner = (int)(o->B * frames),
                     .group_stride = (size_t)o->S * o->C, .token_stride = (size_t)o->C};
}

static st_groups over_time(const options *o, int64_t positions) {
  return (st_groups){.groups = (int)(o->B * positions), .tokens = o->T, .inner = (int)positions,
                     .outer_stride = (size_t)o->T * positions * o->C, .group_stride = (size_t)o->C,
                     .token_stride = (size_t)positions * o->C};
}

static loom_status reshard(loom_group *world, const options *o, int from, int to, const float *in,
                           float *out, size_t count, double *elements) {
  loom_reshard_spec spec = {.ndims = 4, .shape = {o->B, o->T, o->S, o->C}, .from = from, .to = to};
  *elements += (double)count;
  size_t out_count = (size_t)spec.shape[0] * spec.shape[3];
  int64_t first, n;
  loom_reshard_slice(&spec, to, loom_group_rank(world), loom_group_size(world), &first, &n);
  out_count *= (size_t)n * (size_t)(to == 1 ? o->S : o->T);
  return loom_reshard(world, &spec, loom_buf_host((void *)in, count, LOOM_FLOAT32),
                      loom_buf_host(out, out_count, LOOM_FLOAT32));
}

typedef struct {
  float *x, *target, *y, *y_s, *z_s, *z, *dz, *dz_s, *dy_s, *dy, *dx;
  float *saved_spatial, *saved_temporal;
} buffers;

// One forward and backward of the block on this rank's shards: the loss (summed over the
// world) and the parameter gradients (summed over the world into grads).
static loom_status step(loom_group *world, const options *o, layout *l, const float *params,
                        buffers *k, float *grads, double *loss) {
  size_t P = st_attention_params(o->C);
  size_t local = (size_t)o->B * l->Tl * o->S * o->C, spatial_count = (size_t)o->B * o->T * l->Sl * o->C;
  double count = (double)o->B * o->T * o->S * o->C;
  memset(grads, 0, sizeof(float) * 2 * P);
  st_attention_forward(params, o->C, o->H, &l->spatial, k->x, k->y, k->saved_spatial);
  LOOM_CHECK(reshard(world, o, 1, 2, k->y, k->y_s, local, &l->resharded_forward));
  st_attention_forward(params + P, o->C, o->H, &l->temporal, k->y_s, k->z_s, k->saved_temporal);
  LOOM_CHECK(reshard(world, o, 2, 1, k->z_s, k->z, spatial_count, &l->resharded_forward));
  double sum = 0;
  for (size_t i = 0; i < local; i++) {
    double e = (double)k->z[i] - k->target[i];
    sum += 0.5 * e * e;
    k->dz[i] = (float)(e / count);
  }
  LOOM_CHECK(reshard(world, o, 1, 2, k->dz, k->dz_s, local, &l->resharded_backward));
  st_attention_backward(params + P, o->C, o->H, &l->temporal, k->saved_temporal, k->dz_s, k->dy_s, grads + P);
  LOOM_CHECK(reshard(world, o, 2, 1, k->dy_s, k->dy, spatial_count, &l->resharded_backward));
  st_attention_backward(params, o->C, o->H, &l->spatial, k->saved_spatial, k->dy, k->dx, grads);
  LOOM_CHECK(loom_allreduce(world, loom_buf_host(grads, 2 * P, LOOM_FLOAT32),
                            loom_buf_host(grads, 2 * P, LOOM_FLOAT32), LOOM_OP_SUM));
  LOOM_CHECK(loom_allreduce(world, loom_buf_host(&sum, 1, LOOM_FLOAT64), loom_buf_host(&sum, 1, LOOM_FLOAT64), LOOM_OP_SUM));
  *loss = sum / count;
  return LOOM_OK;
}

// The whole problem on this rank, unsharded: output z (B, T, S, C), loss and gradients.
static double whole(const options *o, const layout *l, const float *params, float *z, float *grads) {
  size_t n = (size_t)o->B * o->T * o->S * o->C, P = st_attention_params(o->C);
  float *x = malloc(sizeof(float) * n * 4), *y = x + n, *target = y + n, *dz = target + n;
  float *ss = malloc(sizeof(float) * st_attention_saved(o->C, o->H, &l->spatial_full));
  float *st = malloc(sizeof(float) * st_attention_saved(o->C, o->H, &l->temporal_full));
  fill(o, 0, o->T, 0, x), fill(o, 0, o->T, 1, target);
  st_attention_forward(params, o->C, o->H, &l->spatial_full, x, y, ss);
  st_attention_forward(params + P, o->C, o->H, &l->temporal_full, y, z, st);
  double sum = 0;
  for (size_t i = 0; i < n; i++) {
    double e = (double)z[i] - target[i];
    sum += 0.5 * e * e;
    dz[i] = (float)(e / (double)n);
  }
  if (grads) {
    memset(grads, 0, sizeof(float) * 2 * P);
    st_attention_backward(params + P, o->C, o->H, &l->temporal_full, st, dz, y, grads + P);
    st_attention_backward(params, o->C, o->H, &l->spatial_full, ss, y, x, grads);
  }
  free(x), free(ss), free(st);
  return sum / (double)n;
}

// Sharded output and gradients against the unsharded run; single-rank gradients against
// central differences (h = 1e-2 on 12 parameters, within 2 % of the largest gradient: float32
// losses carry about 1e-7 relative noise, which h turns into about 1e-5).
static int verify(const options *o, layout *l, const float *params, const buffers *k,
                  const float *grads, int rank) {
  size_t n = (size_t)o->B * o->T * o->S * o->C, P = st_attention_params(o->C);
  float *z = malloc(sizeof(float) * n), *want = malloc(sizeof(float) * 2 * P);
  whole(o, l, params, z, want);
  int bad = 0;
  size_t at = 0;
  for (int b = 0; b < o->B; b++)
    for (int64_t t = l->t0; t < l->t0 + l->Tl; t++)
      for (int s = 0; s < o->S * o->C; s++, at++)
        bad += memcmp(&k->z[at], &z[(((size_t)b * o->T + t) * o->S * o->C) + s], sizeof(float)) != 0;
  double gmax = 0, gerr = 0;
  for (size_t i = 0; i < 2 * P; i++) gmax = fmax(gmax, fabs(want[i])), gerr = fmax(gerr, fabs(want[i] - grads[i]));
  int grad_bad = gerr > 1e-5 * gmax;
  double fd_err = 0;
  float *probe = malloc(sizeof(float) * 2 * P);
  memcpy(probe, params, sizeof(float) * 2 * P);
  for (int j = 0; j < 12; j++) {
    size_t i = ((size_t)j * 2654435761u) % (2 * P);
    float keep = probe[i], h = 1e-2f;
    probe[i] = keep + h;
    double up = whole(o, l, probe, z, NULL);
    probe[i] = keep - h;
    double down = whole(o, l, probe, z, NULL);
    probe[i] = keep;
    fd_err = fmax(fd_err, fabs((up - down) / (2.0 * h) - want[i]));
  }
  int fd_bad = fd_err > 0.02 * gmax;
  printf("verify (rank %d): %d of %zu output elements differ from the unsharded run; gradients within "
         "%.2e of the largest (%.3e; limit 1e-5); central differences within %.2e of it (limit 2e-2): %s\n",
         rank, bad, (size_t)o->B * l->Tl * o->S * o->C, gmax > 0 ? gerr / gmax : 0, gmax,
         gmax > 0 ? fd_err / gmax : 0, bad || grad_bad || fd_bad ? "FAIL" : "ok");
  free(z), free(want), free(probe);
  return bad || grad_bad || fd_bad;
}

// 0 to go on, else the exit code (2: bad flags)
static int parse(options *o, loom_config *config, int argc, char **argv) {
  *o = (options){.B = 2, .T = 8, .S = 12, .C = 16, .H = 4, .steps = 5, .lr = 20};
  const loom_option table[] = {
      {"batch", LOOM_OPTION_INT, &o->B, "videos per step", NULL, 1, 1 << 16},
      {"frames", LOOM_OPTION_INT, &o->T, "frames per video (time)", NULL, 1, 1 << 20},
      {"space", LOOM_OPTION_INT, &o->S, "space positions per frame", NULL, 1, 1 << 20},
      {"channels", LOOM_OPTION_INT, &o->C, "channels per position", NULL, 1, 1 << 16},
      {"heads", LOOM_OPTION_INT, &o->H, "attention heads (divide the channels)", NULL, 1, 1 << 10},
      {"steps", LOOM_OPTION_INT, &o->steps, "SGD steps", NULL, 1, 1 << 20},
      {"lr", LOOM_OPTION_DOUBLE, &o->lr, "learning rate", NULL, 0, 100},
      {"verify", LOOM_OPTION_BOOL, &o->verify, "check the first step against the unsharded block and central differences"},
  };
  int count = (int)(sizeof table / sizeof table[0]), rank = loom_launcher_rank();
  if (loom_config_parse(config, table, count, argc, argv) != LOOM_OK) {
    if (rank == 0) fprintf(stderr, "dsp_video: %s\n", loom_error_string());
    return 2;
  }
  if (config->help) {
    if (rank == 0) loom_config_usage(stdout, "dsp_video", config, table, count);
    return 1;
  }
  if (o->C % o->H) {
    if (rank == 0) fprintf(stderr, "dsp_video: the heads (%d) must divide the channels (%d)\n", o->H, o->C);
    return 2;
  }
  o->seed = config->seed;
  return 0;
}

int main(int argc, char **argv) {
  options o;
  loom_config config = LOOM_CONFIG_INIT;
  loom_ctx *ctx = NULL;
  int code = parse(&o, &config, argc, argv);
  if (code) return code == 1 ? 0 : code;
  if (loom_init(&config, &argc, &argv, &ctx) != LOOM_OK) {
    fprintf(stderr, "dsp_video: %s\n", loom_error_string());
    return 1;
  }
  loom_group *world = loom_ctx_world(ctx);
  int rank = loom_group_rank(world), p = loom_group_size(world);
  layout l = {0};
  loom_reshard_spec spec = {.ndims = 4, .shape = {o.B, o.T, o.S, o.C}, .from = 1, .to = 2};
  loom_reshard_slice(&spec, 1, rank, p, &l.t0, &l.Tl);
  loom_reshard_slice(&spec, 2, rank, p, &l.s0, &l.Sl);
  l.spatial = over_space(&o, l.Tl), l.temporal = over_time(&o, l.Sl);
  l.spatial_full = over_space(&o, o.T), l.temporal_full = over_time(&o, o.S);
  size_t P = st_attention_params(o.C), local = (size_t)o.B * l.Tl * o.S * o.C;
  size_t spatial_count = (size_t)o.B * o.T * l.Sl * o.C;
  buffers k = {0};
  float *arena = calloc(7 * local + 4 * spatial_count + 1, sizeof(float));
  float *params = malloc(sizeof(float) * 2 * P), *grads = malloc(sizeof(float) * 2 * P);
  k.saved_spatial = malloc(sizeof(float) * (st_attention_saved(o.C, o.H, &l.spatial) + 1));
  k.saved_temporal = malloc(sizeof(float) * (st_attention_saved(o.C, o.H, &l.temporal) + 1));
  if (!arena || !params || !grads || !k.saved_spatial || !k.saved_temporal) {
    fprintf(stderr, "dsp_video (rank %d): out of memory\n", rank);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  float *at = arena;
  k.x = at, k.target = at += local, k.y = at += local, k.z = at += local, k.dz = at += local;
  k.dy = at += local, k.dx = at += local, k.y_s = at += local, k.z_s = at += spatial_count;
  k.dz_s = at += spatial_count, k.dy_s = at += spatial_count;
  fill(&o, l.t0, l.Tl, 0, k.x), fill(&o, l.t0, l.Tl, 1, k.target);
  for (size_t i = 0; i < 2 * P; i++) /* the same on every rank: small, from the seed */
    params[i] = (float)(0.3 / sqrt((double)o.C) * sin(1.0 + (double)i * 0.618 + (double)o.seed));
  if (rank == 0)
    printf("dsp_video: %d ranks, video (B %d, T %d, S %d, C %d), %d heads, %zu parameters\n", p, o.B,
           o.T, o.S, o.C, o.H, 2 * P);
  for (int s = 0; s < o.steps && code == 0; s++) {
    double loss = 0;
    if (step(world, &o, &l, params, &k, grads, &loss) != LOOM_OK) {
      fprintf(stderr, "dsp_video (rank %d): %s\n", rank, loom_error_string());
      code = 1;
      break;
    }
    if (rank == 0) printf("step %d loss %.9g\n", s + 1, loss);
    if (o.verify && s == 0) code = verify(&o, &l, params, &k, grads, rank);
    for (size_t i = 0; i < 2 * P; i++) params[i] -= (float)o.lr * grads[i];
  }
  if (rank == 0 && code == 0) {
    double n_c = (double)o.B * o.T * o.S * o.C;
    printf("dsp: %.0f elements resharded per block forward, %.0f backward, on rank 0 (2 N C / p = %.0f "
           "for even shards); Ulysses on the same block: %.0f forward (8 N C / p), %.1fx DSP's\n",
           l.resharded_forward / o.steps, l.resharded_backward / o.steps, 2 * n_c / p,
           p > 1 ? 8 * n_c / p : 0.0, p > 1 ? 8 * n_c / p / (l.resharded_forward / o.steps) : 0.0);
  }
  free(arena), free(params), free(grads), free(k.saved_spatial), free(k.saved_temporal);
  int total = 0;
  MPI_Allreduce(&code, &total, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  loom_finalize(ctx);
  return total;
}
