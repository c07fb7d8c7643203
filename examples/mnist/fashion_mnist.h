/* Fashion-MNIST in IDX format, gzip-compressed, as Debian's dataset-fashion-mnist package
 * installs it (/usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz). */
#ifndef LOOM_EXAMPLES_FASHION_MNIST_H
#define LOOM_EXAMPLES_FASHION_MNIST_H

#include <loom.h>
#include <stdint.h>

#define FASHION_MNIST_DEFAULT_DIR "/usr/share/datasets/fashion-mnist"

typedef struct {
  int count;         /* images */
  int rows, cols;    /* 28 x 28 */
  uint8_t *pixels;   /* (count, rows * cols) */
  int *labels;       /* (count) in 0..9 */
} fashion_mnist_split;

/* Loads split "train" (60000) or "t10k" (10000) from `dir`. A missing file is LOOM_ERR_IO and
 * a truncated or malformed one LOOM_ERR_CORRUPT, each naming the path and the Debian package. */
loom_status fashion_mnist_load(const char *dir, const char *split, fashion_mnist_split *out);
void fashion_mnist_free(fashion_mnist_split *split);

/* Sample i as normalised floats ((x / 255 - 0.2860) / 0.3530), rows * cols of them. */
void fashion_mnist_normalize(const fashion_mnist_split *split, int index, float *out);

#endif
