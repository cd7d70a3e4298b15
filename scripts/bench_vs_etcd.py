#!/usr/bin/env python3
"""Side-by-side benchmark of Ballast and Debian's etcd on this machine, same tool, same run.

Usage: scripts/bench_vs_etcd.py [--quick] [--skip-load]
Builds the release binaries, starts one etcd and one Ballast member on loopback ports in temp
dirs, runs ballast-bench scenarios against each in turn, loads 1,000,000 keys into each to
measure RSS, data-dir size and restart time, and prints a Markdown table for BENCHMARKS.md.
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
BALLAST = os.path.join(ROOT, "target/release/ballast")
QUICK = "--quick" in sys.argv
SKIP_LOAD = "--skip-load" in sys.argv


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
        for kind, port in ports.items():
            d = os.path.join(tmp, kind, "data")
            os.makedirs(os.path.dirname(d))
            servers[kind] = (start(kind, port, d)[0], d)
        n = 10 if QUICK else 1
        scenarios = [
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
        if not SKIP_LOAD:
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
    finally:
        for p, _ in servers.values():
            p.kill()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
