/* loom-run: restarts a training job after a failure (Unicron's self-healing loop, at the scale
 * of one job): runs the command (usually `mpirun ... train`), and when it fails (non-zero exit,
 * a killed rank, the watchdog's abort) runs it again after a back-off, up to --retries times.
 * Every attempt shares one job id (exported as LOOM_JOB_ID), so the in-memory snapshot segments
 * of the failed attempt are found by the next one; they are removed after success. Injected
 * faults (LOOM_FAULT) are dropped after the first failure so that they fire once.
 *
 *   loom-run [--retries 3] [--backoff 1] [--job-id ID] -- mpirun -np 4 train_mnist ...
 * Exit: the command's status when it succeeds or the retries are spent; 2 for bad usage. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "checkpoint/snapshot.h"

static void usage(FILE *out) {
  fprintf(out, "usage: loom-run [--retries N] [--backoff SECONDS] [--job-id ID] -- COMMAND [ARGS...]\n"
               "  reruns COMMAND after a failure, up to N times (default 3), waiting SECONDS (default 1,\n"
               "  doubling, at most 60) between attempts; one job id (LOOM_JOB_ID) for all attempts;\n"
               "  in-memory snapshot segments of the job are removed after success\n");
}

/* Runs argv; returns its exit status, or 128 + signal when a signal ended it. */
static int run_once(char **argv) {
  pid_t pid = fork();
  if (pid < 0) {
    fprintf(stderr, "loom-run: fork failed: %s\n", strerror(errno));
    return 127;
  }
  if (pid == 0) {
    execvp(argv[0], argv);
    fprintf(stderr, "loom-run: cannot run %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) continue;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

int main(int argc, char **argv) {
  int retries = 3;
  double backoff = 1.0;
  const char *job = NULL;
  int i = 1;
  for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
    char *end = NULL;
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout);
      return 0;
    } else if (strcmp(argv[i], "--retries") == 0 && i + 1 < argc) {
      retries = (int)strtol(argv[++i], &end, 10);
      if (*end || retries < 0) break;
    } else if (strcmp(argv[i], "--backoff") == 0 && i + 1 < argc) {
      backoff = strtod(argv[++i], &end);
      if (*end || backoff < 0) break;
    } else if (strcmp(argv[i], "--job-id") == 0 && i + 1 < argc) {
      job = argv[++i];
    } else {
      break;
    }
  }
  if (i >= argc - 1 || strcmp(argv[i], "--") != 0) {
    fprintf(stderr, "loom-run: bad arguments near '%s'\n", i < argc ? argv[i] : "(end)");
    usage(stderr);
    return 2;
  }
  char **command = &argv[i + 1];
  char generated[64];
  if (!job) job = getenv("LOOM_JOB_ID");
  if (!job) job = getenv("SLURM_JOB_ID");
  if (!job) {
    snprintf(generated, sizeof generated, "run%ld-%d", (long)time(NULL), (int)getpid());
    job = generated;
  }
  setenv("LOOM_JOB_ID", job, 1);
  int code = 0;
  for (int attempt = 0; attempt <= retries; attempt++) {
    double started = (double)time(NULL);
    code = run_once(command);
    if (code == 0) {
      int removed = loom_snapshot_remove_job(job);
      fprintf(stderr, "loom-run: job %s succeeded on attempt %d; %d snapshot segment(s) removed\n",
              job, attempt + 1, removed);
      return 0;
    }
    if (attempt == retries) break;
    fprintf(stderr, "loom-run: job %s attempt %d failed (exit %d%s) after %.0f s; restarting in "
            "%.1f s (attempt %d of %d)\n", job, attempt + 1, code, code > 128 ? ", a signal" : "",
            (double)time(NULL) - started, backoff, attempt + 2, retries + 1);
    if (getenv("LOOM_FAULT")) {
      fprintf(stderr, "loom-run: dropping LOOM_FAULT for the next attempts (injected faults fire once)\n");
      unsetenv("LOOM_FAULT");
    }
    struct timespec pause = {(time_t)backoff, (long)((backoff - (double)(time_t)backoff) * 1e9)};
    nanosleep(&pause, NULL);
    backoff = backoff * 2 > 60 ? 60 : backoff * 2;
  }
  fprintf(stderr, "loom-run: job %s failed %d time(s), last exit %d; giving up (its snapshot "
          "segments are kept for a manual restart with --job-id %s)\n", job, retries + 1, code, job);
  return code;
}
