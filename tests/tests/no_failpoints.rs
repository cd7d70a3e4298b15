//! The normal `ballast` binary has no failpoints: its client port has no `/debug/failpoints`
//! endpoint. A build that unified the `failpoints` feature into it (`cargo test --workspace`
//! without `--exclude ballast-failpoints`, see docs/failpoints.md) fails here.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use ballast_testkit::BallastProcess;

fn get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"
    )
    .expect("send");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn the_normal_binary_serves_no_failpoint_endpoint() {
    let server = BallastProcess::start();
    let version = get(server.client_port(), "/version");
    assert!(version.starts_with("HTTP/1.1 200"), "{version}");
    let armed = get(server.client_port(), "/debug/failpoints");
    assert!(
        armed.starts_with("HTTP/1.1 404"),
        "the normal build answers /debug/failpoints: {armed}"
    );
    assert!(
        !server.log_tail(1000).contains("failpoints compiled in"),
        "the normal build says it has failpoints"
    );
}
