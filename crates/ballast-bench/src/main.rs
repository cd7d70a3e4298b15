//! # ballast-bench
//!
//! A load generator for any etcd v3 gRPC endpoint — Debian's etcd 3.4 or Ballast — in the
//! manner of etcd's `tools/benchmark`: `clients` closed-loop clients share `conns` HTTP/2
//! connections and issue `total` requests (or run for `duration`); the report gives
//! throughput, a latency distribution (HdrHistogram, microsecond resolution), errors by
//! message and, with `--target-pid`, the server's RSS, peak RSS and CPU per request.
//! `compare` runs one benchmark against two targets and prints B/A ratios, the numbers
//! that go into `BENCHMARKS.md`; `null-server` measures the tool's own ceiling.
//!
//! Benchmarks: `put`, `range`, `txn-put` (KV requests); `watch` (event delivery and put →
//! event delay over many watchers, with RSS per watcher); `lease-grant`, `lease-keepalive`
//! (lease requests and keep-alive streams); `lease-expire` (put latency while many leases,
//! or one lease with many keys, expire or are revoked). `--rate` paces any of them.
//!
//! Map: [`cli`] (flags) → [`workload`] (one [`runner::Workload`] per request kind, plus
//! connect / prefill / measure, and the setup of the watch and lease benchmarks) →
//! [`runner`] (the closed loop) → [`report`] (text/JSON); [`endpoint`] parses and dials,
//! [`transport`] is the lean HTTP/2 connection the tonic stubs run on, [`keys`] makes
//! etcd-compatible keys, [`clock`] times events across tasks, [`procfs`] reads `/proc`,
//! [`compare`] and [`null_server`] are the two non-benchmark commands.
//!
//! The tool speaks only the public etcd API through `ballast-proto`'s generated stubs and
//! must never depend on Ballast internals: it has to measure etcd and Ballast alike.
//! Keep it cheap: everything a request needs is prepared before the clock starts, and each
//! client records into its own histogram.

mod cli;
mod clock;
mod compare;
mod endpoint;
mod keys;
mod null_server;
mod procfs;
mod report;
mod runner;
mod transport;
mod workload;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};
use workload::{run_bench, Target};

fn main() -> ExitCode {
    // Start the clock that event delays and timelines are measured on.
    clock::now_ns();
    let cli = Cli::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = cli.global.threads {
        rt.worker_threads(n as usize);
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let g = &cli.global;
    match &cli.command {
        Command::Bench(bench) => {
            let target = Target {
                endpoints: g.endpoints.0.clone(),
                label: g.label.clone(),
                pid: g.target_pid,
            };
            let report = run_bench(bench, g, &target).await?;
            if g.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_text());
            }
        }
        Command::Compare(c) => {
            let cmp = compare::run(c, g).await?;
            if g.json {
                println!("{}", cmp.to_json());
            } else {
                print!("{}{}", cmp.a.to_text(), cmp.b.to_text());
                print!("{}", cmp.to_text());
            }
        }
        Command::NullServer(a) => null_server::serve(a.listen).await?,
    }
    Ok(())
}
