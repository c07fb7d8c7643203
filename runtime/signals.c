/* Signal flags and the stop agreement (see signals.h). */
#include "runtime/signals.h"

#include <signal.h>
#include <string.h>

#include "collectives/coll.h"
#include "runtime/log.h"

static volatile sig_atomic_t received_signal = 0;

static void on_signal(int signo) { received_signal = signo; }

loom_status loom_signals_install(loom_ctx *ctx) {
  struct sigaction action;
  memset(&action, 0, sizeof action);
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  if (sigaction(SIGUSR1, &action, NULL) != 0 || sigaction(SIGTERM, &action, NULL) != 0)
    return loom_error_set(LOOM_ERR_STATE, "installing the SIGUSR1/SIGTERM handlers failed");
  loom_log(ctx, LOOM_LOG_DEBUG, "SIGUSR1/SIGTERM: stop after the current step, checkpoint, exit %d",
           LOOM_EXIT_REQUEUE);
  return LOOM_OK;
}

int loom_stop_signal(void) { return (int)received_signal; }

loom_status loom_stop_agreed(loom_ctx *ctx, int *stop) {
  int mine = received_signal != 0, any = 0;
  LOOM_CHECK(loom_allreduce(loom_ctx_world(ctx), loom_buf_host(&mine, 1, LOOM_INT32),
                            loom_buf_host(&any, 1, LOOM_INT32), LOOM_OP_MAX));
  *stop = any;
  return LOOM_OK;
}
