//! SIGTERM while clients hold long-lived streams open. etcd lets in-flight requests finish for
//! at most its request timeout (5 s + 2 election timeouts) and then closes the connections that
//! are still open (watch streams never finish on their own); the candidate must exit as promptly,
//! by itself, without losing an acknowledged write, and its watch clients must see their stream
//! end rather than hang.
//!
//! Runs against the candidate (Ballast, or etcd with `BALLAST_COMPAT_SELFTEST=1`).

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use ballast_proto::etcdserverpb::{PutRequest, RangeRequest};
use ballast_testkit::watch::{self, create_request, Received, WatchStream};
use ballast_testkit::{candidate_kind, Server, ServerOptions};

/// Linux's SIGTERM (etcd re-raises it after its shutdown handlers ran).
const SIGTERM: i32 = 15;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_open_watch_streams_exits_within_the_request_timeout() {
    // Election timeout 500 ms: request timeout 6 s, under the harness's 10 s before SIGKILL.
    let mut server = Server::start_with(
        candidate_kind(),
        ServerOptions {
            extra_args: ["--heartbeat-interval", "50", "--election-timeout", "500"]
                .map(String::from)
                .to_vec(),
            ..ServerOptions::default()
        },
    );
    let url = server.client_url();
    let mut kv = ballast_testkit::kv_client(&url).await;
    kv.put(PutRequest {
        key: b"k".to_vec(),
        value: b"acknowledged".to_vec(),
        ..Default::default()
    })
    .await
    .expect("put");
    let client = watch::watch_client(&url).await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut s = WatchStream::open(&client);
        s.create(create_request("k", ""));
        match s.recv_timeout(Duration::from_secs(5)).await {
            Some((_, Received::Response(r))) if r.created => {}
            other => panic!("no created response: {other:?}"),
        }
        streams.push(s);
    }

    let started = Instant::now();
    let (mut server, status) = tokio::task::spawn_blocking(move || {
        let status = server.stop();
        (server, status)
    })
    .await
    .expect("stop");
    let took = started.elapsed();
    let status = status.expect("it was running");
    // Exited by itself: success (Ballast) or the re-raised SIGTERM (etcd), not the harness's
    // SIGKILL after 10 s.
    assert!(
        status.success() || status.signal() == Some(SIGTERM),
        "exit status {status:?} after {took:?}\n{}",
        server.log_tail(20)
    );
    assert!(took < Duration::from_secs(9), "took {took:?} to exit");

    // Every watch client sees its stream end.
    for (i, s) in streams.iter_mut().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match s.recv_until(deadline).await {
                Some((_, Received::Response(r))) => {
                    assert!(r.events.is_empty(), "stream {i}: unexpected events {r:?}")
                }
                // Both end it by closing the connection: the client sees a transport error.
                Some(_) => break,
                None if s.is_closed() => break,
                None => panic!("stream {i} still open 5 s after the server exited"),
            }
        }
    }

    // The acknowledged write survived.
    server.restart();
    let mut kv = ballast_testkit::kv_client(&server.client_url()).await;
    let got = kv
        .range(RangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    assert_eq!(got.kvs.len(), 1);
    assert_eq!(got.kvs[0].value, b"acknowledged");
}
