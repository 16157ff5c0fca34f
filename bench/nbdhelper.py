#!/usr/bin/env python3
"""Small libnbd/socket helpers for bench/run.sh (run with the system python3).

  nbdhelper.py connrate URI N          -> prints "<seconds>" for N connect+size+disconnect
  nbdhelper.py idle URI K              -> opens K connections, prints "ready", waits for EOF on stdin
  nbdhelper.py memcpy BYTES            -> copies BYTES through 64 MiB bytearrays, prints seconds
  nbdhelper.py touch BYTES             -> writes to BYTES of fresh memory and exits (frees it)
  nbdhelper.py randread URI N DEPTH    -> N random 4 KiB reads, DEPTH in flight (aio), prints seconds
  nbdhelper.py tlsinfo URI             -> prints the TLS cipher libnbd negotiated (from its debug log)

URIs may name local files (tls-psk-file=, tls-certificates=): fio's nbd engine refuses those,
so the TLS random-read workloads use randread here instead.
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


def connect(uri):
    import nbd
    h = nbd.NBD()
    h.set_uri_allow_local_file(True)   # tls-psk-file= / tls-certificates= in the URI
    h.connect_uri(uri)
    return h


def randread(uri, n, depth):
    import random
    import nbd
    h = connect(uri)
    blocks = h.get_size() // 4096
    rng = random.Random(1)
    offsets = [rng.randrange(blocks) * 4096 for _ in range(n)]
    buf = nbd.Buffer(4096)        # reads only: the contents are not looked at
    done, failed = [0], []

    def completed(err):           # err: a ctypes int holding the errno
        if err.value:
            failed.append(err.value)
        done[0] += 1
        return 1                  # retire the command

    issued = 0
    t0 = time.perf_counter()
    while done[0] < n:
        while issued < n and issued - done[0] < depth:
            h.aio_pread(buf, offsets[issued], completion=completed)
            issued += 1
        h.poll(-1)
    t = time.perf_counter() - t0
    if failed:
        sys.exit(f"{len(failed)} reads failed, first errno {failed[0]}")
    h.shutdown()
    print(f"{t:.6f}")


def tlsinfo(uri):
    # libnbd logs "connection is using TLS: cipher ... key exchange ... mac ..." in debug mode.
    import nbd
    h = nbd.NBD()
    h.set_uri_allow_local_file(True)
    h.set_debug(True)
    msgs = []
    h.set_debug_callback(lambda ctx, msg: msgs.append(msg))
    h.connect_uri(uri)
    h.shutdown()
    found = [m.split("using TLS: ", 1)[1] for m in msgs if "using TLS: " in m]
    print(found[0] if found else "no TLS")


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


def touch(nbytes):
    # bytes(n) would come from untouched zero pages; a repeated pattern writes every page.
    block = b"\x01" * (64 << 20)
    held = [bytearray(block) for _ in range(max(1, nbytes // len(block)))]
    del held


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "connrate":
        connrate(sys.argv[2], int(sys.argv[3]))
    elif cmd == "idle":
        idle(sys.argv[2], int(sys.argv[3]))
    elif cmd == "randread":
        randread(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif cmd == "tlsinfo":
        tlsinfo(sys.argv[2])
    elif cmd == "memcpy":
        memcpy(int(sys.argv[2]))
    elif cmd == "touch":
        touch(int(sys.argv[2]))
    else:
        sys.exit(f"unknown command {cmd}")
