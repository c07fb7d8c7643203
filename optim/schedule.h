/* Learning-rate schedules and batch-size scaling.
 * Schedule: linear warm-up from 0 to `peak` over `warmup_steps`, then constant or cosine
 * decay to `floor` at `total_steps` (Loshchilov & Hutter, SGDR, ICLR'17). Batch scaling: the
 * square-root rule lr' = lr * sqrt(batch' / batch), which Grendel (Zhao et al., 2024) uses
 * to keep Adam's updates comparable when the batch grows with the number of ranks. */
#ifndef LOOM_OPTIM_SCHEDULE_H
#define LOOM_OPTIM_SCHEDULE_H

#include <stdint.h>

#include "runtime/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { LOOM_SCHEDULE_CONSTANT, LOOM_SCHEDULE_COSINE } loom_schedule_kind;

typedef struct {
  loom_schedule_kind kind;
  double peak;          /* learning rate after warm-up */
  double floor;         /* cosine: learning rate at total_steps */
  int64_t warmup_steps; /* 0: no warm-up */
  int64_t total_steps;  /* cosine: steps to reach floor (held after) */
} loom_schedule;

/* LOOM_ERR_ARG naming the field for a negative rate, floor > peak, or a cosine schedule
 * whose total_steps does not exceed warmup_steps. */
loom_status loom_schedule_check(const loom_schedule *schedule);
/* Learning rate of step `step` (0-based): (step + 1) / warmup * peak during warm-up. */
double loom_schedule_lr(const loom_schedule *schedule, int64_t step);
/* lr * sqrt(new_batch / base_batch); both batches > 0. */
double loom_lr_sqrt_scale(double lr, int64_t base_batch, int64_t new_batch);

#ifdef __cplusplus
}
#endif
#endif
