/* The bfloat16 CUDA GPT-2 (examples/gpt/gpt_cuda.cu) against the double-precision reference
 * (examples/gpt/gpt_ref.c), on GPT-2-scale weights (normal 0.02 plus normal 0.02 on every
 * bias and LayerNorm parameter, so that each path carries a gradient) and random tokens from
 * a fresh seed per run (printed; LOOM_SEED=<n> replays one). Exit 77 without a GPU.
 *
 * Tolerances: the loss within 1e-2 relative and every gradient tensor with cosine similarity
 * >= 0.999 against the reference and its norm within 2e-2 (the cosine alone is blind to a
 * wrong scale). bfloat16 keeps 8 significant bits (2^-9 = 2e-3 relative
 * rounding per stored activation and weight); the errors of a few dozen roundings along a
 * path add up to a few 1e-3 on the loss and a cosine of 0.9999 or better, while a wrong
 * formula (a missing term, a transposed matrix, a mask off by one) gives cosines far below
 * 0.99. Also checked: the run repeats bit for bit, the split order (every backward-input,
 * then every backward-weight) gives the same gradients bit for bit, and the evaluation's
 * loss equals the training step's. */
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../examples/gpt/gpt_cuda.h"
#include "../../examples/gpt/gpt_ref.h"

static int failures, checks;

static void expect(int ok, const char *what) {
  checks++;
  if (!ok) {
    failures++;
    printf("FAIL %s\n", what);
  }
}

static void check_shape(gpt_shape shape, int B, int T, gpt_attention_kind attention, uint64_t seed) {
  gpt_layout layout;
  gpt_cuda *model = NULL;
  const char *kind = attention == GPT_ATTENTION_FLASH ? "flash" : "batched";
  if (gpt_layout_init(&shape, &layout) != LOOM_OK ||
      gpt_cuda_create(&layout, B, T, 1, attention, NULL, &model) != LOOM_OK) {
    printf("FAIL setup: %s\n", loom_error_string());
    failures++;
    return;
  }
  size_t P = layout.total, N = (size_t)B * T;
  float *params = malloc(sizeof(float) * P), *grads = malloc(sizeof(float) * P);
  float *grads_split = malloc(sizeof(float) * P), *grads_again = malloc(sizeof(float) * P);
  double *params64 = malloc(sizeof(double) * P), *grads64 = malloc(sizeof(double) * P);
  int *tokens = malloc(sizeof(int) * N), *targets = malloc(sizeof(int) * N);
  loom_rng rng;
  loom_rng_init(&rng, seed, LOOM_RNG_TEST, (uint32_t)shape.layers);
  gpt_init_params(&layout, seed, params);
  for (int t = 0; t < layout.count; t++)
    if (layout.tensor[t].ndims == 1)
      for (size_t i = 0; i < layout.tensor[t].count; i++)
        params[layout.tensor[t].offset + i] += (float)(0.02 * loom_rng_normal(&rng));
  for (size_t i = 0; i < P; i++) params64[i] = params[i];
  for (size_t i = 0; i < N; i++) {
    tokens[i] = (int)loom_rng_below(&rng, (uint64_t)shape.vocab);
    targets[i] = (int)loom_rng_below(&rng, (uint64_t)shape.vocab);
  }
  double loss64 = 0, sum = 0, sum_split = 0, sum_again = 0, sum_eval = 0;
  int ok = gpt_ref_forward_backward(&layout, params64, tokens, targets, B, T, &loss64, grads64) == LOOM_OK;
  double scale = 1.0 / (double)N;
  ok = ok && gpt_cuda_set_params(model, params) == LOOM_OK;
  ok = ok && gpt_cuda_train_step(model, tokens, targets, scale, 0, &sum) == LOOM_OK &&
       gpt_cuda_get_grads(model, grads) == LOOM_OK && gpt_cuda_zero_grads(model) == LOOM_OK;
  ok = ok && gpt_cuda_train_step(model, tokens, targets, scale, 1, &sum_split) == LOOM_OK &&
       gpt_cuda_get_grads(model, grads_split) == LOOM_OK && gpt_cuda_zero_grads(model) == LOOM_OK;
  ok = ok && gpt_cuda_train_step(model, tokens, targets, scale, 0, &sum_again) == LOOM_OK &&
       gpt_cuda_get_grads(model, grads_again) == LOOM_OK;
  ok = ok && gpt_cuda_eval(model, tokens, targets, &sum_eval) == LOOM_OK;
  if (!ok) {
    printf("FAIL L%d d%d: %s\n", shape.layers, shape.width, loom_error_string());
    failures++;
    goto done;
  }
  char what[256];
  double loss = sum / (double)N, rel = fabs(loss - loss64) / fabs(loss64);
  snprintf(what, sizeof what, "%s L%d d%d H%d V%d B%d T%d: loss %.6f vs reference %.6f (%.1e relative, "
           "limit 1e-2)", kind, shape.layers, shape.width, shape.heads, shape.vocab, B, T, loss, loss64, rel);
  expect(rel <= 1e-2, what);
  double worst = 1;
  const char *worst_name = "";
  for (int t = 0; t < layout.count; t++) {
    const gpt_tensor *g = &layout.tensor[t];
    double dot = 0, a2 = 0, b2 = 0;
    for (size_t i = 0; i < g->count; i++) {
      double a = grads[g->offset + i], b = grads64[g->offset + i];
      dot += a * b, a2 += a * a, b2 += b * b;
    }
    double cosine = a2 > 0 && b2 > 0 ? dot / sqrt(a2 * b2) : (a2 == b2 ? 1 : 0);
    /* the cosine is blind to scale: the norms must agree too (a missing 1/N, a doubled term) */
    double norm_rel = b2 > 0 ? fabs(sqrt(a2) - sqrt(b2)) / sqrt(b2) : sqrt(a2);
    snprintf(what, sizeof what, "%s L%d d%d gradient %s: cosine %.6f (limit 0.999), |g| %.3e vs %.3e "
             "(%.1e relative, limit 2e-2)", kind, shape.layers, shape.width, g->name, cosine,
             sqrt(a2), sqrt(b2), norm_rel);
    expect(cosine >= 0.999 && norm_rel <= 2e-2, what);
    if (cosine < worst) worst = cosine, worst_name = g->name;
  }
  expect(memcmp(grads, grads_again, sizeof(float) * P) == 0 && sum == sum_again,
         "a second identical step gives the same loss and gradients bit for bit");
  expect(memcmp(grads, grads_split, sizeof(float) * P) == 0 && sum == sum_split,
         "backward-input for all units, then backward-weight: bit-identical");
  expect(sum_eval == sum, "evaluation loss equals the training step's");
  printf("%-7s L%d d%d H%d V%d B%d T%d: loss %.6f (reference %.6f, %.1e relative), worst gradient "
         "cosine %s %.6f; %.1f MiB on the device\n", kind, shape.layers, shape.width, shape.heads,
         shape.vocab, B, T, loss, loss64, rel, worst_name, worst,
         gpt_cuda_device_bytes(model) / 1048576.0);
done:
  gpt_cuda_destroy(model);
  free(params), free(grads), free(grads_split), free(grads_again), free(params64), free(grads64);
  free(tokens), free(targets);
}

int main(void) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    printf("test_gpt_cuda: no GPU, skipped\n");
    return 77;
  }
  const char *fixed = getenv("LOOM_SEED");
  uint64_t seed = fixed ? strtoull(fixed, NULL, 10) : (uint64_t)time(NULL);
  printf("test_gpt_cuda: seed %llu (LOOM_SEED=%llu replays it)\n", (unsigned long long)seed,
         (unsigned long long)seed);
  /* head sizes 16 (batched only), 64, 32, 64 at GPT-2 scale, 128; T of 1 to 4 flash tiles, not
   * all multiples of the tile (64) */
  const struct { gpt_shape shape; int B, T; } cases[] = {
      {{.layers = 2, .width = 64, .heads = 4, .vocab = 61, .context = 32}, 2, 32},
      {{.layers = 1, .width = 128, .heads = 2, .vocab = 256, .context = 200}, 3, 200},
      {{.layers = 3, .width = 64, .heads = 2, .vocab = 50, .context = 16}, 4, 13},
      /* GPT-2's width, heads and vocabulary (padded logits rows), two blocks */
      {{.layers = 2, .width = 768, .heads = 12, .vocab = 50257, .context = 70}, 2, 70},
      /* head size 128, flash's largest tiles */
      {{.layers = 1, .width = 256, .heads = 2, .vocab = 97, .context = 100}, 2, 100},
  };
  for (int i = 0; i < 5; i++)
    for (int a = 0; a < 2; a++) {
      gpt_attention_kind kind = a ? GPT_ATTENTION_BATCHED : GPT_ATTENTION_FLASH;
      if (kind == GPT_ATTENTION_FLASH && i == 0) continue; /* head size 16: flash is not built for it */
      check_shape(cases[i].shape, cases[i].B, cases[i].T, kind, seed + (uint64_t)i);
    }
  /* flash refuses a head size it is not built for, with a message */
  {
    gpt_layout layout;
    gpt_cuda *model = NULL;
    gpt_shape odd = {.layers = 1, .width = 48, .heads = 1, .vocab = 10, .context = 8};
    gpt_layout_init(&odd, &layout);
    loom_status s = gpt_cuda_create(&layout, 1, 8, 0, GPT_ATTENTION_FLASH, NULL, &model);
    expect(s == LOOM_ERR_ARG && strstr(loom_error_string(), "head sizes"),
           "flash attention refuses head size 48 with a message");
    if (s == LOOM_OK) gpt_cuda_destroy(model);
  }
  printf("test_gpt_cuda: %d checks, %d failures\n", checks, failures);
  return failures ? 1 : 0;
}
