/* Writes one float32 CPU GPT-2 forward/backward to an HDF5 file for a check by a model no one
 * here wrote (tests/examples/test_gpt_torch.py builds it in PyTorch from these weights):
 *
 *   gpt_dump OUT.h5 SEED LAYERS WIDTH HEADS VOCAB B T
 *
 * OUT.h5: attributes layers, width, heads, vocab, context (= T), B, T, loss (mean
 * cross-entropy, float64); datasets tokens and targets (B, T) int32, logits (B*T, vocab)
 * float32, params/<name> and grads/<name> (gradient of the mean loss) float32 in loom's
 * layout (Linear weights (out, in), Hugging Face names as in gpt_layout.h).
 * Weights are normal(0, 0.2) (ten times GPT-2's scale, LayerNorm weights 1 + normal) so that
 * every gradient stands well above float32 rounding. */
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>

#include "../../examples/gpt/gpt_cpu.h"

static int put(hid_t where, const char *name, hid_t type, int ndims, const hsize_t *dims,
               const void *data) {
  hid_t space = H5Screate_simple(ndims, dims, NULL);
  hid_t set = H5Dcreate2(where, name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  int ok = set >= 0 && H5Dwrite(set, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0;
  if (set >= 0) H5Dclose(set);
  H5Sclose(space);
  return ok;
}

static int attribute(hid_t file, const char *name, hid_t type, const void *value) {
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(file, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  int ok = a >= 0 && H5Awrite(a, type, value) >= 0;
  if (a >= 0) H5Aclose(a);
  H5Sclose(space);
  return ok;
}

int main(int argc, char **argv) {
  if (argc != 9) {
    fprintf(stderr, "usage: gpt_dump OUT.h5 SEED LAYERS WIDTH HEADS VOCAB B T\n");
    return 2;
  }
  uint64_t seed = strtoull(argv[2], NULL, 10);
  int B = atoi(argv[7]), T = atoi(argv[8]);
  gpt_shape shape = {.layers = atoi(argv[3]), .width = atoi(argv[4]), .heads = atoi(argv[5]),
                     .vocab = atoi(argv[6]), .context = T};
  gpt_layout layout;
  gpt_cpu *model = NULL;
  if (B < 1 || gpt_layout_init(&shape, &layout) != LOOM_OK ||
      gpt_cpu_create(&layout, B, T, NULL, &model) != LOOM_OK) {
    fprintf(stderr, "gpt_dump: %s\n", B < 1 ? "B must be >= 1" : loom_error_string());
    return 1;
  }
  size_t P = layout.total, N = (size_t)B * T;
  float *params = malloc(sizeof(float) * P), *grads = calloc(P, sizeof(float));
  float *logits = malloc(sizeof(float) * N * (size_t)shape.vocab);
  int *tokens = malloc(sizeof(int) * N), *targets = malloc(sizeof(int) * N);
  loom_rng rng;
  loom_rng_init(&rng, seed, LOOM_RNG_TEST, 7);
  gpt_init_params(&layout, seed, params);
  for (size_t i = 0; i < P; i++)
    params[i] = (float)(0.2 * loom_rng_normal(&rng)) + (params[i] == 1.0f ? 1.0f : 0.0f);
  for (size_t i = 0; i < N; i++) {
    tokens[i] = (int)loom_rng_below(&rng, (uint64_t)shape.vocab);
    targets[i] = (int)loom_rng_below(&rng, (uint64_t)shape.vocab);
  }
  /* logits from a forward without targets, then the training step for loss and gradients */
  size_t nd = N * (size_t)shape.width;
  float *x = malloc(sizeof(float) * nd), *y = malloc(sizeof(float) * nd);
  gpt_embed_forward(model, params, tokens, x);
  for (int l = 0; l < shape.layers; l++) {
    gpt_block_forward(model, l, params, x, y);
    float *swap = x;
    x = y, y = swap;
  }
  gpt_head_forward(model, params, x, NULL, 1.0);
  for (size_t i = 0; i < N * (size_t)shape.vocab; i++) logits[i] = gpt_head_logits(model)[i];
  double loss = gpt_cpu_train_step(model, params, tokens, targets, 1.0 / (double)N, grads, grads) / N;

  int ok = 1;
  hid_t file = H5Fcreate(argv[1], H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (file < 0) {
    fprintf(stderr, "gpt_dump: cannot create %s\n", argv[1]);
    return 1;
  }
  hid_t pg = H5Gcreate2(file, "params", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  hid_t gg = H5Gcreate2(file, "grads", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  for (int t = 0; t < layout.count; t++) {
    const gpt_tensor *g = &layout.tensor[t];
    hsize_t dims[2] = {(hsize_t)g->shape[0], (hsize_t)g->shape[1]};
    ok &= put(pg, g->name, H5T_NATIVE_FLOAT, g->ndims, dims, params + g->offset);
    ok &= put(gg, g->name, H5T_NATIVE_FLOAT, g->ndims, dims, grads + g->offset);
  }
  hsize_t bt[2] = {(hsize_t)B, (hsize_t)T}, nv[2] = {N, (hsize_t)shape.vocab};
  ok &= put(file, "tokens", H5T_NATIVE_INT, 2, bt, tokens);
  ok &= put(file, "targets", H5T_NATIVE_INT, 2, bt, targets);
  ok &= put(file, "logits", H5T_NATIVE_FLOAT, 2, nv, logits);
  const int ints[] = {shape.layers, shape.width, shape.heads, shape.vocab, T, B, T};
  const char *names[] = {"layers", "width", "heads", "vocab", "context", "B", "T"};
  for (int i = 0; i < 7; i++) ok &= attribute(file, names[i], H5T_NATIVE_INT, &ints[i]);
  ok &= attribute(file, "loss", H5T_NATIVE_DOUBLE, &loss);
  H5Gclose(pg), H5Gclose(gg);
  ok &= H5Fclose(file) >= 0;
  printf("gpt_dump: L%d d%d H%d V%d B%d T%d seed %llu: loss %.9f -> %s\n", shape.layers,
         shape.width, shape.heads, shape.vocab, B, T, (unsigned long long)seed, loss, argv[1]);
  gpt_cpu_destroy(model);
  free(params), free(grads), free(logits), free(tokens), free(targets), free(x), free(y);
  return ok ? 0 : 1;
}
