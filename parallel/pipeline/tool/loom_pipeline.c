/* loom-pipeline: a pipeline schedule on the terminal before it runs on a machine.
 *
 *   loom-pipeline show --schedule zbv --pp 4 --microbatches 8 [--chunks V]
 *                      [--forward 1] [--backward-input 1] [--backward-weight 1] [--transfer 0]
 *     one row per rank, one cell per time quantum (the smallest cost): F forward, B whole
 *     backward, I input gradient, W weight gradient, then the micro-batch (chunk 1 in lower
 *     case when there are 2 chunks, ".c" after it for more); "=" continues a pass, "." idles.
 *     Then step time, bubble and peak activations against the textbook figures.
 *   loom-pipeline table [costs as above]
 *     bubble and peak activations of every schedule at pp 2, 4, 8 and micro-batches 4, 8, 16
 *     against the textbook figures.
 * Exit: 0, 1 when the schedule is refused or fails the checker (the message says why), 2 for
 * bad usage. */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parallel/pipeline/check.h"
#include "parallel/pipeline/schedule.h"

static void usage(FILE *out) {
  fprintf(out,
          "usage: loom-pipeline show --schedule gpipe|1f1b|interleaved|zbh1|zbv --pp P --microbatches M\n"
          "                          [--chunks V] [--forward T] [--backward-input T]\n"
          "                          [--backward-weight T] [--transfer T]\n"
          "       loom-pipeline table [--forward T] [--backward-input T] [--backward-weight T] [--transfer T]\n"
          "  show: the schedule's timeline, one row per rank, and its bubble and peak activations\n"
          "        against theory; costs are per micro-batch per stage (a whole backward is\n"
          "        backward-input + backward-weight), defaults 1, 1, 1 and transfer 0\n"
          "  table: every schedule at pp 2, 4, 8 and micro-batches 4, 8, 16 against theory\n");
}

typedef struct {
  loom_pipeline_kind kind;
  int have_kind, pp, microbatches, chunks;
  loom_pipeline_costs costs;
} options;

// 0, or -1 after printing what is wrong with argument i
static int parse(int argc, char **argv, int first, options *o) {
  for (int i = first; i < argc; i++) {
    const char *flag = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
    if (!value) {
      fprintf(stderr, "loom-pipeline: %s needs a value\n", flag);
      return -1;
    }
    char *end = NULL;
    double number = strtod(value, &end);
    int numeric = end != value && *end == 0;
    i++;
    if (strcmp(flag, "--schedule") == 0) {
      if (loom_pipeline_kind_parse(value, &o->kind) != LOOM_OK) {
        fprintf(stderr, "loom-pipeline: %s\n", loom_error_string());
        return -1;
      }
      o->have_kind = 1;
      continue;
    }
    double *cost = strcmp(flag, "--forward") == 0           ? &o->costs.forward
                   : strcmp(flag, "--backward-input") == 0  ? &o->costs.backward_input
                   : strcmp(flag, "--backward-weight") == 0 ? &o->costs.backward_weight
                   : strcmp(flag, "--transfer") == 0        ? &o->costs.transfer : NULL;
    int *count = strcmp(flag, "--pp") == 0             ? &o->pp
                 : strcmp(flag, "--microbatches") == 0 ? &o->microbatches
                 : strcmp(flag, "--chunks") == 0       ? &o->chunks : NULL;
    if (!cost && !count) {
      fprintf(stderr, "loom-pipeline: unknown option %s\n", flag);
      return -1;
    }
    if (!numeric || number < 0 || (count && (number != floor(number) || number > 1e6))) {
      fprintf(stderr, "loom-pipeline: %s %s: expected a %s\n", flag, value,
              count ? "whole number >= 0" : "time >= 0");
      return -1;
    }
    if (cost) *cost = number;
    else *count = (int)number;
  }
  return 0;
}

// The label of a compute action: op letter and micro-batch, chunk by case or suffix.
static void label(const loom_pipeline_action *a, int chunks, char *text, size_t size) {
  char op = loom_pipeline_op_name(a->op)[0];
  if (chunks == 2 && a->chunk == 1) op = (char)tolower(op);
  if (chunks > 2) snprintf(text, size, "%c%d.%d", op, a->microbatch, a->chunk);
  else snprintf(text, size, "%c%d", op, a->microbatch);
}

static double action_cost(const loom_pipeline_costs *c, loom_pipeline_op op) {
  switch (op) {
  case LOOM_PIPELINE_FORWARD: return c->forward;
  case LOOM_PIPELINE_BACKWARD: return c->backward_input + c->backward_weight;
  case LOOM_PIPELINE_BACKWARD_INPUT: return c->backward_input;
  case LOOM_PIPELINE_BACKWARD_WEIGHT: return c->backward_weight;
  default: return 0;
  }
}

static int show(const options *o) {
  loom_pipeline_schedule *s;
  if (loom_pipeline_schedule_create(o->kind, o->pp, o->microbatches, o->chunks, &s) != LOOM_OK) {
    fprintf(stderr, "loom-pipeline: %s\n", loom_error_string());
    return 1;
  }
  int p = o->pp, chunks = loom_pipeline_schedule_chunks(s), total = 0;
  for (int r = 0; r < p; r++) {
    int count;
    loom_pipeline_actions(s, r, &count);
    total += count;
  }
  double *start = malloc(sizeof(double) * (size_t)total), *rank_peak = malloc(sizeof(double) * (size_t)p);
  loom_pipeline_report report = {.start = start, .rank_peak = rank_peak};
  int rc = 0;
  if (!start || !rank_peak) {
    fprintf(stderr, "loom-pipeline: out of memory for %d actions\n", total);
    rc = 1;
    goto done;
  }
  if (loom_pipeline_check(s, &o->costs, &report) != LOOM_OK) {
    fprintf(stderr, "loom-pipeline: %s\n", loom_error_string());
    rc = 1;
    goto done;
  }
  double quantum = 0;
  const double costs[] = {o->costs.forward, o->costs.backward_input, o->costs.backward_weight};
  for (int i = 0; i < 3; i++)
    if (costs[i] > 0 && (quantum == 0 || costs[i] < quantum)) quantum = costs[i];
  if (quantum == 0) quantum = 1;
  int width = 2 + snprintf(NULL, 0, "%d", o->microbatches - 1) + (chunks > 2 ? 2 : 0);
  int cells = (int)ceil(report.step_time / quantum - 1e-9);
  char *row = malloc((size_t)cells * (size_t)width + 1);
  if (!row) {
    rc = 1;
    goto done;
  }
  printf("%s  pp=%d  micro-batches=%d  chunks=%d  forward=%g backward-input=%g backward-weight=%g "
         "transfer=%g  (one cell = %g)\n", loom_pipeline_kind_name(o->kind), p, o->microbatches,
         chunks, o->costs.forward, o->costs.backward_input, o->costs.backward_weight,
         o->costs.transfer, quantum);
  size_t offset = 0;
  for (int r = 0; r < p; r++) {
    memset(row, '.', (size_t)cells * (size_t)width);
    for (int c = 0; c < cells; c++) row[(size_t)c * width + width - 1] = ' ';
    int count;
    const loom_pipeline_action *a = loom_pipeline_actions(s, r, &count);
    for (int i = 0; i < count; i++) {
      double cost = action_cost(&o->costs, a[i].op);
      if (cost <= 0) continue; // transfers take no cell
      int first = (int)floor(start[offset + i] / quantum + 0.5), span = (int)floor(cost / quantum + 0.5);
      char text[32];
      label(&a[i], chunks, text, sizeof text);
      for (int c = first; c < first + (span > 0 ? span : 1) && c < cells; c++) {
        char *cell = row + (size_t)c * width;
        memset(cell, c == first ? ' ' : '=', (size_t)width - 1);
        if (c == first) memcpy(cell, text, strlen(text));
      }
    }
    row[(size_t)cells * width] = 0;
    printf("rank %-3d %s\n", r, row);
    offset += (size_t)count;
  }
  free(row);
  double bubble, peak;
  loom_pipeline_theory(o->kind, p, o->microbatches, chunks, &bubble, &peak);
  printf("step time %g, busiest rank %g: bubble %.4f", report.step_time, report.busiest, report.bubble);
  if (o->costs.forward == o->costs.backward_input && o->costs.forward == o->costs.backward_weight &&
      o->costs.transfer == 0 && o->microbatches >= p)
    printf(" (theory %.4f)", bubble);
  printf("\npeak activations %.2f micro-batches (theory %.2f); pending weight gradients %d chunks\n",
         report.peak_activations, peak, report.peak_pending_weights);
  printf("transfers %s\n", report.transfers_in_order ? "in the same order on both sides of every pair"
                                                    : "not in one order per pair (needs tagged matching: MPI, the staged path)");
  printf("per rank:");
  for (int r = 0; r < p; r++) printf(" %.2f", rank_peak[r]);
  printf("\n");
done:
  free(start), free(rank_peak);
  loom_pipeline_schedule_destroy(s);
  return rc;
}

static int table(const options *o) {
  printf("%-12s %3s %4s %6s %10s %10s %10s %10s\n", "schedule", "pp", "m", "chunks", "bubble",
         "theory", "peak", "theory");
  for (int k = 0; k < LOOM_PIPELINE_KIND_COUNT; k++)
    for (int p = 2; p <= 8; p *= 2)
      for (int m = 4; m <= 16; m *= 2) {
        loom_pipeline_schedule *s;
        if (loom_pipeline_schedule_create((loom_pipeline_kind)k, p, m, 0, &s) != LOOM_OK) {
          printf("%-12s %3d %4d %6s refused: %s\n", loom_pipeline_kind_name((loom_pipeline_kind)k), p,
                 m, "-", loom_error_string());
          continue;
        }
        loom_pipeline_report report = {0};
        if (loom_pipeline_check(s, &o->costs, &report) != LOOM_OK) {
          fprintf(stderr, "loom-pipeline: %s\n", loom_error_string());
          loom_pipeline_schedule_destroy(s);
          return 1;
        }
        double bubble, peak;
        int chunks = loom_pipeline_schedule_chunks(s);
        loom_pipeline_theory((loom_pipeline_kind)k, p, m, chunks, &bubble, &peak);
        printf("%-12s %3d %4d %6d %10.4f %10.4f %10.2f %10.2f%s\n", loom_pipeline_kind_name((loom_pipeline_kind)k),
               p, m, chunks, report.bubble, bubble, report.peak_activations, peak,
               m < p ? "  (m < pp: the formulas assume m >= pp)" : "");
        loom_pipeline_schedule_destroy(s);
      }
  return 0;
}

int main(int argc, char **argv) {
  options o = {.pp = -1, .microbatches = -1, .costs = LOOM_PIPELINE_COSTS_INIT};
  if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  int is_show = strcmp(argv[1], "show") == 0, is_table = strcmp(argv[1], "table") == 0;
  if ((!is_show && !is_table) || parse(argc, argv, 2, &o) != 0) {
    if (!is_show && !is_table) fprintf(stderr, "loom-pipeline: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
  }
  if (is_table) return table(&o);
  if (!o.have_kind || o.pp < 0 || o.microbatches < 0) {
    fprintf(stderr, "loom-pipeline show: --schedule, --pp and --microbatches are required\n");
    usage(stderr);
    return 2;
  }
  return show(&o);
}
