#!/usr/bin/env python3
"""Side-by-side benchmark of Ballast and Debian's etcd on this machine, same tool, same run.

Usage: [BALLAST_BIN=path] scripts/bench_vs_etcd.py [--quick] [--skip-load] [--only kv,load,watch,lease]
Builds the release binaries, starts one etcd and one Ballast member on loopback ports in temp
dirs, runs ballast-bench scenarios against each in turn, loads 1,000,000 keys into each to
measure RSS, data-dir size and restart time, and prints a Markdown table for BENCHMARKS.md.
The watch and lease rows then run on a fresh pair of servers (so that RSS per watcher is
measured on a server that never had watchers). A side that fails a row (e.g. a service that
answers Unimplemented) is reported as n/a with its error, and the run goes on.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "target/release/ballast-bench")
# BALLAST_BIN: another Ballast build to compare (e.g. a branch's); built here by default.
BALLAST = os.environ.get("BALLAST_BIN") or os.path.join(ROOT, "target/release/ballast")
QUICK = "--quick" in sys.argv
SKIP_LOAD = "--skip-load" in sys.argv
SECTIONS = {"kv", "load", "watch", "lease"}
if "--only" in sys.argv:
    SECTIONS = set(sys.argv[sys.argv.index("--only") + 1].split(","))
if SKIP_LOAD:
    SECTIONS.discard("load")


def start(kind, port, data_dir):
    peer = port + 1
    args = [
        "--name", "m1", "--data-dir", data_dir,
        "--listen-client-urls", f"http://127.0.0.1:{port}",
        "--advertise-client-urls", f"http://127.0.0.1:{port}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"m1=http://127.0.0.1:{peer}",
    ]
    binary = "etcd" if kind == "etcd" else BALLAST
    log = open(os.path.join(os.path.dirname(data_dir), f"{kind}.log"), "ab")
    t0 = time.time()
    p = subprocess.Popen([binary] + args, stdout=log, stderr=log)
    wait_ready(port)
    return p, time.time() - t0


def wait_ready(port, timeout=120):
    deadline = time.time() + timeout
    env = dict(os.environ, ETCDCTL_API="3")
    while time.time() < deadline:
        r = subprocess.run(["etcdctl", "--endpoints", f"127.0.0.1:{port}", "--command-timeout=1s",
                            "get", "ready-probe"], env=env, capture_output=True)
        if r.returncode == 0:
            return
        time.sleep(0.02)
    raise RuntimeError(f"server on {port} not ready")


def bench(port, pid, label, args):
    cmd = [BENCH, "--endpoints", f"127.0.0.1:{port}", "--json", "--label", label,
           "--target-pid", str(pid)] + args
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def try_bench(port, pid, label, args):
    """Like bench, but a failure is returned as {"error": message} instead of raised."""
    cmd = [BENCH, "--endpoints", f"127.0.0.1:{port}", "--json", "--label", label,
           "--target-pid", str(pid)] + args
    r = subprocess.run(cmd, capture_output=True, text=True)
    lines = r.stderr.strip().splitlines()
    for line in lines:
        if not line.startswith("error:"):
            print(f"  {label}: {line}", file=sys.stderr)
    if r.returncode != 0:
        errs = [l for l in lines if l.startswith("error:")]
        return {"error": (errs[-1] if errs else f"exit status {r.returncode}")[:300]}
    res = json.loads(r.stdout.strip().splitlines()[-1])
    if res["total"] > 0 and res["errors"] == res["total"]:
        # Nothing succeeded (e.g. the service answers Unimplemented): no numbers to show.
        return {"error": "every request failed: " + "; ".join(res["error_dist"])[:300]}
    return res


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def du_bytes(path):
    return int(subprocess.run(["du", "-sb", path], capture_output=True, text=True).stdout.split()[0])


def main():
    subprocess.run(["cargo", "build", "--release", "--bins"], cwd=ROOT, check=True)
    tmp = tempfile.mkdtemp(prefix="ballast-bench-")
    servers = {}
    try:
        ports = {"etcd": 41379, "ballast": 41479}
        if SECTIONS & {"kv", "load"}:
            for kind, port in ports.items():
                d = os.path.join(tmp, kind, "data")
                os.makedirs(os.path.dirname(d))
                servers[kind] = (start(kind, port, d)[0], d)
        n = 10 if QUICK else 1
        scenarios = [] if "kv" not in SECTIONS else [
            ("put, 1 client", ["--conns", "1", "--clients", "1", "--total", str(20000 // n),
                               "put", "--key-size", "8", "--val-size", "256", "--key-space-size", "100000"]),
            ("put, 256 clients / 16 conns", ["--conns", "16", "--clients", "256", "--total", str(200000 // n),
                                             "put", "--key-size", "8", "--val-size", "256", "--key-space-size", "100000"]),
            ("range linearizable, 64 clients", ["--conns", "16", "--clients", "64", "--total", str(200000 // n),
                                                "range", "bench-key", "--prefill", "1", "--prefill-val-size", "256"]),
            ("range serializable, 64 clients", ["--conns", "16", "--clients", "64", "--total", str(200000 // n),
                                                "range", "bench-key", "--consistency", "s", "--prefill", "1",
                                                "--prefill-val-size", "256"]),
        ]
        rows = []
        for name, args in scenarios:
            res = {}
            for kind in ("etcd", "ballast"):
                p, _ = servers[kind]
                res[kind] = bench(ports[kind], p.pid, kind, args)
            rows.append((name, res))
            e, b = res["etcd"], res["ballast"]
            print(f"{name}: etcd {e['throughput']:.0f}/s p99 {e['latency_ms']['p99']:.2f} ms | "
                  f"ballast {b['throughput']:.0f}/s p99 {b['latency_ms']['p99']:.2f} ms", file=sys.stderr)

        load = {}
        if "load" in SECTIONS:
            total = 100000 if QUICK else 1000000
            for kind in ("etcd", "ballast"):
                p, d = servers[kind]
                r = bench(ports[kind], p.pid, kind, ["--conns", "16", "--clients", "256", "--total", str(total),
                                                     "put", "--key-size", "32", "--val-size", "256",
                                                     "--sequential-keys", "--key-space-size", str(total)])
                time.sleep(2)
                rss = rss_kib(p.pid)
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=120)
                size = du_bytes(d)
                p2, restart_s = start(kind, ports[kind], d)
                servers[kind] = (p2, d)
                load[kind] = {"load_throughput": r["throughput"], "rss_kib": rss, "peak_rss_kib": r.get("peak_rss_kib"),
                              "data_dir_bytes": size, "restart_s": restart_s,
                              "rss_after_restart_kib": rss_kib(p2.pid)}
                print(f"load {kind}: {load[kind]}", file=sys.stderr)

        print(f"\nMachine: {os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') >> 30} GiB; "
              f"etcd: {subprocess.run(['etcd', '--version'], capture_output=True, text=True).stdout.splitlines()[0]}\n")
        if rows:
            print("| scenario | etcd req/s | Ballast req/s | ratio | etcd p99 ms | Ballast p99 ms | p99 ratio |")
            print("|---|---:|---:|---:|---:|---:|---:|")
        for name, res in rows:
            e, b = res["etcd"], res["ballast"]
            print(f"| {name} | {e['throughput']:.0f} | {b['throughput']:.0f} | {b['throughput'] / e['throughput']:.2f} | "
                  f"{e['latency_ms']['p99']:.2f} | {b['latency_ms']['p99']:.2f} | "
                  f"{b['latency_ms']['p99'] / max(e['latency_ms']['p99'], 1e-9):.2f} |")
        if load:
            e, b = load["etcd"], load["ballast"]
            print("\n| after loading keys (32 B keys, 256 B values) | etcd | Ballast | ratio |")
            print("|---|---:|---:|---:|")
            print(f"| load throughput (req/s, 256 clients) | {e['load_throughput']:.0f} | {b['load_throughput']:.0f} | {b['load_throughput'] / e['load_throughput']:.2f} |")
            print(f"| RSS after load (MiB) | {e['rss_kib'] / 1024:.0f} | {b['rss_kib'] / 1024:.0f} | {b['rss_kib'] / e['rss_kib']:.2f} |")
            print(f"| data dir (MiB) | {e['data_dir_bytes'] / 2**20:.0f} | {b['data_dir_bytes'] / 2**20:.0f} | {b['data_dir_bytes'] / e['data_dir_bytes']:.2f} |")
            print(f"| restart until serving (s) | {e['restart_s']:.2f} | {b['restart_s']:.2f} | {b['restart_s'] / e['restart_s']:.2f} |")
            print(f"| RSS after restart (MiB) | {e['rss_after_restart_kib'] / 1024:.0f} | {b['rss_after_restart_kib'] / 1024:.0f} | {b['rss_after_restart_kib'] / e['rss_after_restart_kib']:.2f} |")

        if SECTIONS & {"watch", "lease"}:
            # Fresh servers: nothing learned from the rows above, no watcher ever created.
            for kind, port in ports.items():
                if kind in servers:
                    p, _ = servers.pop(kind)
                    p.kill()
                    p.wait()
                d = os.path.join(tmp, f"{kind}-watch-lease", "data")
                os.makedirs(os.path.dirname(d))
                servers[kind] = (start(kind, port, d)[0], d)
            watch_lease_section(servers, ports)
    finally:
        for p, _ in servers.values():
            p.kill()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def watch_lease_rows():
    """(table, name, ballast-bench args) of the watch and lease rows, in the order they run."""
    q = QUICK
    rows = []
    if "watch" in SECTIONS:
        w = 2000 if q else 10000
        rows += [
            # First on the fresh servers: its RSS before/after the watchers gives RSS per watcher.
            ("watch", f"watch, {w:,} watchers on one key, {w // 100} streams / 10 conns, 100 puts from 4 clients",
             ["--conns", "10", "--clients", "4", "--total", "100",
              "watch", "--watchers", str(w), "--streams", str(w // 100)]),
            ("watch", f"watch, {w:,} watchers on one key, 10 puts/s for {5 if q else 10} s",
             ["--conns", "10", "--clients", "4", "--rate", "10", "--duration", "5s" if q else "10s",
              "watch", "--watchers", str(w), "--streams", str(w // 100)]),
            ("watch", f"watch, {w:,} watchers on distinct keys, {w:,} puts from 16 clients / 2 conns",
             ["--conns", "10", "--clients", "16",
              "watch", "--watchers", str(w), "--streams", str(w // 100), "--keys", "distinct",
              "--put-conns", "2"]),
        ]
    if "lease" in SECTIONS:
        grants = 5000 if q else 50000
        leases = 10000 if q else 100000
        keys = 10000 if q else 100000
        # 32 clients: up to 32 puts wait through a stall, so a stall shows in the percentiles.
        put_load = ["--conns", "4", "--clients", "32", "--rate", "500"]
        rows += [
            ("lease", f"lease keep-alive, 10,000 leases, 64 streams / 4 conns, {2 if q else 10} s",
             ["--conns", "4", "--clients", "64", "--duration", "2s" if q else "10s",
              "lease-keepalive", "--leases", "10000", "--setup-clients", "256"]),
            ("lease", "lease grant, 256 clients / 16 conns",
             ["--conns", "16", "--clients", "256", "--total", str(grants),
              "lease-grant", "--setup-clients", "256"]),
            ("lease", "lease grant + put a key on it, 256 clients / 16 conns",
             ["--conns", "16", "--clients", "256", "--total", str(grants // 2),
              "lease-grant", "--attach", "--setup-clients", "256"]),
            # The TTL must outlast granting and attaching (about 55 s for 100,000 on etcd 3.4).
            ("expiry", f"{leases:,} leases with a key each expire",
             put_load + ["lease-expire", "--leases", str(leases), "--ttl", "15" if q else "80",
                         "--setup-clients", "256"]),
            ("expiry", f"one lease with {keys:,} keys expires",
             put_load + ["lease-expire", "--leases", "1", "--keys-per-lease", str(keys),
                         "--attach-txn-ops", "100", "--ttl", "10", "--setup-clients", "64"]),
            ("expiry", f"one lease with {keys:,} keys revoked (LeaseRevoke)",
             put_load + ["lease-expire", "--leases", "1", "--keys-per-lease", str(keys),
                         "--attach-txn-ops", "100", "--ttl", "5", "--revoke", "--setup-clients", "64"]),
        ]
    return rows


def ratio(b, a):
    return f"{b / a:.2f}" if a else "-"


def watch_lease_section(servers, ports):
    results = []
    for table, name, args in watch_lease_rows():
        res = {}
        for kind in ("etcd", "ballast"):
            p, _ = servers[kind]
            res[kind] = try_bench(ports[kind], p.pid, kind, args)
        results.append((table, name, args, res))
        summary = " | ".join(
            f"{k} " + (r["error"] if "error" in r else
                       f"{r['throughput']:.0f} {r['unit']}/s p99 {r['latency_ms']['p99']:.2f} ms")
            for k, r in res.items())
        print(f"{name}: {summary}", file=sys.stderr)

    errors = []

    def cell(r, f):
        if "error" in r:
            if r["error"] not in errors:
                errors.append(r["error"])
            return f"n/a[{errors.index(r['error']) + 1}]"
        if r["errors"]:
            msg = "; ".join(f"[{n}] {m}" for m, n in r["error_dist"].items())[:300]
            if msg not in errors:
                errors.append(msg)
            return f"{f(r)} ({r['errors']} errors[{errors.index(msg) + 1}])"
        return f(r)

    def pair(res, f, fmt):
        e, b = res["etcd"], res["ballast"]
        ce, cb = cell(e, lambda r: fmt.format(f(r))), cell(b, lambda r: fmt.format(f(r)))
        rat = ratio(f(b), f(e)) if "error" not in e and "error" not in b else "-"
        return ce, cb, rat

    watch = [x for x in results if x[0] == "watch"]
    if watch:
        print("\n| watch scenario | etcd events/s | Ballast events/s | ratio | etcd delay p50 / p99 / max ms "
              "| Ballast delay p50 / p99 / max ms | p99 ratio |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for _, name, _, res in watch:
            te, tb, tr = pair(res, lambda r: r["throughput"], "{:.0f}")
            lat = lambda r: (f"{r['latency_ms']['p50']:.1f} / {r['latency_ms']['p99']:.1f} / "
                             f"{r['latency_ms']['max']:.1f}")
            _, _, pr = pair(res, lambda r: r["latency_ms"]["p99"], "{:.1f}")
            print(f"| {name} | {te} | {tb} | {tr} | {cell(res['etcd'], lat)} | {cell(res['ballast'], lat)} | {pr} |")
        _, name, _, res = watch[0]
        per = lambda r: r["details"]["rss"]["per_watcher_bytes"]
        pe, pb, pr = pair(res, per, "{:.0f}")
        print(f"\n| watchers' memory (first row, fresh servers) | etcd | Ballast | ratio |\n|---|---:|---:|---:|")
        print(f"| RSS per watcher (bytes) | {pe} | {pb} | {pr} |")

    lease = [x for x in results if x[0] == "lease"]
    if lease:
        print("\n| lease scenario | etcd req/s | Ballast req/s | ratio | etcd p99 ms | Ballast p99 ms | p99 ratio |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for _, name, _, res in lease:
            te, tb, tr = pair(res, lambda r: r["throughput"], "{:.0f}")
            pe, pb, pr = pair(res, lambda r: r["latency_ms"]["p99"], "{:.2f}")
            print(f"| {name} | {te} | {tb} | {tr} | {pe} | {pb} | {pr} |")

    expiry = [x for x in results if x[0] == "expiry"]
    if expiry:
        print("\n| under 500 puts/s (32 clients) | etcd window s | Ballast window s | etcd put p99 / max ms (puts) "
              "| Ballast put p99 / max ms (puts) | p99 ratio | etcd / Ballast baseline p99 ms |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for _, name, _, res in expiry:
            win = lambda r: r["details"]["expiry"]["last_delete_after_deadline_s"] or float("nan")
            we, wb, _ = pair(res, win, "{:.1f}")
            lat = lambda r: f"{r['latency_ms']['p99']:.1f} / {r['latency_ms']['max']:.1f} ({r['total']})"
            _, _, pr = pair(res, lambda r: r["latency_ms"]["p99"], "{:.1f}")
            base = lambda r: f"{r['details']['puts_before']['latency_ms']['p99']:.1f}"
            print(f"| {name} | {we} | {wb} | {cell(res['etcd'], lat)} | {cell(res['ballast'], lat)} | {pr} "
                  f"| {cell(res['etcd'], base)} / {cell(res['ballast'], base)} |")
        print("\nWindow: from the expiry deadline (or the revoke) until the last lease key was seen deleted; "
              "put p99/max over the puts in flight during it.")
    for i, e in enumerate(errors):
        print(f"\n[{i + 1}] {e}")
    print("\nCommands (each against etcd, then Ballast):")
    for _, name, args, _ in results:
        print(f"    ballast-bench {' '.join(args)}")


if __name__ == "__main__":
    main()
