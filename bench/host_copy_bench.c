/* The peer of an asynchronous snapshot's copy to host memory: raw cudaMemcpyAsync from device
 * memory into (a) cudaMallocHost memory, (b) a POSIX shared-memory segment registered with
 * cudaHostRegister (what a snapshot copies into), (c) pageable malloc memory; on one GPU alone
 * and on every GPU of the job at once (ranks under mpirun, one GPU each). Prints GB/s per GPU:
 * the rate a snapshot's copy_ms is to be compared with.
 *   mpirun -np 4 build-gpu/bench/loom-host-copy-bench [--mb 400] [--repeats 5] */
#include <cuda_runtime.h>
#include <fcntl.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <loom.h>

#define CUDA_OR_DIE(call)                                                              \
  do {                                                                                 \
    cudaError_t e_ = (call);                                                           \
    if (e_ != cudaSuccess) {                                                           \
      fprintf(stderr, "loom-host-copy-bench: %s: %s\n", #call, cudaGetErrorString(e_)); \
      MPI_Abort(MPI_COMM_WORLD, 1);                                                    \
    }                                                                                  \
  } while (0)

/* Seconds of the slowest participating rank for `repeats` copies of `bytes` (after one untimed). */
static double time_copies(void *dst, const void *src, size_t bytes, int repeats, int participate,
                          cudaStream_t stream) {
  if (participate) {
    CUDA_OR_DIE(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream));
    CUDA_OR_DIE(cudaStreamSynchronize(stream));
  }
  MPI_Barrier(MPI_COMM_WORLD);
  double start = MPI_Wtime(), mine = 0, slowest = 0;
  if (participate) {
    for (int r = 0; r < repeats; r++)
      CUDA_OR_DIE(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream));
    CUDA_OR_DIE(cudaStreamSynchronize(stream));
    mine = MPI_Wtime() - start;
  }
  MPI_Allreduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return slowest;
}

int main(int argc, char **argv) {
  int mb = 400, repeats = 5;
  const loom_option options[] = {
      {"mb", LOOM_OPTION_INT, &mb, "megabytes per copy", NULL, 1, 1 << 16},
      {"repeats", LOOM_OPTION_INT, &repeats, "timed copies", NULL, 1, 1000},
  };
  loom_config config = LOOM_CONFIG_INIT;
  if (loom_config_parse(&config, options, 2, argc, argv) != LOOM_OK) {
    fprintf(stderr, "loom-host-copy-bench: %s\n", loom_error_string());
    return 2;
  }
  MPI_Init(&argc, &argv);
  int rank, size, local = 0, devices = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node);
  MPI_Comm_rank(node, &local);
  CUDA_OR_DIE(cudaGetDeviceCount(&devices));
  CUDA_OR_DIE(cudaSetDevice(local % devices));
  size_t bytes = (size_t)mb << 20;
  void *device = NULL, *pinned = NULL, *pageable = malloc(bytes);
  CUDA_OR_DIE(cudaMalloc(&device, bytes));
  CUDA_OR_DIE(cudaMemset(device, 1, bytes));
  CUDA_OR_DIE(cudaMallocHost(&pinned, bytes));
  char name[64];
  snprintf(name, sizeof name, "/loom-host-copy-bench-%d-%d", (int)getpid(), rank);
  int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
  if (fd < 0 || ftruncate(fd, (off_t)bytes) != 0) {
    fprintf(stderr, "loom-host-copy-bench: shared memory %s (%d bytes): is /dev/shm large enough?\n", name, mb);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  void *shm = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (shm == MAP_FAILED || !pageable) MPI_Abort(MPI_COMM_WORLD, 1);
  memset(shm, 0, bytes); /* touched, as a snapshot segment is after its first use */
  memset(pageable, 0, bytes);
  CUDA_OR_DIE(cudaHostRegister(shm, bytes, cudaHostRegisterDefault));
  cudaStream_t stream;
  CUDA_OR_DIE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  struct { const char *name; void *dst; } targets[] = {
      {"cudaMallocHost", pinned}, {"registered shm", shm}, {"pageable malloc", pageable}};
  if (rank == 0)
    printf("# device-to-host copies of %d MB, GB/s per GPU (%d GPUs in the job)\n%-16s %12s %12s\n",
           mb, size, "target", "one GPU", "all GPUs");
  for (int t = 0; t < 3; t++) {
    double alone = time_copies(targets[t].dst, device, bytes, repeats, rank == 0, stream);
    double all = time_copies(targets[t].dst, device, bytes, repeats, 1, stream);
    if (rank == 0)
      printf("%-16s %12.1f %12.1f\n", targets[t].name, (double)bytes * repeats / alone / 1e9,
             (double)bytes * repeats / all / 1e9);
  }
  cudaHostUnregister(shm);
  munmap(shm, bytes);
  close(fd);
  shm_unlink(name);
  cudaFreeHost(pinned);
  cudaFree(device);
  free(pageable);
  cudaStreamDestroy(stream);
  MPI_Comm_free(&node);
  MPI_Finalize();
  return 0;
}
