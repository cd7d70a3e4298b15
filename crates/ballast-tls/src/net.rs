//! Handshakes over TCP: [`accept`] on a listener's connections, [`Connector`] to dial `https://`
//! peer URLs (a `tower` `Service<Uri>`, for `tonic::transport::Endpoint::connect_with_connector`).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, ServerConfig};
use tokio::net::TcpStream;

use crate::config::{client_config, server_config};
use crate::error::{HandshakeError, TlsError};
use crate::verify::parse_host;
use crate::x509::cert_names;
use crate::TlsInfo;

/// A TLS stream a listener accepted.
pub type ServerTlsStream = tokio_rustls::server::TlsStream<TcpStream>;
/// A TLS stream to a peer.
pub type ClientTlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// The server side of the handshake: the rustls configuration, and whether a client's
/// certificate must name the address it connects from.
#[derive(Clone)]
pub struct Acceptor {
    tls: tokio_rustls::TlsAcceptor,
    check_client_san: bool,
}

impl Acceptor {
    /// [`server_config`] of `info`; the client address check unless `skip_client_san_verify`.
    pub fn new(info: &TlsInfo) -> Result<Acceptor, TlsError> {
        Ok(Acceptor::from_config(
            server_config(info)?,
            !info.skip_client_san_verify,
        ))
    }

    pub fn from_config(config: Arc<ServerConfig>, check_client_san: bool) -> Acceptor {
        Acceptor {
            tls: tokio_rustls::TlsAcceptor::from(config),
            check_client_san,
        }
    }
}

/// Does the server side of the handshake on an accepted connection, then etcd's check that the
/// client's certificate names its address, all within `timeout`.
///
/// Run it in a task of its own, off the accept loop (as etcd's listener does each handshake in
/// its own goroutine): a client that connects and says nothing must not hold up the others.
///
/// The address check (etcd's `checkCertSAN`, off with `--peer-skip-client-san-verification`):
/// a client certificate with IP or DNS SANs must have the connection's source IP among its IP
/// SANs, or a DNS SAN that resolves to it; one with no SANs passes. etcd also tries a reverse
/// lookup of the source IP against the DNS SANs (wildcards included); Ballast does not.
pub async fn accept(
    acceptor: &Acceptor,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<ServerTlsStream, HandshakeError> {
    let peer = tcp.peer_addr().ok();
    let remote = peer.map_or_else(|| "(unknown address)".to_string(), |a| a.to_string());
    let handshake = async {
        let tls = acceptor
            .tls
            .accept(tcp)
            .await
            .map_err(|source| HandshakeError::Tls {
                remote: remote.clone(),
                source,
            })?;
        if acceptor.check_client_san {
            let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
            if let (Some(leaf), Some(peer)) = (leaf, peer) {
                check_client_san(leaf, peer).await.map_err(|problem| {
                    HandshakeError::ClientSan {
                        remote: remote.clone(),
                        problem,
                    }
                })?;
            }
        }
        Ok(tls)
    };
    match tokio::time::timeout(timeout, handshake).await {
        Ok(result) => result,
        Err(_) => Err(HandshakeError::Timeout {
            remote,
            after: timeout,
        }),
    }
}

async fn check_client_san(leaf: &[u8], peer: SocketAddr) -> Result<(), String> {
    let Some(names) = cert_names(leaf) else {
        return Err("its certificate's names cannot be read".into());
    };
    if names.ip_addresses.is_empty() && names.dns_names.is_empty() {
        return Ok(());
    }
    let ip = peer.ip().to_canonical();
    if names.ip_addresses.iter().any(|a| a.to_canonical() == ip) {
        return Ok(());
    }
    for name in names.dns_names.iter().filter(|n| !n.starts_with("*.")) {
        if let Ok(addrs) = tokio::net::lookup_host((name.as_str(), 0)).await {
            if addrs.map(|a| a.ip().to_canonical()).any(|a| a == ip) {
                return Ok(());
            }
        }
    }
    Err(format!(
        "its certificate names neither its address {ip} (IP SANs {:?}) nor a DNS name resolving to it (DNS SANs {:?})",
        names.ip_addresses, names.dns_names
    ))
}

/// Dials `https://host:port` URIs: TCP (no Nagle), then the TLS handshake, within `timeout`.
///
/// As a `tower_service::Service<Uri>` it answers `hyper`'s IO traits, so
/// `tonic::transport::Endpoint::connect_with_connector(connector)` makes a gRPC channel over it.
/// Tonic builds without its TLS features pass an `https` URI to the connector untouched; a build
/// with one of them would refuse it ("HttpsUriWithoutTlsSupport"), so keep them off.
#[derive(Clone)]
pub struct Connector {
    tls: tokio_rustls::TlsConnector,
    timeout: Duration,
}

impl Connector {
    /// [`client_config`] of `info`.
    pub fn new(info: &TlsInfo, timeout: Duration) -> Result<Connector, TlsError> {
        Ok(Connector::from_config(client_config(info)?, timeout))
    }

    pub fn from_config(config: Arc<ClientConfig>, timeout: Duration) -> Connector {
        Connector {
            tls: tokio_rustls::TlsConnector::from(config),
            timeout,
        }
    }

    /// Dials `uri` (`https`, port 443 when none is given). The server's certificate must be
    /// valid for the URI's host: a DNS name against its DNS SANs, an IP against its IP SANs.
    pub async fn connect(&self, uri: &Uri) -> Result<ClientTlsStream, HandshakeError> {
        let bad = |problem| HandshakeError::Uri {
            uri: uri.to_string(),
            problem,
        };
        if uri.scheme_str() != Some("https") {
            return Err(bad("the scheme is not https"));
        }
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let server_name =
            parse_host(host).ok_or_else(|| bad("the host is not a DNS name or an IP address"))?;
        let port = uri.port_u16().unwrap_or(443);
        let remote = format!("{host}:{port}");
        let dial = async {
            let target: (String, u16) = match &server_name {
                rustls::pki_types::ServerName::IpAddress(ip) => {
                    (IpAddr::from(*ip).to_string(), port)
                }
                _ => (host.to_string(), port),
            };
            let tcp =
                TcpStream::connect(target)
                    .await
                    .map_err(|source| HandshakeError::Connect {
                        remote: remote.clone(),
                        source,
                    })?;
            // Raft heartbeats and small appends must not wait for Nagle (tonic's default too).
            tcp.set_nodelay(true)
                .map_err(|source| HandshakeError::Connect {
                    remote: remote.clone(),
                    source,
                })?;
            self.tls
                .connect(server_name.clone(), tcp)
                .await
                .map_err(|source| HandshakeError::Tls {
                    remote: remote.clone(),
                    source,
                })
        };
        match tokio::time::timeout(self.timeout, dial).await {
            Ok(result) => result,
            Err(_) => Err(HandshakeError::Timeout {
                remote,
                after: self.timeout,
            }),
        }
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<ClientTlsStream>;
    type Error = HandshakeError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move { connector.connect(&uri).await.map(TokioIo::new) })
    }
}
