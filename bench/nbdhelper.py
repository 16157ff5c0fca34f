#!/usr/bin/env python3
"""Small libnbd/socket helpers for bench/run.sh (run with the system python3).

  nbdhelper.py connrate URI N          -> prints "<seconds>" for N connect+size+disconnect
  nbdhelper.py idle URI K              -> opens K connections, prints "ready", waits for EOF on stdin
  nbdhelper.py memcpy BYTES            -> copies BYTES through 64 MiB bytearrays, prints seconds
"""
import os, sys, time


def connrate(uri, n):
    import nbd
    t0 = time.perf_counter()
    for _ in range(n):
        h = nbd.NBD()
        h.connect_uri(uri)
        h.get_size()
        h.shutdown()
        del h
    print(f"{time.perf_counter() - t0:.6f}")


def idle(uri, k):
    import nbd
    hs = []
    for _ in range(k):
        h = nbd.NBD()
        h.connect_uri(uri)
        h.get_size()
        hs.append(h)
    print("ready", flush=True)
    sys.stdin.read()
    for h in hs:
        try:
            h.shutdown()
        except Exception:
            pass


def memcpy(nbytes):
    size = 64 << 20
    src = bytearray(os.urandom(1 << 20) * 64)
    dst = bytearray(size)
    dst[:] = src  # fault the pages in before timing
    reps = max(1, nbytes // size)
    t0 = time.perf_counter()
    for _ in range(reps):
        dst[:] = src
    print(f"{time.perf_counter() - t0:.6f} {reps * size}")


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "connrate":
        connrate(sys.argv[2], int(sys.argv[3]))
    elif cmd == "idle":
        idle(sys.argv[2], int(sys.argv[3]))
    elif cmd == "memcpy":
        memcpy(int(sys.argv[2]))
    else:
        sys.exit(f"unknown command {cmd}")
