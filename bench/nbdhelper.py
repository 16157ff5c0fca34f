#!/usr/bin/env python3
"""Small libnbd/socket helpers for bench/run.sh (run with the system python3).

  nbdhelper.py connrate URI N          -> prints "<seconds>" for N connect+size+disconnect
  nbdhelper.py idle URI K              -> opens K connections, prints "ready", waits for EOF on stdin
  nbdhelper.py memcpy BYTES            -> copies BYTES through 64 MiB bytearrays, prints seconds
  nbdhelper.py touch BYTES             -> writes to BYTES of fresh memory and exits (frees it)
  nbdhelper.py receive WAY SOCK BYTES  -> takes one connection on the Unix socket SOCK and stores
                                          the BYTES it sends in 256 KiB pieces into a memory file
                                          of BYTES, filled beforehand; prints "<CPU seconds> <bytes>"
                                          (WAY: splice, mapped, unmapped, buffer; see receive())
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


def receive(way, path, nbytes):
    """The copy a server makes to store a sequential write into a memory disk, alone: the
    receiver's CPU time (user and system) from the connection to the last byte stored.
    The disk is a memory file whose pages all hold data already (a rewrite). Ways:
    splice    socket -> pipe -> file (splice twice), no mapping (ours for large writes)
    mapped    received straight into a shared mapping of the file whose pages are mapped
    unmapped  the same, but the pages are not mapped yet: each write faults them in
    buffer    received into one reused 256 KiB buffer, then copied into the mapped file
              (nbdkit's memory plugin: a buffer, then its own pages)"""
    import fcntl, mmap, socket
    piece = 256 * 1024
    fd = os.memfd_create("receive-limit")
    os.ftruncate(fd, nbytes)
    block = b"\x01" * (1 << 20)
    for off in range(0, nbytes, len(block)):
        os.pwrite(fd, block[:nbytes - off], off)
    disk = mmap.mmap(fd, nbytes, mmap.MAP_SHARED)
    if way in ("mapped", "buffer"):
        for off in range(0, nbytes, len(block)):  # map every page: a write through the mapping
            disk[off:off + len(block)] = block[:nbytes - off]
    view = memoryview(disk)
    buf = bytearray(piece)
    pipe_r, pipe_w = os.pipe()
    fcntl.fcntl(pipe_w, fcntl.F_SETPIPE_SZ, piece)  # as ours, where the limits allow
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    print("ready", flush=True)
    conn, _ = listener.accept()
    t0 = time.process_time()
    off = 0
    while off < nbytes:
        want = min(piece, nbytes - off)
        got = 0
        while got < want:
            if way == "splice":
                n = os.splice(conn.fileno(), pipe_w, want - got)
                moved = 0
                while moved < n:
                    moved += os.splice(pipe_r, fd, n - moved, offset_dst=off + got + moved)
            elif way == "buffer":
                n = conn.recv_into(memoryview(buf)[got:want])
                view[off + got:off + got + n] = memoryview(buf)[got:got + n]
            else:
                n = conn.recv_into(view[off + got:off + want])
            if n == 0:
                raise SystemExit("receive: the sender stopped early")
            got += n
        off += want
    print(f"{time.process_time() - t0:.6f} {nbytes}")


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
    elif cmd == "receive":
        receive(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit(f"unknown command {cmd}")
