/* Status names, messages and the per-thread error message buffer.
 * The buffer is thread-local so that a group's lane thread and the caller never overwrite
 * each other's explanation. */
#include "runtime/status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

enum { LOOM_ERROR_MESSAGE_BYTES = 1024 };
static _Thread_local char error_message[LOOM_ERROR_MESSAGE_BYTES];

const char *loom_status_name(loom_status status) {
  switch (status) {
#define LOOM_STATUS_NAME(name, value, msg) \
  case LOOM_##name: return "LOOM_" #name;
    LOOM_STATUS_MAP(LOOM_STATUS_NAME)
#undef LOOM_STATUS_NAME
  }
  return "LOOM_UNKNOWN_STATUS";
}

const char *loom_status_message(loom_status status) {
  switch (status) {
#define LOOM_STATUS_MESSAGE(name, value, msg) \
  case LOOM_##name: return msg;
    LOOM_STATUS_MAP(LOOM_STATUS_MESSAGE)
#undef LOOM_STATUS_MESSAGE
  }
  return "unknown status value";
}

const char *loom_error_string(void) { return error_message; }

void loom_error_clear(void) { error_message[0] = '\0'; }

void loom_error_restore(const char *message) {
  snprintf(error_message, sizeof error_message, "%s", message ? message : "");
}

loom_status loom_error_set(loom_status status, const char *fmt, ...) {
  /* The message may be built from the previous message (wrapping a cause), so format into a
   * scratch buffer first. */
  char scratch[LOOM_ERROR_MESSAGE_BYTES];
  va_list args;
  va_start(args, fmt);
  vsnprintf(scratch, sizeof scratch, fmt, args);
  va_end(args);
  snprintf(error_message, sizeof error_message, "%s: %s", loom_status_name(status), scratch);
  return status;
}
