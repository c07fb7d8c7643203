/* A peer that never joins must not hang the job: with LOOM_TIMEOUT=3, rank 1 skips one
 * device allreduce; rank 0's wait must end with LOOM_ERR_TIMEOUT naming the operation and the
 * group, within a few seconds of the limit, and the aborted communicator must refuse later
 * calls at once. Needs 2 ranks and GPUs; exits 77 (skip) without them. */
#include <string.h>

#include "check.h"

int main(int argc, char **argv) {
  loom_config config = LOOM_CONFIG_INIT;
  config.device = 2; /* cuda */
  config.timeout_seconds = 3;
  if (loom_config_parse(&config, NULL, 0, argc, argv) != LOOM_OK) {
    fprintf(stderr, "%s\n", loom_error_string());
    return 2;
  }
  check_state st = {0};
  loom_status s = loom_init(&config, &argc, &argv, &st.ctx);
  if (s == LOOM_ERR_UNSUPPORTED) {
    fprintf(stderr, "skipped: %s\n", loom_error_string());
    return 77;
  }
  if (s != LOOM_OK) {
    fprintf(stderr, "loom_init: %s\n", loom_error_string());
    return 1;
  }
  st.rank = loom_ctx_rank(st.ctx);
  st.size = loom_ctx_size(st.ctx);
  if (st.size != 2) {
    if (st.rank == 0) fprintf(stderr, "skipped: test_timeout needs exactly 2 ranks\n");
    loom_finalize(st.ctx);
    return 77;
  }
  loom_group *world = loom_ctx_world(st.ctx);
  float *device = NULL;
  CHECK_OK(&st, loom_device_alloc(st.ctx, 1024 * sizeof(float), (void **)&device));
  loom_buf buf = loom_buf_device(st.ctx, device, 1024, LOOM_FLOAT32);
  /* One collective both join: the communicator exists and works. */
  CHECK_OK(&st, loom_allreduce(world, buf, buf, LOOM_OP_SUM));
  if (st.rank == 0) {
    double start = loom_now();
    s = loom_allreduce(world, buf, buf, LOOM_OP_SUM); /* rank 1 never joins this one */
    double waited = loom_now() - start;
    printf("rank 0: %s after %.2f s: %s\n", loom_status_name(s), waited, loom_error_string());
    expect_near(&st, "timeout status", 0, s, LOOM_ERR_TIMEOUT, 0);
    expect_near(&st, "waited about LOOM_TIMEOUT", 0, waited >= 2.9 && waited < 15, 1, 0);
    expect_near(&st, "message names the call", 0,
                strstr(loom_error_string(), "loom_allreduce") != NULL, 1, 0);
    expect_near(&st, "message names the group", 0, strstr(loom_error_string(), "WORLD") != NULL, 1, 0);
    start = loom_now();
    s = loom_allreduce(world, buf, buf, LOOM_OP_SUM);
    expect_near(&st, "aborted communicator refuses at once", 0,
                s == LOOM_ERR_STATE && loom_now() - start < 1.0, 1, 0);
  } else {
    st.checks++; /* rank 1's part is to stay away */
  }
  /* Agree over MPI (the control plane still works) and finish. */
  int code = check_finish(&st, "test_timeout");
  loom_device_free(st.ctx, device);
  loom_finalize(st.ctx);
  return code;
}
