"""Plain sequential write peer of the checkpoint benchmark: `procs` processes each write
total/procs bytes (64 MiB writes of random data) to their own file in `dir`, fsync it, and
the aggregate rate is total bytes / the slowest process's time, the same measure as loom's
background writer (every rank writes its share of a checkpoint at once).

    python3 bench/plain_write.py TOTAL_BYTES DIR [PROCS]
Prints: plain_write bytes=... procs=... seconds=... GBps=...
"""
import multiprocessing as mp
import os
import sys
import time

CHUNK = 64 << 20


def writer(path, nbytes, barrier, out):
    block = os.urandom(CHUNK)
    barrier.wait()
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    left = nbytes
    while left > 0:
        left -= os.write(fd, block[: min(CHUNK, left)])
    os.fsync(fd)
    os.close(fd)
    out.put(time.perf_counter() - start)
    os.unlink(path)


def main():
    total, directory = int(sys.argv[1]), sys.argv[2]
    procs = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    os.makedirs(directory, exist_ok=True)
    barrier, out = mp.Barrier(procs), mp.Queue()
    workers = [mp.Process(target=writer, args=(os.path.join(directory, f"plain-{i}.bin"),
                                               total // procs, barrier, out)) for i in range(procs)]
    for w in workers:
        w.start()
    seconds = max(out.get() for _ in workers)
    for w in workers:
        w.join()
    print(f"plain_write bytes={total} procs={procs} seconds={seconds:.3f} GBps={total / seconds / 1e9:.3f}")


if __name__ == "__main__":
    main()
