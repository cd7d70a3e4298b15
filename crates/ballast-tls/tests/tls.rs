//! Peer TLS over real TCP on 127.0.0.1: mutual TLS, etcd's certificate checks, auto-TLS,
//! handshake timeouts, and a tonic channel over the connector.

mod common;

use std::time::{Duration, Instant};

use ballast_tls::{accept, Connector, HandshakeError, TlsInfo, TlsKind};
use common::{acceptor, connector, peer_info, round_trip, round_trip_to, Ca, TIMEOUT};
use tokio::net::TcpListener;

const LOCAL: &[&str] = &["127.0.0.1"];

#[tokio::test]
async fn mutual_tls_with_ca_signed_certs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "cluster");
    let server = peer_info(&ca, ca.issue("member-a", "member-a", LOCAL, 1));
    let client = peer_info(&ca, ca.issue("member-b", "member-b", LOCAL, 2));

    let trip = round_trip(&acceptor(&server), &connector(&client)).await;
    trip.assert_ok();
    let saw = trip.server.as_ref().expect("server");
    let client_cert =
        std::fs::read_to_string(client.cert_file.as_ref().expect("cert")).expect("read");
    let client_der = rustls_pem_first(&client_cert);
    assert_eq!(
        saw.client_cert.as_deref(),
        Some(client_der.as_slice()),
        "the server saw member-b's cert"
    );
    assert_eq!(saw.alpn.as_deref(), Some(&b"h2"[..]));
}

#[tokio::test]
async fn client_cert_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "cluster");
    let other = Ca::new(dir.path(), "other");
    let server = peer_info(&ca, ca.issue("member-a", "member-a", LOCAL, 1));
    // The intruder trusts the cluster's CA (so it accepts the server) but its own cert is not
    // signed by it.
    let intruder = TlsInfo {
        trusted_ca_file: Some(ca.cert_file.clone()),
        ..peer_info(&other, other.issue("intruder", "member-b", LOCAL, 2))
    };
    let refused = round_trip(&acceptor(&server), &connector(&intruder))
        .await
        .assert_refused();
    assert!(refused.contains("UnknownIssuer"), "{refused}");
}

#[tokio::test]
async fn allowed_cn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "cluster");
    let server = TlsInfo {
        allowed_cn: vec!["member-b".into(), "member-c".into()],
        ..peer_info(&ca, ca.issue("member-a", "member-a", LOCAL, 1))
    };
    let server = acceptor(&server);

    let good = peer_info(&ca, ca.issue("member-c", "member-c", LOCAL, 3));
    round_trip(&server, &connector(&good)).await.assert_ok();

    let bad = peer_info(&ca, ca.issue("member-x", "member-x", LOCAL, 4));
    let refused = round_trip(&server, &connector(&bad)).await.assert_refused();
    assert!(
        refused.contains(r#"CN "member-x""#) && refused.contains("--peer-cert-allowed-cn"),
        "{refused}"
    );
}

#[tokio::test]
async fn allowed_hostname() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "cluster");
    let server_files = ca.issue("member-a", "member-a", LOCAL, 1);
    let with_allowed = |hosts: &[&str]| TlsInfo {
        allowed_hostname: hosts.iter().map(|h| h.to_string()).collect(),
        ..peer_info(&ca, server_files.clone())
    };
    // The client's certificate names 127.0.0.1 (so etcd's source-address check passes) and two
    // DNS names; its CN is deliberately not a host.
    let client = peer_info(
        &ca,
        ca.issue(
            "member-b",
            "not-a-host",
            &["127.0.0.1", "member-b.cluster.example", "*.pods.example"],
            2,
        ),
    );
    let client = connector(&client);

    for allowed in [
        &["member-b.cluster.example"][..],
        &["x.example", "127.0.0.1"],
        &["pod-7.pods.example"],
    ] {
        round_trip(&acceptor(&with_allowed(allowed)), &client)
            .await
            .assert_ok();
    }
    for allowed in [
        &["member-c.cluster.example"][..],
        &["not-a-host"],
        &["10.0.0.1"],
        &["a.b.pods.example"],
    ] {
        let refused = round_trip(&acceptor(&with_allowed(allowed)), &client)
            .await
            .assert_refused();
        assert!(
            refused.contains("--peer-cert-allowed-hostname"),
            "{allowed:?}: {refused}"
        );
    }
}

#[tokio::test]
async fn allowed_cn_is_checked_on_the_dialled_server_too() {
    // etcd installs the check in the tls.Config both sides share.
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "cluster");
    let server = peer_info(&ca, ca.issue("member-a", "member-a", LOCAL, 1));
    let client = TlsInfo {
        allowed_cn: vec!["member-z".into()],
        ..peer_info(&ca, ca.issue("member-b", "member-b", LOCAL, 2))
    };
    let trip = round_trip(&acceptor(&server), &connector(&client)).await;
    let client_err = trip.client.expect_err("the client refused the server");
    assert!(client_err.contains(r#"CN "member-a""#), "{client_err}");
}

#[tokio::test]
async fn revoked_cert_is_refused_and_the_crl_file_is_reread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "cluster");
    let crl = dir.path().join("crl.pem");
    ca.write_crl(&crl, &[99]);
    let server = TlsInfo {
        crl_file: Some(crl.clone()),
        ..peer_info(&ca, ca.issue("member-a", "member-a", LOCAL, 1))
    };
    let server = acceptor(&server);
    let client = connector(&peer_info(&ca, ca.issue("member-b", "member-b", LOCAL, 2)));
    let revoked = connector(&peer_info(&ca, ca.issue("member-c", "member-c", LOCAL, 99)));

    round_trip(&server, &client).await.assert_ok();
    let refused = round_trip(&server, &revoked).await.assert_refused();
    assert!(refused.contains("Revoked"), "{refused}");

    // Revoking member-b too takes effect on the next connection, without a new configuration
    // (etcd reads the CRL file on every accepted connection).
    ca.write_crl(&crl, &[99, 2]);
    let refused = round_trip(&server, &client).await.assert_refused();
    assert!(refused.contains("Revoked"), "{refused}");

    // A CRL file that became unreadable refuses every client (etcd's checkCRL fails too).
    std::fs::remove_file(&crl).expect("remove CRL");
    let other = connector(&peer_info(&ca, ca.issue("member-d", "member-d", LOCAL, 4)));
    let refused = round_trip(&server, &other).await.assert_refused();
    assert!(refused.contains("CRL file"), "{refused}");
}

#[tokio::test]
async fn crl_file_in_der() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "cluster");
    let pem = dir.path().join("crl.pem");
    ca.write_crl(&pem, &[2]);
    let der = dir.path().join("crl.der");
    std::fs::write(
        &der,
        rustls_pem_first(&std::fs::read_to_string(&pem).expect("read")),
    )
    .expect("write");
    let server = TlsInfo {
        crl_file: Some(der),
        ..peer_info(&ca, ca.issue("member-a", "member-a", LOCAL, 1))
    };
    let client = connector(&peer_info(&ca, ca.issue("member-b", "member-b", LOCAL, 2)));
    round_trip(&acceptor(&server), &client)
        .await
        .assert_refused();
}

#[tokio::test]
async fn client_cert_must_name_the_address_it_connects_from() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "cluster");
    let server = peer_info(&ca, ca.issue("member-a", "member-a", LOCAL, 1));
    let elsewhere = connector(&peer_info(
        &ca,
        ca.issue("elsewhere", "member-b", &["10.1.2.3"], 2),
    ));

    let trip = round_trip(&acceptor(&server), &elsewhere).await;
    match &trip.server {
        Err(HandshakeError::ClientSan { problem, .. }) => {
            assert!(problem.contains("127.0.0.1"), "{problem}")
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("accepted a certificate for 10.1.2.3 from 127.0.0.1"),
    }

    // --peer-skip-client-san-verification.
    let skipping = acceptor(&TlsInfo {
        skip_client_san_verify: true,
        ..server.clone()
    });
    round_trip(&skipping, &elsewhere).await.assert_ok();
    // No SANs at all: nothing to check (etcd's checkCertSAN).
    let no_sans = connector(&peer_info(&ca, ca.issue("no-sans", "member-c", &[], 3)));
    round_trip(&acceptor(&server), &no_sans).await.assert_ok();
    // A DNS SAN resolving to the address.
    let by_name = connector(&peer_info(
        &ca,
        ca.issue("by-name", "member-d", &["localhost"], 4),
    ));
    round_trip(&acceptor(&server), &by_name).await.assert_ok();
}

#[tokio::test]
async fn server_cert_must_name_the_dialled_ip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "cluster");
    let server = peer_info(
        &ca,
        ca.issue("member-a", "member-a", &["10.1.2.3", "member-a.example"], 1),
    );
    let client = peer_info(&ca, ca.issue("member-b", "member-b", LOCAL, 2));
    let trip = round_trip(&acceptor(&server), &connector(&client)).await;
    let client_err = trip.client.expect_err("the client refused the server");
    assert!(
        client_err.contains("not valid for name \"127.0.0.1\""),
        "{client_err}"
    );
}

#[tokio::test]
async fn rotated_server_cert_is_used_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old_ca = Ca::new(dir.path(), "old");
    let new_ca = Ca::new(dir.path(), "new");
    let server_info = peer_info(&old_ca, old_ca.issue("member-a", "member-a", LOCAL, 1));
    let server = acceptor(&TlsInfo {
        trusted_ca_file: None,
        client_cert_auth: false,
        ..server_info.clone()
    });
    let trusts_new = connector(&peer_info(
        &new_ca,
        new_ca.issue("member-b", "member-b", LOCAL, 2),
    ));
    round_trip(&server, &trusts_new)
        .await
        .assert_refused_by_client();

    // Replace member-a's cert and key in place with ones signed by the new CA.
    let (cert, key) = new_ca.issue("member-a-new", "member-a", LOCAL, 3);
    std::fs::rename(key, server_info.key_file.as_ref().expect("key")).expect("rename key");
    std::fs::rename(cert, server_info.cert_file.as_ref().expect("cert")).expect("rename cert");
    round_trip(&server, &trusts_new).await.assert_ok();
}

#[tokio::test]
async fn auto_tls_generates_once_reuses_and_two_ends_talk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auto = TlsInfo {
        auto_tls: true,
        ..TlsInfo::default()
    };
    let hosts = ["127.0.0.1:2380", "[::1]:2380", "member-a.example:2380"];

    let a = auto
        .clone()
        .resolve_auto_tls(&dir.path().join("a"), &hosts, 1)
        .expect("auto a");
    let fixtures = dir.path().join("a").join("fixtures").join("peer");
    assert_eq!(
        a.cert_file.as_deref(),
        Some(fixtures.join("cert.pem").as_path())
    );
    assert_eq!(
        a.key_file.as_deref(),
        Some(fixtures.join("key.pem").as_path())
    );
    assert!(a.auto_tls);
    let cert_pem = std::fs::read(fixtures.join("cert.pem")).expect("cert");
    let key_pem = std::fs::read(fixtures.join("key.pem")).expect("key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode =
            |p: &std::path::Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&fixtures.join("key.pem")), 0o600);
        assert_eq!(mode(&fixtures), 0o700);
    }

    // A restart reuses the files as they are.
    let again = auto
        .clone()
        .resolve_auto_tls(&dir.path().join("a"), &hosts, 1)
        .expect("again");
    assert_eq!(again, a);
    assert_eq!(
        std::fs::read(fixtures.join("cert.pem")).expect("cert"),
        cert_pem
    );
    assert_eq!(
        std::fs::read(fixtures.join("key.pem")).expect("key"),
        key_pem
    );

    // Another member with its own self-signed certificate: they talk both ways, neither
    // verifying the other.
    let b = auto
        .clone()
        .resolve_auto_tls(&dir.path().join("b"), &hosts, 1)
        .expect("auto b");
    assert_ne!(
        std::fs::read(b.cert_file.as_ref().expect("cert")).expect("cert"),
        cert_pem
    );
    let trip = round_trip(&acceptor(&a), &connector(&b)).await;
    trip.assert_ok();
    assert_eq!(
        trip.server.as_ref().expect("server").client_cert,
        None,
        "no client cert asked for"
    );
    round_trip(&acceptor(&b), &connector(&a)).await.assert_ok();

    // An auto-TLS end dialled by a member that verifies against a CA refuses it.
    let ca = Ca::new(dir.path(), "cluster");
    let verifying = connector(&peer_info(&ca, ca.issue("member-c", "member-c", LOCAL, 3)));
    round_trip(&acceptor(&a), &verifying)
        .await
        .assert_refused_by_client();
}

#[tokio::test]
async fn auto_tls_ignored_when_certs_given_and_drops_verification_settings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "cluster");
    let given = TlsInfo {
        auto_tls: true,
        ..peer_info(&ca, ca.issue("member-a", "member-a", LOCAL, 1))
    };
    let resolved = given
        .clone()
        .resolve_auto_tls(dir.path(), LOCAL, 1)
        .expect("resolve");
    assert_eq!(
        resolved,
        TlsInfo {
            auto_tls: false,
            ..given
        }
    );
    assert!(!dir.path().join("fixtures").exists());

    let with_ca = TlsInfo {
        auto_tls: true,
        trusted_ca_file: Some(ca.cert_file.clone()),
        client_cert_auth: true,
        allowed_cn: vec!["x".into()],
        ..TlsInfo::default()
    };
    let resolved = with_ca
        .resolve_auto_tls(dir.path(), LOCAL, 1)
        .expect("resolve");
    assert!(resolved.auto_tls && resolved.trusted_ca_file.is_none() && !resolved.client_cert_auth);
    assert!(resolved.allowed_cn.is_empty());
}

#[tokio::test]
async fn handshake_times_out_on_a_silent_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "cluster");
    let server = acceptor(&peer_info(&ca, ca.issue("member-a", "member-a", LOCAL, 1)));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (tcp, _) = listener.accept().await.expect("accept");

    let started = Instant::now();
    let timeout = Duration::from_millis(300);
    match accept(&server, tcp, timeout).await {
        Err(HandshakeError::Timeout { after, .. }) => assert_eq!(after, timeout),
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("a silent client completed a handshake"),
    }
    assert!(started.elapsed() < TIMEOUT, "took {:?}", started.elapsed());
    drop(silent);
}

#[tokio::test]
async fn connect_times_out_on_a_silent_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "cluster");
    let client = peer_info(&ca, ca.issue("member-b", "member-b", LOCAL, 2));
    let connector = Connector::new(&client, Duration::from_millis(300)).expect("connector");
    // Accepts TCP (the kernel does, from the backlog) and never answers the ClientHello.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let uri = format!("https://{}", listener.local_addr().expect("addr"))
        .parse()
        .expect("uri");
    match connector.connect(&uri).await {
        Err(HandshakeError::Timeout { .. }) => {}
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("handshake with a silent server"),
    }
    drop(listener);
}

#[tokio::test]
async fn connector_needs_https() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "cluster");
    let client = connector(&peer_info(&ca, ca.issue("member-b", "member-b", LOCAL, 2)));
    let err = client
        .connect(&"http://127.0.0.1:2380".parse().expect("uri"))
        .await
        .expect_err("refused");
    assert!(matches!(err, HandshakeError::Uri { .. }), "{err}");
}

#[tokio::test]
async fn dial_a_dns_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "cluster");
    let server = peer_info(
        &ca,
        ca.issue("member-a", "member-a", &["localhost", "127.0.0.1"], 1),
    );
    let client = peer_info(&ca, ca.issue("member-b", "member-b", LOCAL, 2));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let uri = format!(
        "https://localhost:{}",
        listener.local_addr().expect("addr").port()
    )
    .parse()
    .expect("uri");
    round_trip_to(listener, &acceptor(&server), &connector(&client), uri)
        .await
        .assert_ok();
}

/// A gRPC channel over the connector: tonic's `Endpoint::connect_with_connector` with an
/// `https://` peer URL, served by hyper on accepted TLS streams.
#[tokio::test]
async fn tonic_channel_over_the_connector() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use tower_service::Service;

    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "cluster");
    let server = acceptor(&peer_info(&ca, ca.issue("member-a", "member-a", LOCAL, 1)));
    let client = connector(&peer_info(&ca, ca.issue("member-b", "member-b", LOCAL, 2)));

    let (_reporter, health) = tonic_health::server::health_reporter();
    let routes = tonic::service::Routes::new(health);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let serving = tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.expect("accept");
            let (server, routes) = (server.clone(), routes.clone());
            tokio::spawn(async move {
                let Ok(tls) = accept(&server, tcp, TIMEOUT).await else {
                    return;
                };
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        routes.clone().call(req.map(tonic::body::Body::new))
                    });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });

    let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .connect_with_connector(client)
        .await
        .expect("channel");
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health check over TLS");
    assert_eq!(reply.into_inner().status, 1, "SERVING");
    serving.abort();
}

#[test]
fn configuration_errors_name_the_file_or_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "cluster");
    let (cert, key) = ca.issue("member-a", "member-a", LOCAL, 1);
    let good = peer_info(&ca, (cert.clone(), key.clone()));
    let server_err = |info: &TlsInfo| {
        ballast_tls::server_config(info)
            .expect_err("refused")
            .to_string()
    };

    let missing = dir.path().join("nope.pem");
    let err = server_err(&TlsInfo {
        cert_file: Some(missing.clone()),
        ..good.clone()
    });
    assert!(
        err.starts_with(&format!("peer cert file {}: ", missing.display())),
        "{err}"
    );

    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").expect("write");
    let some_empty = || Some(empty.clone());
    for (info, file, problem) in [
        (
            TlsInfo {
                cert_file: some_empty(),
                ..good.clone()
            },
            "cert file",
            "no certificate found",
        ),
        (
            TlsInfo {
                key_file: some_empty(),
                ..good.clone()
            },
            "key file",
            "no private key found",
        ),
        (
            TlsInfo {
                trusted_ca_file: some_empty(),
                ..good.clone()
            },
            "trusted CA file",
            "no certificate found",
        ),
        (
            TlsInfo {
                crl_file: some_empty(),
                ..good.clone()
            },
            "CRL file",
            "no CRL found",
        ),
    ] {
        let want = format!("peer {file} {}: {problem}", empty.display());
        assert_eq!(server_err(&info), want);
    }

    let (_, other_key) = ca.issue("member-b", "member-b", LOCAL, 2);
    let err = server_err(&TlsInfo {
        key_file: Some(other_key.clone()),
        ..good.clone()
    });
    assert!(err.contains("does not match the certificate"), "{err}");

    let err = server_err(&TlsInfo {
        key_file: None,
        ..good.clone()
    });
    assert_eq!(err, "--peer-cert-file needs --peer-key-file");
    let err = server_err(&TlsInfo {
        cert_file: None,
        key_file: None,
        ..good.clone()
    });
    assert!(
        err.contains("needs --peer-cert-file and --peer-key-file"),
        "{err}"
    );
    let err = server_err(&TlsInfo {
        trusted_ca_file: None,
        ..good.clone()
    });
    assert_eq!(err, "--peer-client-cert-auth needs --peer-trusted-ca-file");
    let err = server_err(&TlsInfo {
        allowed_cn: vec!["a".into()],
        allowed_hostname: vec!["b".into()],
        ..good.clone()
    });
    assert_eq!(
        err,
        "--peer-cert-allowed-cn and --peer-cert-allowed-hostname are mutually exclusive"
    );
    let err = server_err(&TlsInfo {
        allowed_hostname: vec!["no such host!".into()],
        ..good.clone()
    });
    assert!(
        err.contains("neither an IP address nor a DNS name"),
        "{err}"
    );
    let err = server_err(&TlsInfo {
        auto_tls: true,
        cert_file: None,
        key_file: None,
        ..TlsInfo::default()
    });
    assert!(err.contains("--peer-auto-tls"), "{err}");

    let client_err = ballast_tls::client_config(&TlsInfo {
        trusted_ca_file: None,
        ..good.clone()
    })
    .expect_err("refused")
    .to_string();
    assert!(
        client_err.contains("--peer-trusted-ca-file is not set"),
        "{client_err}"
    );

    // The client listener's flags are named as etcd names them.
    let err = server_err(&TlsInfo {
        kind: TlsKind::Client,
        trusted_ca_file: None,
        ..good.clone()
    });
    assert_eq!(err, "--client-cert-auth needs --trusted-ca-file");
    let err = server_err(&TlsInfo {
        kind: TlsKind::Client,
        cert_file: Some(missing.clone()),
        ..good
    });
    assert!(
        err.starts_with(&format!("client cert file {}: ", missing.display())),
        "{err}"
    );
}

/// The DER of the first PEM block of `pem`.
fn rustls_pem_first(pem: &str) -> Vec<u8> {
    let (_, der) = ballast_tls::rustls::pki_types::pem::from_buf(&mut pem.as_bytes())
        .expect("pem")
        .expect("a block");
    der
}

trait RefusedByClient {
    fn assert_refused_by_client(&self);
}

impl RefusedByClient for common::RoundTrip {
    /// The client refused the server's certificate (so the server's handshake failed too).
    fn assert_refused_by_client(&self) {
        assert!(self.client.is_err(), "the client accepted the server");
        assert!(
            self.server.is_err(),
            "the server completed a handshake the client refused"
        );
    }
}
