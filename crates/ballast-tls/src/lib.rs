//! `ballast-tls`: TLS for Ballast's peer connections (and, later, its client connections), built
//! from etcd's TLS flags with rustls (ring provider).
//!
//! # What it owns
//!
//! - [`TlsInfo`]: etcd's `transport.TLSInfo`, one per listener kind ([`TlsKind::Peer`] for
//!   `--peer-cert-file` and friends, [`TlsKind::Client`] for `--cert-file` and friends).
//! - [`server_config`] / [`client_config`]: rustls configurations from it, with etcd's checks:
//!   client certificates verified against the trusted CA, the CRL file, the allowed CNs or
//!   hostnames (both ways, as etcd), server certificates against the trusted CA and the dialled
//!   host (IP SANs for an IP host). Certificate, key and CRL files are re-read when they change.
//! - Auto-TLS ([`TlsInfo::resolve_auto_tls`], [`self_cert`]): a self-signed certificate in
//!   `<data-dir>/fixtures/<peer|client>/`; with it nothing is verified (see [`auto`]).
//! - The handshakes: [`accept`] with a timeout, plus etcd's client-address check;
//!   [`Connector`], a `Service<Uri>` for tonic's `Endpoint::connect_with_connector`.
//!
//! # What it must not do
//!
//! Know about raft, members or gRPC services: it turns flags into TLS and TCP into TLS streams.
//! It never falls back to weaker settings than asked: a configuration it cannot honour (client
//! cert auth without a trusted CA, a file it cannot use) is an error naming the flag or file.
//!
//! # Versions
//!
//! TLS 1.2 and 1.3 (etcd's default minimum is 1.2); `--tls-min-version`, `--tls-max-version` and
//! `--cipher-suites` are not applied yet.

pub mod auto;
mod config;
mod error;
mod files;
mod net;
mod verify;
mod x509;

use std::path::PathBuf;

pub use auto::self_cert;
pub use config::{client_config, server_config};
pub use error::{Flag, HandshakeError, TlsError};
pub use net::{accept, Acceptor, ClientTlsStream, Connector, ServerTlsStream};
pub use {rustls, tokio_rustls};

/// Which listener a [`TlsInfo`] is for: it names the flags in errors and the auto-TLS directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsKind {
    /// `--listen-peer-urls`: `--peer-cert-file`, ..., `<data-dir>/fixtures/peer/`.
    #[default]
    Peer,
    /// `--listen-client-urls`: `--cert-file`, ..., `<data-dir>/fixtures/client/`.
    Client,
}

/// etcd's TLS settings for one kind of listener (`transport.TLSInfo`). A file that is not given
/// is `None` (etcd's empty string).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    pub kind: TlsKind,
    /// `--peer-cert-file`: the certificate (chain) this member presents, as a server, and as a
    /// client unless `client_cert_file` is set.
    pub cert_file: Option<PathBuf>,
    /// `--peer-key-file`: its private key.
    pub key_file: Option<PathBuf>,
    /// `--peer-client-cert-file`: the certificate presented when dialling peers, if not
    /// `cert_file`.
    pub client_cert_file: Option<PathBuf>,
    /// `--peer-client-key-file`: its private key.
    pub client_key_file: Option<PathBuf>,
    /// `--peer-trusted-ca-file`: the CAs that peer certificates must chain to, both ways. Set, it
    /// also makes client certificates required (as etcd).
    pub trusted_ca_file: Option<PathBuf>,
    /// `--peer-client-cert-auth`: require and verify client certificates.
    pub client_cert_auth: bool,
    /// `--peer-crl-file`: revoked certificates (PEM or DER), refused when a client presents them.
    pub crl_file: Option<PathBuf>,
    /// `--peer-cert-allowed-cn`: the other end's certificate must have one of these CNs.
    pub allowed_cn: Vec<String>,
    /// `--peer-cert-allowed-hostname`: the other end's certificate must be valid for one of these
    /// hosts (SANs). Exclusive with `allowed_cn`.
    pub allowed_hostname: Vec<String>,
    /// `--peer-skip-client-san-verification`: do not check that a client certificate names the
    /// address it connects from.
    pub skip_client_san_verify: bool,
    /// `--peer-auto-tls`. Before [`TlsInfo::resolve_auto_tls`]: generate a self-signed
    /// certificate if no cert and key files are given. After it (cert and key set): these are
    /// self-signed, and the other end's certificate is not verified, both ways.
    pub auto_tls: bool,
}

impl TlsInfo {
    /// etcd's `TLSInfo.Empty()`: neither a cert file nor a key file. A listener of this kind then
    /// serves plain TCP (unless auto-TLS generates them).
    pub fn is_empty(&self) -> bool {
        self.cert_file.is_none() && self.key_file.is_none()
    }
}
