/* The float32 CPU GPT-2 against the double-precision reference (examples/gpt/gpt_ref.c), on
 * random weights and tokens from a fresh seed per run (printed; LOOM_SEED=<n> replays one).
 *
 * Tolerances: the loss within 1e-6 relative and every gradient tensor within 1e-5 of its
 * largest reference element (max |g32 - g64| / max |g64|). float32 carries 6e-8 relative
 * rounding per operation; a loss is a sum over N = 64 rows of sums over 32..128 products, and
 * the gradients go through up to 2 L + 2 LayerNorm backward passes (each of which subtracts
 * two means from a value of similar size, cancelling about one digit), so 1e-6 and 1e-5 leave
 * a factor of ten over the observed errors while a wrong formula (a missing term, a transposed
 * weight) is off by 1e-2 or more. Weights are normal(0, 0.2), ten times GPT-2's scale, so
 * that every path carries a gradient well above the rounding.
 * Also checked: splitting backward into backward-input then backward-weight for all blocks
 * (the zero-bubble order) gives the same gradients bit for bit as the fused order. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../examples/gpt/gpt_cpu.h"
#include "../../examples/gpt/gpt_ref.h"

static int failures, checks;

static void expect(int ok, const char *what, double value, double limit) {
  checks++;
  if (!ok) {
    failures++;
    printf("FAIL %s: %.3e (limit %.1e)\n", what, value, limit);
  }
}

static void check_shape(gpt_shape shape, int B, int T, uint64_t seed) {
  gpt_layout layout;
  if (gpt_layout_init(&shape, &layout) != LOOM_OK) {
    printf("FAIL layout: %s\n", loom_error_string());
    failures++;
    return;
  }
  size_t P = layout.total, N = (size_t)B * T;
  float *params = malloc(sizeof(float) * P), *grads = calloc(P, sizeof(float));
  float *grads_split = calloc(P, sizeof(float));
  double *params64 = malloc(sizeof(double) * P), *grads64 = malloc(sizeof(double) * P);
  int *tokens = malloc(sizeof(int) * N), *targets = malloc(sizeof(int) * N);
  loom_rng rng;
  loom_rng_init(&rng, seed, LOOM_RNG_TEST, (uint32_t)shape.layers);
  gpt_init_params(&layout, seed, params);
  for (size_t i = 0; i < P; i++) { /* wider weights; LayerNorm weights around 1 */
    params[i] = (float)(0.2 * loom_rng_normal(&rng)) + (fabsf(params[i] - 1.0f) < 1e-6f ? 1.0f : 0.0f);
    params64[i] = params[i];
  }
  for (size_t i = 0; i < N; i++) {
    tokens[i] = (int)loom_rng_below(&rng, (uint64_t)shape.vocab);
    targets[i] = (int)loom_rng_below(&rng, (uint64_t)shape.vocab);
  }
  double loss64 = 0;
  if (gpt_ref_forward_backward(&layout, params64, tokens, targets, B, T, &loss64, grads64) != LOOM_OK) {
    printf("FAIL reference: %s\n", loom_error_string());
    failures++;
    goto done;
  }
  gpt_cpu *model = NULL;
  if (gpt_cpu_create(&layout, B, T, NULL, &model) != LOOM_OK) {
    printf("FAIL model: %s\n", loom_error_string());
    failures++;
    goto done;
  }
  double loss32 = gpt_cpu_train_step(model, params, tokens, targets, 1.0 / (double)N, grads, grads) / N;
  char what[128];
  snprintf(what, sizeof what, "L%d d%d H%d V%d T%d: loss %.9f vs reference %.9f (relative)",
           shape.layers, shape.width, shape.heads, shape.vocab, T, loss32, loss64);
  double rel = fabs(loss32 - loss64) / fabs(loss64);
  expect(rel <= 1e-6, what, rel, 1e-6);
  double worst = 0;
  const char *worst_name = "";
  for (int t = 0; t < layout.count; t++) {
    const gpt_tensor *g = &layout.tensor[t];
    double max_ref = 0, max_diff = 0;
    for (size_t i = 0; i < g->count; i++) {
      max_ref = fmax(max_ref, fabs(grads64[g->offset + i]));
      max_diff = fmax(max_diff, fabs(grads[g->offset + i] - grads64[g->offset + i]));
    }
    double err = max_ref > 0 ? max_diff / max_ref : max_diff;
    snprintf(what, sizeof what, "L%d d%d T%d gradient %s (max |g| %.2e)", shape.layers,
             shape.width, T, g->name, max_ref);
    expect(err <= 1e-5, what, err, 1e-5);
    if (err > worst) worst = err, worst_name = g->name;
  }
  /* backward-input of every unit first, backward-weight after (as a zero-bubble schedule) */
  {
    int L = shape.layers;
    size_t nd = N * (size_t)shape.width;
    float *xs = malloc(sizeof(float) * nd * (size_t)(L + 1)), *dx = malloc(sizeof(float) * nd * (size_t)(L + 1));
    gpt_embed_forward(model, params, tokens, xs);
    for (int l = 0; l < L; l++) gpt_block_forward(model, l, params, xs + nd * l, xs + nd * (l + 1));
    gpt_head_forward(model, params, xs + nd * L, targets, 1.0 / (double)N);
    gpt_head_backward_input(model, params, dx + nd * L);
    for (int l = L - 1; l >= 0; l--) gpt_block_backward_input(model, l, params, dx + nd * (l + 1), dx + nd * l);
    gpt_head_backward_weight(model, grads_split);
    for (int l = L - 1; l >= 0; l--) gpt_block_backward_weight(model, l, grads_split);
    gpt_embed_backward_weight(model, tokens, dx, grads_split);
    expect(memcmp(grads, grads_split, sizeof(float) * P) == 0,
           "backward-input for all units, then backward-weight: bit-identical", 0, 0);
    free(xs), free(dx);
  }
  printf("L%d d%d H%d V%d B%d T%d: loss %.9f (reference %.12f, %.1e relative), worst gradient "
         "%s %.2e; block activations %zu bytes\n", shape.layers, shape.width, shape.heads,
         shape.vocab, B, T, loss32, loss64, rel, worst_name, worst,
         gpt_cpu_block_activation_bytes(model));
  gpt_cpu_destroy(model);
done:
  free(params), free(grads), free(grads_split), free(params64), free(grads64);
  free(tokens), free(targets);
}

int main(void) {
  const char *fixed = getenv("LOOM_SEED");
  uint64_t seed = fixed ? strtoull(fixed, NULL, 10) : (uint64_t)time(NULL);
  printf("test_gpt_ref: seed %llu (LOOM_SEED=%llu replays it)\n", (unsigned long long)seed,
         (unsigned long long)seed);
  check_shape((gpt_shape){.layers = 2, .width = 32, .heads = 4, .vocab = 61, .context = 16}, 4, 16, seed);
  check_shape((gpt_shape){.layers = 1, .width = 48, .heads = 3, .vocab = 256, .context = 32}, 3, 21, seed + 1);
  check_shape((gpt_shape){.layers = 3, .width = 16, .heads = 1, .vocab = 7, .context = 8}, 2, 8, seed + 2);
  printf("test_gpt_ref: %d checks, %d failures\n", checks, failures);
  return failures ? 1 : 0;
}
