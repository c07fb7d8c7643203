/* IDX reader over zlib: big-endian header (magic, dimensions), then unsigned bytes. Every
 * field is checked against what Fashion-MNIST must be, so a damaged file is named, not read. */
#include "fashion_mnist.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

static const char package_hint[] = "install Debian's dataset-fashion-mnist (apt-get install "
                                   "dataset-fashion-mnist) or pass --data-dir";

/* Reads exactly `bytes` or reports the file as truncated. */
static loom_status read_exact(gzFile f, const char *path, void *out, size_t bytes) {
  size_t done = 0;
  while (done < bytes) {
    unsigned chunk = bytes - done > (1u << 30) ? (1u << 30) : (unsigned)(bytes - done);
    int n = gzread(f, (char *)out + done, chunk);
    if (n <= 0) {
      int zerr = 0;
      const char *message = gzerror(f, &zerr);
      return loom_error_set(LOOM_ERR_CORRUPT, "%s: truncated or damaged after %zu of %zu bytes "
                            "(%s); %s", path, done, bytes, zerr ? message : "end of file",
                            package_hint);
    }
    done += (size_t)n;
  }
  return LOOM_OK;
}

static uint32_t big_endian(const unsigned char *b) {
  return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

/* Opens `path`, checks magic and dimensions; returns the payload in *data. */
static loom_status read_idx(const char *path, uint32_t magic, int dims, const uint32_t *expect,
                            uint8_t **data, size_t *bytes) {
  gzFile f = gzopen(path, "rb");
  if (!f)
    return loom_error_set(LOOM_ERR_IO, "%s: cannot open (%s); %s", path,
                          errno ? strerror(errno) : "zlib", package_hint);
  unsigned char header[16];
  loom_status s = read_exact(f, path, header, 4 + 4 * (size_t)dims);
  size_t payload = 1;
  if (s == LOOM_OK && big_endian(header) != magic)
    s = loom_error_set(LOOM_ERR_CORRUPT, "%s: IDX magic 0x%08x, expected 0x%08x; not a "
                       "Fashion-MNIST file (%s)", path, big_endian(header), magic, package_hint);
  for (int d = 0; s == LOOM_OK && d < dims; d++) {
    uint32_t size = big_endian(header + 4 + 4 * d);
    if (size != expect[d])
      s = loom_error_set(LOOM_ERR_CORRUPT, "%s: dimension %d is %u, expected %u (%s)", path, d,
                         size, expect[d], package_hint);
    payload *= size;
  }
  uint8_t *buffer = NULL;
  if (s == LOOM_OK) {
    buffer = malloc(payload);
    if (!buffer) s = loom_error_set(LOOM_ERR_NOMEM, "%s: %zu bytes", path, payload);
  }
  if (s == LOOM_OK) s = read_exact(f, path, buffer, payload);
  if (s == LOOM_OK) {
    char extra;
    if (gzread(f, &extra, 1) > 0)
      s = loom_error_set(LOOM_ERR_CORRUPT, "%s: longer than its header says (%zu bytes of data); "
                         "%s", path, payload, package_hint);
  }
  gzclose(f);
  if (s != LOOM_OK) {
    free(buffer);
    return s;
  }
  *data = buffer;
  *bytes = payload;
  return LOOM_OK;
}

loom_status fashion_mnist_load(const char *dir, const char *split, fashion_mnist_split *out) {
  memset(out, 0, sizeof *out);
  uint32_t count;
  if (strcmp(split, "train") == 0) count = 60000;
  else if (strcmp(split, "t10k") == 0) count = 10000;
  else return loom_error_set(LOOM_ERR_ARG, "Fashion-MNIST split '%s'; accepted train t10k", split);
  char path[4096];
  uint8_t *labels = NULL;
  size_t bytes = 0;
  snprintf(path, sizeof path, "%s/%s-images-idx3-ubyte.gz", dir, split);
  const uint32_t image_dims[3] = {count, 28, 28};
  LOOM_CHECK(read_idx(path, 0x00000803u, 3, image_dims, &out->pixels, &bytes));
  snprintf(path, sizeof path, "%s/%s-labels-idx1-ubyte.gz", dir, split);
  const uint32_t label_dims[1] = {count};
  loom_status s = read_idx(path, 0x00000801u, 1, label_dims, &labels, &bytes);
  if (s == LOOM_OK) {
    out->labels = malloc(sizeof(int) * count);
    if (!out->labels) s = loom_error_set(LOOM_ERR_NOMEM, "%u labels", count);
  }
  for (uint32_t i = 0; s == LOOM_OK && i < count; i++) {
    if (labels[i] > 9)
      s = loom_error_set(LOOM_ERR_CORRUPT, "%s: label %u of sample %u is outside 0..9 (%s)",
                         path, labels[i], i, package_hint);
    else
      out->labels[i] = labels[i];
  }
  free(labels);
  if (s != LOOM_OK) {
    fashion_mnist_free(out);
    return s;
  }
  out->count = (int)count;
  out->rows = out->cols = 28;
  return LOOM_OK;
}

void fashion_mnist_free(fashion_mnist_split *split) {
  free(split->pixels);
  free(split->labels);
  memset(split, 0, sizeof *split);
}

void fashion_mnist_normalize(const fashion_mnist_split *split, int index, float *out) {
  size_t n = (size_t)split->rows * split->cols;
  const uint8_t *pixels = split->pixels + (size_t)index * n;
  for (size_t i = 0; i < n; i++) out[i] = ((float)pixels[i] / 255.0f - 0.2860f) / 0.3530f;
}
