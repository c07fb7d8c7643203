/* Warm-up + constant/cosine learning-rate schedule and the square-root batch scaling rule. */
#include "optim/schedule.h"

#include <math.h>

loom_status loom_schedule_check(const loom_schedule *s) {
  if (!s) return loom_error_set(LOOM_ERR_ARG, "schedule is NULL");
  if (s->kind != LOOM_SCHEDULE_CONSTANT && s->kind != LOOM_SCHEDULE_COSINE)
    return loom_error_set(LOOM_ERR_ARG, "schedule kind=%d; accepted constant or cosine", (int)s->kind);
  if (!(s->peak >= 0) || !(s->floor >= 0) || s->floor > s->peak)
    return loom_error_set(LOOM_ERR_ARG, "schedule peak=%g floor=%g: need 0 <= floor <= peak",
                          s->peak, s->floor);
  if (s->warmup_steps < 0)
    return loom_error_set(LOOM_ERR_ARG, "schedule warmup_steps=%lld must be >= 0",
                          (long long)s->warmup_steps);
  if (s->kind == LOOM_SCHEDULE_COSINE && s->total_steps <= s->warmup_steps)
    return loom_error_set(LOOM_ERR_ARG, "cosine schedule total_steps=%lld must exceed "
                          "warmup_steps=%lld", (long long)s->total_steps,
                          (long long)s->warmup_steps);
  return LOOM_OK;
}

double loom_schedule_lr(const loom_schedule *s, int64_t step) {
  if (step < s->warmup_steps) return s->peak * (double)(step + 1) / (double)s->warmup_steps;
  if (s->kind == LOOM_SCHEDULE_CONSTANT) return s->peak;
  if (step >= s->total_steps) return s->floor;
  double progress = (double)(step - s->warmup_steps) / (double)(s->total_steps - s->warmup_steps);
  return s->floor + 0.5 * (s->peak - s->floor) * (1.0 + cos(3.14159265358979323846 * progress));
}

double loom_lr_sqrt_scale(double lr, int64_t base_batch, int64_t new_batch) {
  if (base_batch <= 0 || new_batch <= 0) return lr;
  return lr * sqrt((double)new_batch / (double)base_batch);
}
