/* Restart under the OpenBLAS kernels the CPU can run (see blas_kernels.h). */
#include "blas_kernels.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <loom.h>

char *openblas_get_corename(void); /* OpenBLAS's own API, not in cblas.h */

void example_blas_pick_kernels(char **argv) {
  if (getenv("OPENBLAS_CORETYPE")) return; /* the user's choice, or our restart */
  const char *core = openblas_get_corename();
  if (!core || strcasecmp(core, "prescott") != 0) return;
  __builtin_cpu_init();
  const char *better = NULL;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    better = "SkylakeX";
  else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    better = "Haswell";
  if (!better) return;
  int rank = loom_launcher_rank();
  if (rank <= 0)
    fprintf(stderr, "%s: OpenBLAS does not know this CPU and chose its Prescott (SSE3) kernels; "
            "restarting with OPENBLAS_CORETYPE=%s (set OPENBLAS_CORETYPE to choose)\n", argv[0],
            better);
  setenv("OPENBLAS_CORETYPE", better, 1);
  execv("/proc/self/exe", argv);
  if (rank <= 0)
    fprintf(stderr, "%s: restarting failed (%s); running on the Prescott kernels\n", argv[0],
            strerror(errno));
}
