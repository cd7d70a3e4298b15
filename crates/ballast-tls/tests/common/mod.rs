//! Test PKI (a CA, certificates it signs, CRLs, all made with rcgen into a temporary directory)
//! and a TLS round trip over real TCP on 127.0.0.1.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use ballast_tls::{accept, Acceptor, Connector, HandshakeError, TlsInfo};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevocationReason, RevokedCertParams, SerialNumber,
};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub const TIMEOUT: Duration = Duration::from_secs(5);

/// A certificate authority whose files live in `dir`.
pub struct Ca {
    pub dir: PathBuf,
    pub name: String,
    pub cert_file: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA");
        let cert_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&cert_file, issuer.pem()).expect("write CA");
        Ca {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            cert_file,
            issuer,
        }
    }

    /// A certificate for both TLS ends (server and client auth), with CN `cn` and the SANs
    /// (IPs become IP SANs), serial `serial`. Returns (cert file, key file).
    pub fn issue(&self, file: &str, cn: &str, sans: &[&str], serial: u64) -> (PathBuf, PathBuf) {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("params");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serial_number = Some(SerialNumber::from(serial));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let cert_file = self.dir.join(format!("{file}.pem"));
        let key_file = self.dir.join(format!("{file}-key.pem"));
        std::fs::write(&cert_file, cert.pem()).expect("write cert");
        std::fs::write(&key_file, key.serialize_pem()).expect("write key");
        (cert_file, key_file)
    }

    /// A CRL of this CA revoking `serials`, written (PEM) to `file`.
    pub fn write_crl(&self, file: &Path, serials: &[u64]) {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - time::Duration::days(1),
            next_update: now + time::Duration::days(1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|&s| RevokedCertParams {
                    serial_number: SerialNumber::from(s),
                    revocation_time: now,
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).expect("CRL");
        // Replace, as an operator's tooling would: write aside, rename over.
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, crl.pem().expect("CRL PEM")).expect("write CRL");
        std::fs::rename(&tmp, file).expect("rename CRL");
    }
}

/// Peer TLS settings as a member with mTLS would have them.
pub fn peer_info(ca: &Ca, (cert, key): (PathBuf, PathBuf)) -> TlsInfo {
    TlsInfo {
        cert_file: Some(cert),
        key_file: Some(key),
        trusted_ca_file: Some(ca.cert_file.clone()),
        client_cert_auth: true,
        ..TlsInfo::default()
    }
}

/// What one connection's two ends saw.
pub struct RoundTrip {
    pub server: Result<ServerSaw, HandshakeError>,
    pub client: Result<(), String>,
}

pub struct ServerSaw {
    pub client_cert: Option<Vec<u8>>,
    pub alpn: Option<Vec<u8>>,
}

impl RoundTrip {
    pub fn assert_ok(&self) {
        if let Err(e) = &self.server {
            panic!("server side failed: {e}");
        }
        if let Err(e) = &self.client {
            panic!("client side failed: {e}");
        }
    }

    /// Refused by the server; the client saw the connection fail too. Returns the server's error.
    pub fn assert_refused(&self) -> String {
        let server = match &self.server {
            Ok(_) => panic!("the server accepted the client"),
            Err(e) => e.to_string(),
        };
        assert!(
            self.client.is_err(),
            "the client did not notice the refusal ({server})"
        );
        server
    }
}

/// One connection from `client` (a [`Connector`]) to a listener on 127.0.0.1 using `server`
/// (an [`Acceptor`]): the client sends "ping", the server answers "pong".
pub async fn round_trip(server: &Acceptor, client: &Connector) -> RoundTrip {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let uri: http::Uri = format!("https://{}", listener.local_addr().expect("addr"))
        .parse()
        .expect("uri");
    round_trip_to(listener, server, client, uri).await
}

pub async fn round_trip_to(
    listener: TcpListener,
    server: &Acceptor,
    client: &Connector,
    uri: http::Uri,
) -> RoundTrip {
    let acceptor = server.clone();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut tls = accept(&acceptor, tcp, TIMEOUT).await?;
        let (_, conn) = tls.get_ref();
        let saw = ServerSaw {
            client_cert: conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec()),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        };
        let mut ping = [0u8; 4];
        // A client that gave up is not the server's failure.
        if tls.read_exact(&mut ping).await.is_ok() && &ping == b"ping" {
            let _ = tls.write_all(b"pong").await;
            let _ = tls.flush().await;
            let _ = tls.shutdown().await;
        }
        Ok(saw)
    });
    let client = async {
        let mut tls = client.connect(&uri).await.map_err(|e| e.to_string())?;
        tls.write_all(b"ping")
            .await
            .map_err(|e| format!("write: {e}"))?;
        tls.flush().await.map_err(|e| format!("flush: {e}"))?;
        let mut pong = [0u8; 4];
        tls.read_exact(&mut pong)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if &pong != b"pong" {
            return Err(format!("read {pong:?}"));
        }
        Ok(())
    }
    .await;
    let server = server.await.expect("server task");
    RoundTrip { server, client }
}

pub fn acceptor(info: &TlsInfo) -> Acceptor {
    Acceptor::new(info).unwrap_or_else(|e| panic!("server config: {e}"))
}

pub fn connector(info: &TlsInfo) -> Connector {
    Connector::new(info, TIMEOUT).unwrap_or_else(|e| panic!("client config: {e}"))
}
