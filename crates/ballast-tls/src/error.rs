//! Errors, and the names of the flags they talk about.
//!
//! [`TlsError`] is what building a configuration can fail with: a file that cannot be read or
//! holds nothing usable (the message names the file and the problem), or flags that do not go
//! together. [`HandshakeError`] is what one connection can fail with.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::TlsKind;

/// One of etcd's TLS flags, named for [`TlsKind::Peer`] or [`TlsKind::Client`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    CertFile,
    KeyFile,
    ClientCertFile,
    ClientKeyFile,
    TrustedCaFile,
    ClientCertAuth,
    CrlFile,
    AllowedCn,
    AllowedHostname,
    AutoTls,
}

impl Flag {
    /// The flag's words in a message about a file: "cert file", "trusted CA file".
    pub fn words(self) -> &'static str {
        match self {
            Flag::CertFile => "cert file",
            Flag::KeyFile => "key file",
            Flag::ClientCertFile => "client cert file",
            Flag::ClientKeyFile => "client key file",
            Flag::TrustedCaFile => "trusted CA file",
            Flag::ClientCertAuth => "client cert auth",
            Flag::CrlFile => "CRL file",
            Flag::AllowedCn => "allowed CN",
            Flag::AllowedHostname => "allowed hostname",
            Flag::AutoTls => "auto TLS",
        }
    }

    /// The command-line flag as etcd spells it for this kind of listener.
    pub fn name(self, kind: TlsKind) -> &'static str {
        match (kind, self) {
            (TlsKind::Peer, Flag::CertFile) => "--peer-cert-file",
            (TlsKind::Peer, Flag::KeyFile) => "--peer-key-file",
            (TlsKind::Peer, Flag::ClientCertFile) => "--peer-client-cert-file",
            (TlsKind::Peer, Flag::ClientKeyFile) => "--peer-client-key-file",
            (TlsKind::Peer, Flag::TrustedCaFile) => "--peer-trusted-ca-file",
            (TlsKind::Peer, Flag::ClientCertAuth) => "--peer-client-cert-auth",
            (TlsKind::Peer, Flag::CrlFile) => "--peer-crl-file",
            (TlsKind::Peer, Flag::AllowedCn) => "--peer-cert-allowed-cn",
            (TlsKind::Peer, Flag::AllowedHostname) => "--peer-cert-allowed-hostname",
            (TlsKind::Peer, Flag::AutoTls) => "--peer-auto-tls",
            (TlsKind::Client, Flag::CertFile) => "--cert-file",
            (TlsKind::Client, Flag::KeyFile) => "--key-file",
            (TlsKind::Client, Flag::ClientCertFile) => "--client-cert-file",
            (TlsKind::Client, Flag::ClientKeyFile) => "--client-key-file",
            (TlsKind::Client, Flag::TrustedCaFile) => "--trusted-ca-file",
            (TlsKind::Client, Flag::ClientCertAuth) => "--client-cert-auth",
            (TlsKind::Client, Flag::CrlFile) => "--client-crl-file",
            // etcd has no allowed-CN flag for client connections (RBAC uses the CN instead).
            (TlsKind::Client, Flag::AllowedCn) => "(allowed CN)",
            (TlsKind::Client, Flag::AllowedHostname) => "--client-cert-allowed-hostname",
            (TlsKind::Client, Flag::AutoTls) => "--auto-tls",
        }
    }
}

/// Building a TLS configuration failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read (or written, for auto-TLS).
    #[error("{kind} {} {}: {source}", .flag.words(), .path.display())]
    File {
        kind: TlsKind,
        flag: Flag,
        path: PathBuf,
        source: io::Error,
    },
    /// A file was read but holds nothing usable: "no certificate found", "bad PEM: ...",
    /// "the private key does not match the certificate in ...".
    #[error("{kind} {} {}: {problem}", .flag.words(), .path.display())]
    Content {
        kind: TlsKind,
        flag: Flag,
        path: PathBuf,
        problem: String,
    },
    /// One flag needs another (etcd: "KeyFile and CertFile must both be present").
    #[error("{} needs {}", .flag.name(*.kind), .needs.name(*.kind))]
    Needs {
        kind: TlsKind,
        flag: Flag,
        needs: Flag,
    },
    /// Two flags that cannot be given together.
    #[error("{} and {} are mutually exclusive", .a.name(*.kind), .b.name(*.kind))]
    Exclusive { kind: TlsKind, a: Flag, b: Flag },
    /// A server configuration without a certificate.
    #[error("{kind} TLS needs {} and {} (or {})", Flag::CertFile.name(*.kind), Flag::KeyFile.name(*.kind), Flag::AutoTls.name(*.kind))]
    NoCertificate { kind: TlsKind },
    /// A client configuration that could verify no server: Ballast verifies servers only against
    /// the trusted CA file (etcd falls back to the system's roots; Ballast does not read them).
    #[error("{kind} TLS client: {} is not set, so no server certificate could be verified (Ballast does not use the system's CA roots); set it, or use {}", Flag::TrustedCaFile.name(*.kind), Flag::AutoTls.name(*.kind))]
    NoTrustedCa { kind: TlsKind },
    /// `auto_tls` is set but no certificate was generated yet: call
    /// [`TlsInfo::resolve_auto_tls`](crate::TlsInfo::resolve_auto_tls) first.
    #[error("{}: the self-signed certificate was not generated (TlsInfo::resolve_auto_tls was not called)", Flag::AutoTls.name(*.kind))]
    AutoTlsNotResolved { kind: TlsKind },
    /// An allowed hostname that is neither an IP address nor a DNS name.
    #[error("{}: {value:?} is neither an IP address nor a DNS name", Flag::AllowedHostname.name(*.kind))]
    BadAllowedHostname { kind: TlsKind, value: String },
    /// Generating the auto-TLS certificate failed.
    #[error("{kind} auto TLS in {}: {problem}", .dir.display())]
    AutoTls {
        kind: TlsKind,
        dir: PathBuf,
        problem: String,
    },
    /// rustls refused the configuration (no usable protocol version for the provider).
    #[error("{kind} TLS configuration: {source}")]
    Rustls {
        kind: TlsKind,
        #[source]
        source: rustls::Error,
    },
}

/// One connection's handshake (or, for a client, its dial) failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The TLS handshake (and, on a server, the client-certificate address check) did not end
    /// within the timeout: a silent or very slow peer.
    #[error("TLS handshake with {remote} timed out after {after:?}")]
    Timeout { remote: String, after: Duration },
    /// The TLS handshake failed: certificate refused, protocol error, connection closed.
    #[error("TLS handshake with {remote}: {source}")]
    Tls { remote: String, source: io::Error },
    /// The client's certificate does not name the address it connects from (etcd's SAN check;
    /// `skip_client_san_verify` turns it off).
    #[error("TLS client {remote}: {problem}")]
    ClientSan { remote: String, problem: String },
    /// The TCP connection to a peer could not be made.
    #[error("connecting to {remote}: {source}")]
    Connect { remote: String, source: io::Error },
    /// The URI cannot be dialled with TLS.
    #[error("cannot dial {uri} with TLS: {problem}")]
    Uri { uri: String, problem: &'static str },
}

impl fmt::Display for TlsKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsKind::Peer => "peer",
            TlsKind::Client => "client",
        })
    }
}
