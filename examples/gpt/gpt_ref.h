/* A plain double-precision GPT-2 forward and backward: the reference every fast path (the
 * float32 CPU model, the CUDA model, the parallel splits) is tested against. Not fast; only
 * for small shapes. */
#ifndef LOOM_EXAMPLES_GPT_REF_H
#define LOOM_EXAMPLES_GPT_REF_H

#include "gpt_layout.h"

/* tokens and targets (B, T), row-major, each in [0, vocab); T <= context. *loss is the mean
 * cross-entropy over the B*T positions and `grads` (layout.total, overwritten) its gradient
 * with respect to `params` (layout order). */
loom_status gpt_ref_forward_backward(const gpt_layout *layout, const double *params,
                                     const int *tokens, const int *targets, int B, int T,
                                     double *loss, double *grads);

#endif
