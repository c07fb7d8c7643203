/* Status codes and per-thread error messages for every loom call.
 * Invariant: a function that returns an error has set the calling thread's message first
 * (loom_error_set), so loom_error_string() always explains the most recent failure. */
#ifndef LOOM_RUNTIME_STATUS_H
#define LOOM_RUNTIME_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

/* One X-macro makes the enum, the names and the default messages (libuv style).
 * OK = 0, in progress > 0, errors < 0 (UCC style). */
#define LOOM_STATUS_MAP(X)                                                                 \
  X(OK, 0, "success")                                                                      \
  X(INPROGRESS, 1, "operation still in progress")                                          \
  X(ERR_ARG, -1, "invalid argument")                                                       \
  X(ERR_NOMEM, -2, "out of memory")                                                        \
  X(ERR_MPI, -3, "MPI call failed")                                                        \
  X(ERR_NCCL, -4, "NCCL call failed")                                                      \
  X(ERR_CUDA, -5, "CUDA call failed")                                                      \
  X(ERR_HDF5, -6, "HDF5 call failed")                                                      \
  X(ERR_IO, -7, "file or system I/O failed")                                               \
  X(ERR_TIMEOUT, -8, "operation timed out")                                                \
  X(ERR_CORRUPT, -9, "data is corrupt or inconsistent")                                    \
  X(ERR_UNSUPPORTED, -10, "not supported in this build or configuration")                  \
  X(ERR_STATE, -11, "object used in the wrong state")                                      \
  X(ERR_INTERNAL, -12, "internal error in loom (please report)")

typedef enum {
#define LOOM_STATUS_ENUM(name, value, msg) LOOM_##name = value,
  LOOM_STATUS_MAP(LOOM_STATUS_ENUM)
#undef LOOM_STATUS_ENUM
} loom_status;

/* "LOOM_ERR_ARG" etc.; "LOOM_UNKNOWN_STATUS" for a value outside the map. */
const char *loom_status_name(loom_status status);

/* The fixed one-line description of a status ("invalid argument"). */
const char *loom_status_message(loom_status status);

/* The calling thread's last error message: what failed, where, with which value and what to
 * do. Empty string when no error was recorded. Valid until the thread's next loom call. */
const char *loom_error_string(void);

/* Records the calling thread's message (printf format) and returns `status`, so a failure
 * reads `return loom_error_set(LOOM_ERR_ARG, "dp=%d ...", dp);`. The message is prefixed
 * with the status name. */
loom_status loom_error_set(loom_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Sets the calling thread's message to `message` verbatim (already prefixed); used to hand a
 * failure from a group's lane thread to the thread that waits on it. */
void loom_error_restore(const char *message);

/* Clears the calling thread's message. */
void loom_error_clear(void);

/* Propagate a failing status upward with its message intact. */
#define LOOM_CHECK(expr)                                                                   \
  do {                                                                                     \
    loom_status loom_check_status_ = (expr);                                               \
    if (loom_check_status_ < 0) return loom_check_status_;                                 \
  } while (0)

/* Same, but store the status in `status_var` and jump to `label` for cleanup. */
#define LOOM_CHECK_GOTO(expr, status_var, label)                                           \
  do {                                                                                     \
    (status_var) = (expr);                                                                 \
    if ((status_var) < 0) goto label;                                                      \
  } while (0)

#ifdef __cplusplus
}
#endif
#endif
