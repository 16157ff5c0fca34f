#!/usr/bin/env python3
"""Turns bench/out/raw.tsv (from bench/run.sh) into bench/RESULTS.md and bench/ratios.png.

usage: report.py OUTDIR RESULTS.md ratios.png
"""
import csv, os, shlex, statistics, sys
from collections import defaultdict

outdir, results_path, png_path = sys.argv[1:4]

meta = {}
with open(os.path.join(outdir, "meta.env")) as f:
    for line in f:
        for tok in shlex.split(line):
            if "=" in tok:
                k, v = tok.split("=", 1)
                meta[k] = v

rows = list(csv.DictReader(open(os.path.join(outdir, "raw.tsv")), delimiter="\t"))
errors = list(csv.DictReader(open(os.path.join(outdir, "errors.tsv")), delimiter="\t"))
tls_path = os.path.join(outdir, "tls.tsv")
tlsinfo = list(csv.DictReader(open(tls_path), delimiter="\t")) if os.path.exists(tls_path) else []

SERVERS = {"A": "ours", "B": "nbdkit", "C": "qemu-nbd", "D": "nbd-server"}
FULL = {"A": meta.get("V_A", "ours"), "B": meta.get("V_B", "nbdkit"),
        "C": meta.get("V_C", "qemu-nbd"), "D": meta.get("V_D", "nbd-server")}

# metric -> (label, higher_is_better); None: not a performance figure, no ratio
METRICS = {
    "MB_per_s": ("MB/s", True),
    "IOPS": ("IOPS", True),
    "p50_us": ("p50 latency µs", False),
    "conn_per_s": ("conn/s", True),
    "cpu_s_per_GB": ("server CPU s/GB", False),
    "cpu_us_per_req": ("server CPU µs/req", False),
    "ms_per_run": ("ms per start-up", False),
    "KiB_RSS_per_conn": ("ΔRSS KiB/conn", False),
    "KiB_USS_per_conn": ("ΔUSS KiB/conn", False),
    "KiB_RSS_base": ("RSS KiB before", False),
    "connections": ("connections used", None),
    "client_busy_pct": ("client core busy %", None),
}
PYRAND = "python3-libnbd aio loop (`nbdhelper.py randread`), RAND_N 4 KiB random reads, 32 in flight"
WORKLOADS = [
    ("seqread", "Sequential read: `nbdcopy --no-extents -C 1 -T 1 --request-size=262144 URI null:`"),
    ("seqwrite", "Sequential write: `nbdcopy --no-extents -C 1 -T 1 --request-size=262144 SRC URI`"),
    ("seqwrite-alloc", "First sequential write into an empty memory disk (the fill before the memory workloads), "
                       "so every page is allocated: as seqwrite. This VM hands memory freed for a few seconds back to its host "
                       "(free page reporting) and pages taken back cost several times as much to touch, so just "
                       "before it a helper writes to and frees 1.5x the disk's size; still the noisiest workload"),
    ("randread-qd1", "fio `ioengine=nbd`, 4 KiB random read, iodepth 1"),
    ("randread-qd32", "fio `ioengine=nbd`, 4 KiB random read, iodepth 32"),
    ("randwrite-qd1", "fio `ioengine=nbd`, 4 KiB random write, iodepth 1"),
    ("randwrite-qd32", "fio `ioengine=nbd`, 4 KiB random write, iodepth 32"),
    ("randread-qd32-py", f"{PYRAND}, plain Unix socket: baseline for the TLS random reads (same client)"),
    ("seqread-4conn", "Four connections: `nbdcopy --no-extents -C 4 -T 4 --request-size=262144 URI null:` "
                      "(nbdcopy falls back to one connection if the server does not advertise multi-conn; "
                      "*connections used* says which)"),
    ("randread-4conn-qd8", "Four connections: fio `ioengine=nbd`, 4 KiB random read, numjobs=4 (one connection "
                           "each), iodepth 8 each (32 in flight in total); IOPS summed"),
    ("tcp-seqread", "TCP loopback: `nbdcopy --no-extents -C 1 -T 1 --request-size=262144 nbd://127.0.0.1:PORT null:`"),
    ("tcp-randread-qd32", "TCP loopback: fio `ioengine=nbd`, `uri=nbd://127.0.0.1:PORT`, 4 KiB random read, iodepth 32"),
    ("tls-psk-seqread", "TLS-PSK: `nbdcopy --no-extents -C 1 -T 1 --request-size=262144 "
                        "'nbds+unix://alice@/?socket=S&tls-psk-file=F' null:`"),
    ("tls-psk-randread-qd32", f"TLS-PSK: {PYRAND}"),
    ("tls-psk-chacha-seqread", "TLS-PSK, client limited to ChaCha20-Poly1305 (GnuTLS configuration without AES "
                               "suites): as tls-psk-seqread"),
    ("tls-psk-chacha-randread-qd32", "TLS-PSK, client limited to ChaCha20-Poly1305: as tls-psk-randread-qd32"),
    ("tls-x509-seqread", "TLS-X.509: `nbdcopy --no-extents -C 1 -T 1 --request-size=262144 "
                         "'nbds+unix:///?socket=S&tls-certificates=DIR' null:`"),
    ("tls-x509-randread-qd32", f"TLS-X.509: {PYRAND}"),
    ("connrate", "Connection setup: libnbd connect + get_size + shutdown, in a loop"),
    ("idle", "Idle memory per connection: server RSS and USS (private pages) before and while K idle connections are open"),
    ("startup", "Captive start-up: `nbdkit -U - null 1M --run true`"),
]
# What a workload measures on a backend that does no work (the null plugin), if it runs there.
NULL_NOTES = {
    "seqwrite": "null plugin: the server receives each payload and drops it, so this is the rate the same "
                "client reaches when the server stores nothing: how near the memory and file rows above come "
                "to what this client can send to that server",
}
PRIMARY = {"seqread": "MB_per_s", "seqwrite": "MB_per_s", "seqwrite-alloc": "MB_per_s", "randread-qd1": "IOPS",
           "randread-qd32": "IOPS", "randwrite-qd1": "IOPS", "randwrite-qd32": "IOPS",
           "connrate": "conn_per_s", "idle": "KiB_USS_per_conn", "startup": "ms_per_run",
           "randread-qd32-py": "IOPS", "seqread-4conn": "MB_per_s", "randread-4conn-qd8": "IOPS",
           "tcp-seqread": "MB_per_s", "tcp-randread-qd32": "IOPS",
           "tls-psk-seqread": "MB_per_s", "tls-psk-randread-qd32": "IOPS",
           "tls-psk-chacha-seqread": "MB_per_s", "tls-psk-chacha-randread-qd32": "IOPS",
           "tls-x509-seqread": "MB_per_s", "tls-x509-randread-qd32": "IOPS"}

data = defaultdict(list)   # (backend, workload, metric, server) -> values
for r in rows:
    try:
        data[(r["backend"], r["workload"], r["metric"], r["server"])].append(float(r["value"]))
    except ValueError:
        pass


def fmt(x):
    if x is None:
        return "–"
    a = abs(x)
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def stats(vals):
    if not vals:
        return None
    return statistics.median(vals), min(vals), max(vals), len(vals)


def ratio(backend, wl, metric, server):
    if METRICS[metric][1] is None:
        return None
    s = stats(data.get((backend, wl, metric, server), []))
    b = stats(data.get((backend, wl, metric, "B"), []))
    if not s or not b or b[0] == 0:
        return None
    return s[0] / b[0]


out = []
w = out.append
w("# Benchmark results")
w("")
w("Generated by `bench/run.sh` (see `bench/README.md`). Raw numbers: `bench/out/raw.tsv` (not committed).")
w("")
w(f"- Command: `{meta.get('COMMAND', '')}` (make bench)")
w(f"- Date: {meta.get('START_TIME', '')}; run took {meta.get('DURATION_S', '?')} s")
w(f"- Machine: {meta.get('NPROC', '?')} CPUs ({meta.get('CPU_MODEL', '?')}), {meta.get('MEM', '?')} RAM, "
  f"Linux {meta.get('KERNEL', '?')}; load average before {meta.get('LOAD_BEFORE', '?')}, after {meta.get('LOAD_AFTER', '?')}")
w(f"- Parameters: ROUNDS={meta.get('ROUNDS')} SIZE_MIB={meta.get('SIZE_MIB')} FIO_RUNTIME={meta.get('FIO_RUNTIME')} s "
  f"STARTUP_N={meta.get('STARTUP_N')} CONN_N={meta.get('CONN_N')} IDLE_K={meta.get('IDLE_K')} RAND_N={meta.get('RAND_N')}"
  + (f"; only WORKLOADS=\"{meta['WORKLOADS']}\"" if meta.get("WORKLOADS") else ""))
w(f"- Ours: `{meta.get('OURS_BIN', '')}`, built from {meta.get('BUILD_NOTE', '')}")
w("- Servers:")
for k in "ABCD":
    w(f"  - {k} = {SERVERS[k]}: {FULL[k]}")
w(f"- Clients: {meta.get('V_NBDCOPY', '')}, {meta.get('V_FIO', '')}, python3-libnbd; "
  f"TLS files made with {meta.get('V_GNUTLS', 'certtool')} (server key {meta.get('TLS_KEYS', '?')}) and psktool")
w("")
w("**Caveats.** The machine has only "
  f"{meta.get('NPROC', '?')} cores: every server is pinned to CPU 0 and every client to CPU 1 "
  "(`taskset`), so multi-threaded servers cannot spread out and the client competes with nothing "
  "but the server's own helper threads. Other work (builds, tests of other sessions) may have been "
  "running on the same machine during this run, so expect noise; interleaved rounds and medians "
  "reduce but do not remove it. nbd-server cannot stay in the foreground (its `-d` serves a single "
  "connection and exits), so it runs as a daemon found through its pid file; it does listen on a "
  "Unix socket (`unixsock` in its config file), so every server is reached over a Unix socket, "
  "except in the `tcp-*` workloads (127.0.0.1, a free port). "
  "nbd-server forks a process per connection: its CPU time includes its children's, and its "
  "memory is summed over the process tree (USS, private pages only, does not count shared "
  "libraries once per child). Server CPU time is read from `/proc/PID/stat` in 10 ms ticks, so "
  "short workloads have coarse CPU figures. Servers run with their default thread counts.")
w("")
w("**nbdkit's file plugin and tmpfs.** For every new connection nbdkit 1.32's file plugin calls "
  "`lseek(fd, 0, SEEK_HOLE)` (seen with strace); on a fully allocated 1 GiB file in tmpfs "
  "(`/dev/shm`) that call walks the page cache and takes about 7–9 ms, so nbdkit's `connrate` on "
  "the file backend measures mostly that call, not connection handling. Compare connection "
  "rates on the memory backend too, where no server touches a file.")
w("")
w("Each cell: median [min–max] over the rounds. *ratio* = median of the server ÷ median of nbdkit "
  "1.32 measured in the same run (for throughput higher is better; for CPU, time and memory lower is better).")
w("")

w("## Headline: ours ÷ nbdkit 1.32 (medians)")
w("")
w("| workload | backend | metric | ours | nbdkit | ratio |")
w("| --- | --- | --- | --- | --- | --- |")
headline = []
for wl, _ in WORKLOADS:
    for backend in ("memory", "file", "null"):
        m = PRIMARY[wl]
        a = stats(data.get((backend, wl, m, "A"), []))
        b = stats(data.get((backend, wl, m, "B"), []))
        if not a and not b:
            continue
        r = ratio(backend, wl, m, "A")
        w(f"| {wl} | {backend} | {METRICS[m][0]} | {fmt(a[0]) if a else 'FAILED/–'} | {fmt(b[0]) if b else '–'} | "
          f"{fmt(r) if r is not None else '–'} |")
        headline.append((wl, backend, m))
        # At iodepth 1 the target is latency: its median, as fio's client saw it.
        if wl.endswith("-qd1") and data.get((backend, wl, "p50_us", "A")):
            a = stats(data.get((backend, wl, "p50_us", "A"), []))
            b = stats(data.get((backend, wl, "p50_us", "B"), []))
            r = ratio(backend, wl, "p50_us", "A")
            w(f"| {wl} | {backend} | {METRICS['p50_us'][0]} | {fmt(a[0]) if a else 'FAILED/–'} | "
              f"{fmt(b[0]) if b else '–'} | {fmt(r) if r is not None else '–'} |")
w("")

w("## Physical limits on this machine (not NBD)")
w("")
w("| measurement | median MB/s [min–max] |")
w("| --- | --- |")
for wl, label in [("limit_unix_socket", "raw Unix-socket stream: `socat -b 262144` /dev/zero → socket → /dev/null, receiver CPU 0, sender CPU 1"),
                  ("limit_dd_zero_null", "`dd if=/dev/zero of=/dev/null bs=1M` (kernel zero-fill, one CPU)"),
                  ("limit_memcpy", "memcpy: python bytearray slice copy of 64 MiB buffers (one CPU)")]:
    for (backend, w2, m, s), vals in data.items():
        if w2 == wl:
            st = stats(vals)
            w(f"| {label} | {fmt(st[0])} [{fmt(st[1])}–{fmt(st[2])}] |")
w("")
receive_rows = [("limit_receive_splice", "splice: socket → pipe → file, twice per piece (ours for writes of 64 KiB or more)"),
                ("limit_receive_buffer", "received into one reused 256 KiB buffer, then copied into the mapped file (nbdkit's memory plugin)"),
                ("limit_receive_mapped", "received straight into a shared mapping of the file whose pages are already mapped"),
                ("limit_receive_unmapped", "the same, the pages not mapped yet (each write faults its pages in)")]
if any(w2 == wl for wl, _ in receive_rows for (_, w2, _, _) in data):
    w("Storing a sequential write into a memory disk, the copy alone: a Python receiver (`nbdhelper.py receive`, "
      "server CPU) takes 256 KiB pieces that `socat` sends from the client CPU into a memory file whose pages "
      "all hold data already (a rewrite). Receiver CPU per GB; lower is better.")
    w("")
    w("| way | median CPU s/GB [min–max] |")
    w("| --- | --- |")
    for wl, label in receive_rows:
        for (backend, w2, m, s), vals in data.items():
            if w2 == wl:
                st = stats(vals)
                w(f"| {label} | {fmt(st[0])} [{fmt(st[1])}–{fmt(st[2])}] |")
    w("")

for wl, title in WORKLOADS:
    for backend in ("memory", "file", "null"):
        metrics = [m for m in METRICS if any(data.get((backend, wl, m, s)) for s in "ABCD")]
        if not metrics:
            continue
        w(f"## {wl} — {backend}")
        w("")
        w(title + (f" ({backend} backend)" if backend != "null" else
                   f" ({NULL_NOTES[wl]})" if wl in NULL_NOTES else ""))
        w("")
        hdr = "| server | " + " | ".join(f"{METRICS[m][0]} | ratio" for m in metrics) + " |"
        w(hdr)
        w("| --- |" + " --- | --- |" * len(metrics))
        for s in "ABCD":
            if not any(data.get((backend, wl, m, s)) for m in metrics):
                continue
            cells = []
            for m in metrics:
                st = stats(data.get((backend, wl, m, s), []))
                r = ratio(backend, wl, m, s)
                cells.append(f"{fmt(st[0])} [{fmt(st[1])}–{fmt(st[2])}]" if st else "–")
                cells.append(fmt(r) if r is not None else "–")
            w(f"| {SERVERS[s]} | " + " | ".join(cells) + " |")
        w("")

w("## TLS")
w("")
w("The `tls-*` workloads use the file backend with `--tls=require` (qemu-nbd: `--object "
  "tls-creds-psk|tls-creds-x509,...,endpoint=server --tls-creds`), over a Unix socket. Certificates "
  "(a CA and a server certificate for localhost) and the PSK file (user `alice`) are made fresh by "
  "`certtool` and `psktool` for each run. nbd-server is not included: it has no TLS-PSK. The random "
  "reads are driven by a python3-libnbd aio loop, not fio: fio's nbd engine takes only `uri=`, and "
  "libnbd refuses `tls-psk-file=` or `tls-certificates=` in a URI unless the program calls "
  "`nbd_set_uri_allow_local_file` (fio fails with \"local file access (tls-psk-file) is not allowed\"). "
  "`randread-qd32-py` runs the same loop without TLS, so the TLS cost can be read against the same "
  "client; note that this client may itself be the limit at high IOPS.")
w("")
w("Negotiated by libnbd with each server (from libnbd's debug log, `nbdhelper.py tlsinfo`):")
w("")
if tlsinfo:
    w("| mode | server | cipher, key exchange, MAC (rounds) |")
    w("| --- | --- | --- |")
    for mode in ("psk", "psk-chacha", "x509"):
        for s in "ABCD":
            got = [t["negotiated"] for t in tlsinfo if t["mode"] == mode and t["server"] == s]
            if got:
                w(f"| {mode} | {SERVERS[s]} | " + "; ".join(f"{g} ({got.count(g)})" for g in sorted(set(got))) + " |")
    for mode in ("psk", "psk-chacha", "x509"):
        kinds = {t["negotiated"] for t in tlsinfo if t["mode"] == mode}
        if kinds:
            w("")
            w(f"{mode}: " + ("every server negotiated the same cipher suite." if len(kinds) == 1
                            else "**the servers did not all negotiate the same cipher suite.**"))
else:
    w("not measured in this run.")
w("")

w("## Failures and errors")
w("")
if not errors:
    w("None: every workload completed on every server in every round.")
else:
    w("| round | server | backend | workload | rc | command | detail |")
    w("| --- | --- | --- | --- | --- | --- | --- |")
    for e in errors:
        det = e["detail"].replace("|", "\\|")
        cmd = e["command"].replace("|", "\\|")
        w(f"| {e['round']} | {SERVERS.get(e['server'], e['server'])} | {e['backend']} | {e['workload']} | "
          f"{e['rc']} | `{cmd}` | {det} |")
w("")

# Chart: every server relative to nbdkit, oriented so that higher is better.
chart_note = ""
if meta.get("WANT_PLOT") == "1":
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        labels, series = [], {s: [] for s in "ACD"}
        for wl, backend, m in headline:
            labels.append(f"{wl}\n{backend}")
            for s in "ACD":
                r = ratio(backend, wl, m, s)
                if r is not None and not METRICS[m][1] and r != 0:
                    r = 1 / r
                series[s].append(r if r else float('nan'))
        fig, ax = plt.subplots(figsize=(max(8, len(labels) * 0.7), 5.5))
        width = 0.27
        colors = {"A": "#d9534f", "C": "#5bc0de", "D": "#5cb85c"}
        for i, s in enumerate("ACD"):
            xs = [x + (i - 1) * width for x in range(len(labels))]
            ax.bar(xs, series[s], width, label=SERVERS[s], color=colors[s])
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_yscale("log", base=2)
        for x, v in enumerate(series["A"]):
            if v == v:  # not NaN
                ax.annotate(f"{v:.2g}", (x - width, v), ha="center", va="bottom", fontsize=6)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, fontsize=7, rotation=40, ha="right")   # long workload names
        ax.set_ylabel("÷ nbdkit 1.32, log scale (higher = better)")
        ax.set_title("Median performance relative to nbdkit 1.32 (time/memory metrics inverted)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(png_path, dpi=110)
        chart_note = f"![ratios]({os.path.basename(png_path)})"
    except Exception as e:  # the chart is optional
        chart_note = f"(chart not drawn: {e})"
else:
    chart_note = "(chart not drawn: python3-matplotlib not available)"

# Put the chart right after the headline table.
idx = out.index("## Physical limits on this machine (not NBD)")
out[idx:idx] = [f"Chart (`{os.path.basename(png_path)}`): each server's median relative to nbdkit 1.32, "
                "inverted for start-up time and memory so that higher is always better.", "", chart_note, ""]

with open(results_path, "w") as f:
    f.write("\n".join(out) + "\n")
