/* What the schedule builders share (schedule.c, zero_bubble.c): the schedule object, and the
 * step that turns each rank's compute order into its full action list. */
#ifndef LOOM_PARALLEL_PIPELINE_SCHEDULE_IMPL_H
#define LOOM_PARALLEL_PIPELINE_SCHEDULE_IMPL_H

#include "parallel/pipeline/schedule.h"

struct loom_pipeline_schedule {
  loom_pipeline_kind kind;
  int ranks, microbatches, chunks, stages;
  int v_placement;                /* 1: stages r and 2 ranks - 1 - r (ZB-V); 0: r + c ranks */
  int *counts;                    /* (ranks) actions per rank */
  loom_pipeline_action **actions; /* (ranks) x (counts[r]) */
};

/* A rank's compute order as the builders write it: F, B, I, W actions (peer -1), at most
 * 3 x microbatches x chunks of them. */
typedef struct {
  loom_pipeline_action *items;
  int count;
} pipeline_order;

/* Appends the compute action (op, microbatch, stage) to order; chunk from the placement. */
void pipeline_order_add(const loom_pipeline_schedule *schedule, pipeline_order *order,
                        loom_pipeline_op op, int microbatch, int stage);

/* ZB-H1 and ZB-V compute orders (zero_bubble.c), one per rank, each with room for
 * 3 x microbatches x chunks actions. */
loom_status pipeline_zero_bubble_orders(const loom_pipeline_schedule *schedule,
                                        pipeline_order *orders);

#endif
