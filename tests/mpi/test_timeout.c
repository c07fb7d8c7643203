/* A peer that never joins must not hang the job. Needs exactly 2 ranks; LOOM_TIMEOUT=3.
 *
 * Host buffers (default): rank 0 receives from rank 1, which never sends; the wait must end
 * with LOOM_ERR_TIMEOUT within LOOM_TIMEOUT + 5 s, naming loom_recv, the group, the peer and
 * the tag, and the cancelled receive must not swallow a later message with the same tag. A
 * large send (rendezvous) that is never received times out the same way.
 * Device buffers (--device cuda; exits 77 without GPUs), NCCL: rank 1 skips one device
 * allreduce; rank 0's wait must end with LOOM_ERR_TIMEOUT naming the operation and the group,
 * and the aborted communicator must refuse later calls at once. Staged device path (ranks
 * sharing a GPU): a device receive from the silent peer times out like a host one, and the
 * next message with its tag still arrives on the device. */
#include <string.h>

#include "check.h"

static int names(const char *needle) { return strstr(loom_error_string(), needle) != NULL; }

static void host_part(check_state *st, double timeout) {
  loom_group *world = loom_ctx_world(st->ctx);
  int value = -1;
  enum { LARGE = 1 << 20 }; /* 4 MiB of int32: past every eager limit */
  int *large = calloc(LARGE, sizeof(int));
  if (st->rank == 0) {
    double start = loom_now();
    loom_status s = loom_recv(world, loom_buf_host(&value, 1, LOOM_INT32), 1, 7);
    double waited = loom_now() - start;
    printf("rank 0: recv %s after %.2f s: %s\n", loom_status_name(s), waited, loom_error_string());
    expect_near(st, "recv: timeout status", 0, s, LOOM_ERR_TIMEOUT, 0);
    expect_near(st, "recv: within LOOM_TIMEOUT + 5 s", 0,
                waited >= timeout - 0.05 && waited < timeout + 5, 1, 0);
    expect_near(st, "recv: message names the call", 0, names("loom_recv"), 1, 0);
    expect_near(st, "recv: message names the group", 0, names("WORLD"), 1, 0);
    expect_near(st, "recv: message names the peer", 0, names("peer 1"), 1, 0);
    expect_near(st, "recv: message names the tag", 0, names("tag 7"), 1, 0);
    start = loom_now();
    s = loom_send(world, loom_buf_host(large, LARGE, LOOM_INT32), 1, 8);
    waited = loom_now() - start;
    printf("rank 0: send %s after %.2f s: %s\n", loom_status_name(s), waited, loom_error_string());
    expect_near(st, "send: timeout status", 0, s, LOOM_ERR_TIMEOUT, 0);
    expect_near(st, "send: within LOOM_TIMEOUT + 5 s", 0,
                waited >= timeout - 0.05 && waited < timeout + 5, 1, 0);
    expect_near(st, "send: message names the call, peer and tag", 0,
                names("loom_send") && names("peer 1") && names("tag 8"), 1, 0);
  }
  MPI_Barrier(MPI_COMM_WORLD); /* rank 1 stayed away until here */
  if (st->rank == 1) {
    int answer = 42;
    CHECK_OK(st, loom_send(world, loom_buf_host(&answer, 1, LOOM_INT32), 0, 7));
    /* the timed-out large send: drain it if MPI could not cancel it */
    int pending = 0;
    MPI_Iprobe(0, 8, loom_group_comm(world), &pending, MPI_STATUS_IGNORE);
    if (pending) CHECK_OK(st, loom_recv(world, loom_buf_host(large, LARGE, LOOM_INT32), 0, 8));
    st->checks++;
  } else {
    CHECK_OK(st, loom_recv(world, loom_buf_host(&value, 1, LOOM_INT32), 1, 7));
    expect_near(st, "the cancelled receive left the next message alone", 0, value, 42, 0);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  free(large);
}

static void staged_part(check_state *st, double timeout) {
  loom_group *world = loom_ctx_world(st->ctx);
  int *device = NULL, value = -1;
  CHECK_OK(st, loom_device_alloc(st->ctx, sizeof(int), (void **)&device));
  loom_buf buf = loom_buf_device(st->ctx, device, 1, LOOM_INT32);
  if (st->rank == 0) {
    double start = loom_now();
    loom_status s = loom_recv(world, buf, 1, 7);
    double waited = loom_now() - start;
    printf("rank 0: staged recv %s after %.2f s: %s\n", loom_status_name(s), waited,
           loom_error_string());
    expect_near(st, "staged recv: timeout status", 0, s, LOOM_ERR_TIMEOUT, 0);
    expect_near(st, "staged recv: within LOOM_TIMEOUT + 5 s", 0,
                waited >= timeout - 0.05 && waited < timeout + 5, 1, 0);
    expect_near(st, "staged recv: message names call, peer and tag", 0,
                names("loom_recv") && names("peer 1") && names("tag 7"), 1, 0);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (st->rank == 1) {
    value = 42;
    CHECK_OK(st, loom_device_upload(st->ctx, device, &value, sizeof value));
    CHECK_OK(st, loom_send(world, buf, 0, 7));
    st->checks++;
  } else {
    CHECK_OK(st, loom_recv(world, buf, 1, 7));
    CHECK_OK(st, loom_device_download(st->ctx, &value, device, sizeof value));
    expect_near(st, "staged: the cancelled receive left the next message alone", 0, value, 42, 0);
  }
  loom_device_free(st->ctx, device);
}

static void device_part(check_state *st) {
  loom_group *world = loom_ctx_world(st->ctx);
  float *device = NULL;
  CHECK_OK(st, loom_device_alloc(st->ctx, 1024 * sizeof(float), (void **)&device));
  loom_buf buf = loom_buf_device(st->ctx, device, 1024, LOOM_FLOAT32);
  /* One collective both join: the communicator exists and works. */
  CHECK_OK(st, loom_allreduce(world, buf, buf, LOOM_OP_SUM));
  if (st->rank == 0) {
    double start = loom_now();
    loom_status s = loom_allreduce(world, buf, buf, LOOM_OP_SUM); /* rank 1 never joins */
    double waited = loom_now() - start;
    printf("rank 0: %s after %.2f s: %s\n", loom_status_name(s), waited, loom_error_string());
    expect_near(st, "timeout status", 0, s, LOOM_ERR_TIMEOUT, 0);
    expect_near(st, "waited about LOOM_TIMEOUT", 0, waited >= 2.9 && waited < 15, 1, 0);
    expect_near(st, "message names the call", 0, names("loom_allreduce"), 1, 0);
    expect_near(st, "message names the group", 0, names("WORLD"), 1, 0);
    start = loom_now();
    s = loom_allreduce(world, buf, buf, LOOM_OP_SUM);
    expect_near(st, "aborted communicator refuses at once", 0,
                s == LOOM_ERR_STATE && loom_now() - start < 1.0, 1, 0);
  } else {
    st->checks++; /* rank 1's part is to stay away */
  }
  loom_device_free(st->ctx, device);
}

int main(int argc, char **argv) {
  loom_config config = LOOM_CONFIG_INIT;
  config.timeout_seconds = 3;
  check_state st = {0};
  int code = check_start(&st, &config, &argc, &argv, 1);
  if (code >= 0) return code;
  if (st.size != 2) {
    if (st.rank == 0) fprintf(stderr, "skipped: test_timeout needs exactly 2 ranks\n");
    loom_finalize(st.ctx);
    return 77;
  }
  if (st.device_mode && loom_ctx_device_staged(st.ctx)) staged_part(&st, config.timeout_seconds);
  else if (st.device_mode) device_part(&st);
  else host_part(&st, config.timeout_seconds);
  /* Agree over MPI (the control plane still works) and finish. */
  code = check_finish(&st, "test_timeout");
  loom_finalize(st.ctx);
  return code;
}
