//! Certificate verification in the handshake, both ways, as etcd's `TLSInfo` sets it up.
//!
//! - [`ClientVerifier`] (server side): the client's chain against the trusted CA (webpki), the
//!   CRL file's revocations over the whole presented chain (re-read when the file changes), then
//!   the allowed-CN / allowed-hostname [`Identity`] of the verified end-entity certificate.
//! - [`ServerVerifier`] (client side): the server's chain against the trusted CA and its name
//!   against the URL's host (an IP host is matched against the IP SANs), then the same
//!   [`Identity`]: etcd installs its allowed-CN/hostname check in the `tls.Config` both sides
//!   share, so a member also checks the certificate of the peer it dials.
//! - [`AutoTlsServerVerifier`] (client side, auto-TLS): accepts any server certificate, as etcd
//!   sets `InsecureSkipVerify` for self-signed certificates; the handshake signatures are still
//!   checked (the server holds the key of the certificate it sent), nothing else is.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{self, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, VerifierBuilderError, WebPkiClientVerifier};
use rustls::{
    DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore, SignatureScheme,
};

use crate::error::{Flag, TlsError};
use crate::files::{load_crls, Reloading};
use crate::x509::cert_names;
use crate::{TlsInfo, TlsKind};

/// The handshake-signature methods of a verifier that holds the provider's algorithms in
/// `self.algorithms`: the other end signed the handshake with the key of its certificate.
macro_rules! handshake_signatures_checked_with_algorithms {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}

/// Why a certificate that chains to the trusted CA is still refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

/// rustls shows this as "other error: {message}" (a certificate error would show the message
/// through `Debug`), and alerts `handshake_failure`.
fn refused(message: String) -> rustls::Error {
    rustls::Error::Other(OtherError(Arc::new(Refused(message))))
}

/// etcd's allowed CN / allowed hostname check on the other end's verified certificate.
#[derive(Debug, Clone)]
pub(crate) enum Identity {
    Any,
    /// The subject CN must equal one of these (exactly, as Go compares).
    Cns {
        kind: TlsKind,
        cns: Vec<String>,
    },
    /// The certificate must be valid for one of these names: an IP against the IP SANs, a DNS
    /// name against the DNS SANs (wildcards in the left-most label). Go's
    /// `x509.Certificate.VerifyHostname`, which no longer falls back to the CN (Go >= 1.15).
    Hostnames {
        kind: TlsKind,
        names: Vec<(String, ServerName<'static>)>,
    },
}

impl Identity {
    pub(crate) fn from_info(info: &TlsInfo) -> Result<Identity, TlsError> {
        let kind = info.kind;
        match (info.allowed_cn.is_empty(), info.allowed_hostname.is_empty()) {
            (true, true) => Ok(Identity::Any),
            (false, false) => Err(TlsError::Exclusive {
                kind,
                a: Flag::AllowedCn,
                b: Flag::AllowedHostname,
            }),
            (false, true) => Ok(Identity::Cns {
                kind,
                cns: info.allowed_cn.clone(),
            }),
            (true, false) => {
                let names = info
                    .allowed_hostname
                    .iter()
                    .map(|h| match parse_host(h) {
                        Some(name) => Ok((h.clone(), name)),
                        None => Err(TlsError::BadAllowedHostname {
                            kind,
                            value: h.clone(),
                        }),
                    })
                    .collect::<Result<_, _>>()?;
                Ok(Identity::Hostnames { kind, names })
            }
        }
    }

    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        match self {
            Identity::Any => Ok(()),
            Identity::Cns { kind, cns } => {
                let cn = cert_names(cert).and_then(|n| n.common_name);
                if cn.as_ref().is_some_and(|cn| cns.contains(cn)) {
                    return Ok(());
                }
                let found = cn.map_or("no CN".to_string(), |cn| format!("CN {cn:?}"));
                Err(refused(format!(
                    "certificate has {found}, {} allows {cns:?}",
                    Flag::AllowedCn.name(*kind)
                )))
            }
            Identity::Hostnames { kind, names } => {
                let parsed = ParsedCertificate::try_from(cert)?;
                if names
                    .iter()
                    .any(|(_, name)| rustls::client::verify_server_name(&parsed, name).is_ok())
                {
                    return Ok(());
                }
                let allowed: Vec<&str> = names.iter().map(|(h, _)| h.as_str()).collect();
                Err(refused(format!(
                    "certificate is valid for none of {} {allowed:?}",
                    Flag::AllowedHostname.name(*kind)
                )))
            }
        }
    }
}

/// A host as a TLS name: an IP address (with or without brackets; an IPv4-mapped IPv6 address
/// as IPv4, as Go compares them) or a DNS name (without a trailing dot).
pub(crate) fn parse_host(host: &str) -> Option<ServerName<'static>> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return Some(ServerName::IpAddress(ip.to_canonical().into()));
    }
    let dns = bare.strip_suffix('.').unwrap_or(bare);
    ServerName::try_from(dns.to_string())
        .ok()
        .filter(|n| matches!(n, ServerName::DnsName(_)))
}

/// The server side's check of client certificates (see the module docs).
#[derive(Debug)]
pub(crate) struct ClientVerifier {
    kind: TlsKind,
    webpki: Reloading<Arc<dyn ClientCertVerifier>>,
    hints: Vec<DistinguishedName>,
    algorithms: WebPkiSupportedAlgorithms,
    identity: Identity,
}

impl ClientVerifier {
    pub(crate) fn new(
        info: &TlsInfo,
        roots: Arc<RootCertStore>,
        provider: Arc<CryptoProvider>,
    ) -> Result<ClientVerifier, TlsError> {
        let kind = info.kind;
        let hints = roots.subjects();
        let algorithms = provider.signature_verification_algorithms;
        let crl_file = info.crl_file.clone();
        let ca_file = info.trusted_ca_file.clone().unwrap_or_default();
        let build = move || {
            let mut builder = WebPkiClientVerifier::builder_with_provider(
                Arc::clone(&roots),
                Arc::clone(&provider),
            );
            if let Some(path) = &crl_file {
                // Like etcd, a certificate is refused when it is listed, and accepted when no CRL
                // in the file is its issuer's; the CRL's next-update date is not enforced.
                builder = builder
                    .with_crls(load_crls(kind, path)?)
                    .allow_unknown_revocation_status();
            }
            builder.build().map_err(|e| {
                let (flag, path): (Flag, &PathBuf) = match (&e, &crl_file) {
                    (VerifierBuilderError::InvalidCrl(_), Some(path)) => (Flag::CrlFile, path),
                    _ => (Flag::TrustedCaFile, &ca_file),
                };
                TlsError::Content {
                    kind,
                    flag,
                    path: path.clone(),
                    problem: e.to_string(),
                }
            })
        };
        let watched = info.crl_file.iter().cloned().collect();
        Ok(ClientVerifier {
            kind,
            webpki: Reloading::new(watched, build)?,
            hints,
            algorithms,
            identity: Identity::from_info(info)?,
        })
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let webpki = self.webpki.get().map_err(|e| {
            tracing::warn!(kind = %self.kind, error = %e, "refusing TLS clients: the CRL file cannot be used");
            rustls::Error::General(e.to_string())
        })?;
        webpki.verify_client_cert(end_entity, intermediates, now)?;
        self.identity.check(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures_checked_with_algorithms!();
}

/// The client side's check of server certificates against the trusted CA (see the module docs).
#[derive(Debug)]
pub(crate) struct ServerVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    algorithms: WebPkiSupportedAlgorithms,
    identity: Identity,
}

impl ServerVerifier {
    pub(crate) fn new(
        info: &TlsInfo,
        roots: Arc<RootCertStore>,
        provider: Arc<CryptoProvider>,
    ) -> Result<ServerVerifier, TlsError> {
        let algorithms = provider.signature_verification_algorithms;
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| TlsError::Content {
                kind: info.kind,
                flag: Flag::TrustedCaFile,
                path: info.trusted_ca_file.clone().unwrap_or_default(),
                problem: e.to_string(),
            })?;
        Ok(ServerVerifier {
            webpki,
            algorithms,
            identity: Identity::from_info(info)?,
        })
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.identity.check(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures_checked_with_algorithms!();
}

/// Auto-TLS: no verification of the server's certificate (etcd's `InsecureSkipVerify`). The
/// connection is encrypted, and the server proved it holds the key of the certificate it sent;
/// who that server is, is not checked.
#[derive(Debug)]
pub(crate) struct AutoTlsServerVerifier {
    pub(crate) algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AutoTlsServerVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures_checked_with_algorithms!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_as_tls_names() {
        let ip = |s: &str| ServerName::IpAddress(s.parse::<std::net::IpAddr>().expect("ip").into());
        assert_eq!(parse_host("127.0.0.1"), Some(ip("127.0.0.1")));
        assert_eq!(parse_host("[::1]"), Some(ip("::1")));
        assert_eq!(parse_host("::ffff:10.0.0.1"), Some(ip("10.0.0.1")));
        assert_eq!(
            parse_host("node-a.example."),
            Some(ServerName::try_from("node-a.example").expect("dns"))
        );
        assert_eq!(parse_host("not a name"), None);
        assert_eq!(parse_host(""), None);
    }
}
