/* ISA-L erasure coding throughput of loom's snapshot code (checkpoint/erasure.h), one core:
 * encode (k data -> m parity) and rebuild (m data fragments lost) of fragments of --bytes each,
 * for the group shapes snapshots use. GB/s counts the data bytes covered (k x fragment) per
 * second, the measure of how fast a node's snapshots are protected or recovered; the peer is a
 * plain memcpy of the same bytes in the same run.
 *   loom-erasure-bench [--bytes 64M --reps 5] */
#include <loom.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint/erasure.h"

static int compare(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  uint64_t bytes = 64u << 20;
  int reps = 5;
  loom_option options[] = {
      {"bytes", LOOM_OPTION_UINT64, &bytes, "bytes per fragment"},
      {"reps", LOOM_OPTION_INT, &reps, "repetitions (median)", NULL, 1, 101},
  };
  loom_config config = LOOM_CONFIG_INIT;
  if (loom_config_parse(&config, options, 2, argc, argv) != LOOM_OK) {
    fprintf(stderr, "loom-erasure-bench: %s\n", loom_error_string());
    return 2;
  }
  if (config.help) {
    loom_config_usage(stdout, "loom-erasure-bench", &config, options, 2);
    return 0;
  }
  const int shapes[][2] = {{1, 1}, {2, 1}, {3, 1}, {4, 2}, {6, 2}, {8, 2}, {8, 3}};
  int shape_count = (int)(sizeof shapes / sizeof shapes[0]);
  printf("# ISA-L Reed-Solomon (Cauchy), one core, %llu MiB fragments, median of %d\n",
         (unsigned long long)(bytes >> 20), reps);
  printf("%4s %4s | %12s %12s | %12s\n", "k", "m", "encode GB/s", "rebuild GB/s", "memcpy GB/s");
  for (int s = 0; s < shape_count; s++) {
    int k = shapes[s][0], m = shapes[s][1];
    uint8_t *store = malloc((size_t)(k + m) * bytes), *out = malloc((size_t)k * bytes);
    if (!store || !out) {
      fprintf(stderr, "loom-erasure-bench: out of memory\n");
      return 1;
    }
    for (size_t i = 0; i < (size_t)(k + m) * bytes; i++) store[i] = (uint8_t)(i * 2654435761u >> 13);
    const uint8_t *data[LOOM_EC_MAX_FRAGMENTS], *fragments[LOOM_EC_MAX_FRAGMENTS];
    uint8_t *parity[LOOM_EC_MAX_FRAGMENTS], *rebuilt[LOOM_EC_MAX_FRAGMENTS];
    for (int j = 0; j < k; j++) data[j] = store + (size_t)j * bytes, rebuilt[j] = out + (size_t)j * bytes;
    for (int i = 0; i < m; i++) parity[i] = store + (size_t)(k + i) * bytes;
    double enc[101], reb[101], cpy[101];
    for (int r = 0; r < reps; r++) {
      double t0 = loom_now();
      if (loom_ec_encode(k, m, bytes, data, parity) != LOOM_OK) {
        fprintf(stderr, "loom-erasure-bench: %s\n", loom_error_string());
        return 1;
      }
      double t1 = loom_now();
      for (int f = 0; f < k + m; f++) fragments[f] = f < m ? NULL : store + (size_t)f * bytes;
      if (loom_ec_rebuild(k, m, bytes, fragments, rebuilt) != LOOM_OK) { /* the first m lost */
        fprintf(stderr, "loom-erasure-bench: %s\n", loom_error_string());
        return 1;
      }
      double t2 = loom_now();
      memcpy(out, store, (size_t)k * bytes);
      double t3 = loom_now();
      enc[r] = t1 - t0, reb[r] = t2 - t1, cpy[r] = t3 - t2;
      if (memcmp(out, store, (size_t)(k < m ? k : m) * bytes) != 0) {
        fprintf(stderr, "loom-erasure-bench: rebuild differs (k=%d m=%d)\n", k, m);
        return 1;
      }
    }
    qsort(enc, (size_t)reps, sizeof(double), compare);
    qsort(reb, (size_t)reps, sizeof(double), compare);
    qsort(cpy, (size_t)reps, sizeof(double), compare);
    double covered = (double)k * (double)bytes / 1e9;
    printf("%4d %4d | %12.2f %12.2f | %12.2f\n", k, m, covered / enc[reps / 2], covered / reb[reps / 2],
           covered / cpy[reps / 2]);
    free(store);
    free(out);
  }
  return 0;
}
