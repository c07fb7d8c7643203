/* OpenBLAS picks its kernels from the CPU model when it loads. A CPU newer than the OpenBLAS
 * release (Debian 12 ships 0.3.21; Sapphire Rapids and later report a generic model) falls
 * back to the Prescott (SSE3) kernels: sgemm at about a third of the AVX-512 rate, measured
 * on the 2-core CI machine. The choice is made before main and cannot be changed in-process;
 * OPENBLAS_CORETYPE, read at load, can. */
#ifndef LOOM_EXAMPLES_BLAS_KERNELS_H
#define LOOM_EXAMPLES_BLAS_KERNELS_H

/* Call first in main, before MPI starts. When OPENBLAS_CORETYPE is unset, OpenBLAS chose
 * Prescott and the CPU has AVX-512 (F, BW, VL, DQ) or AVX2 + FMA, restarts the program
 * (execv of /proc/self/exe, same arguments and pid) with OPENBLAS_CORETYPE=SkylakeX or
 * Haswell, saying so on stderr once (launcher rank 0). Returns only when nothing was to be
 * done or the restart failed (then with a warning: the program runs, slower). */
void example_blas_pick_kernels(char **argv);

#endif
