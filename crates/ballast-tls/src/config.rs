//! [`server_config`] and [`client_config`]: rustls configurations from a [`TlsInfo`], as etcd's
//! `TLSInfo.ServerConfig()` and `TLSInfo.ClientConfig()` build them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{
    ClientHello, NoServerSessionStorage, ResolvesServerCert, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};

use crate::error::{Flag, TlsError};
use crate::files::{load_certified_key, load_roots, Reloading};
use crate::verify::{AutoTlsServerVerifier, ClientVerifier, Identity, ServerVerifier};
use crate::{TlsInfo, TlsKind};

/// ALPN: gRPC needs HTTP/2, and Go's HTTP/2 server (etcd's) only speaks it when it is negotiated.
const ALPN_H2: &[u8] = b"h2";

/// rustls with ring. rustls 0.23.48 deprecates ring's provider for lacking post-quantum key
/// exchange (X25519MLKEM768, aws-lc-rs only); ring is kept for its small plain-C build (aws-lc-rs
/// is a much larger C build wanting cmake). Key exchange is X25519 / P-256 / P-384, what Go's
/// TLS offered before Go 1.24.
#[allow(deprecated)]
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server side of a TLS listener.
///
/// - The certificate and key are `cert_file` and `key_file`, re-read when they change (etcd
///   re-reads them on every handshake, so they can be replaced without a restart).
/// - Client certificates are required and verified when `trusted_ca_file` is set or
///   `client_cert_auth` is on (as etcd: a trusted CA alone already requires them), against
///   `trusted_ca_file` only, then checked against the CRL file and the allowed CNs / hostnames.
///   Ballast needs the trusted CA file for any of these (etcd would use the system's roots).
/// - With `auto_tls` no client certificate is asked for (etcd drops every other TLS setting for
///   a self-signed certificate).
/// - TLS 1.2 and 1.3; ALPN `h2`; no session resumption (every handshake is checked in full).
pub fn server_config(info: &TlsInfo) -> Result<Arc<ServerConfig>, TlsError> {
    let kind = info.kind;
    check_auto_tls(info)?;
    Identity::from_info(info)?;
    let (cert, key) = pair(
        kind,
        (Flag::CertFile, &info.cert_file),
        (Flag::KeyFile, &info.key_file),
    )?
    .ok_or(TlsError::NoCertificate { kind })?;
    let provider = provider();
    let cert_key = CertKeyFiles::new(
        kind,
        (Flag::CertFile, cert),
        (Flag::KeyFile, key),
        &provider,
    )?;

    let verifier: Arc<dyn ClientCertVerifier> = if info.auto_tls {
        WebPkiClientVerifier::no_client_auth()
    } else if let Some(ca) = &info.trusted_ca_file {
        Arc::new(ClientVerifier::new(
            info,
            load_roots(kind, ca)?,
            Arc::clone(&provider),
        )?)
    } else {
        let needs_ca = [
            (info.client_cert_auth, Flag::ClientCertAuth),
            (info.crl_file.is_some(), Flag::CrlFile),
            (!info.allowed_cn.is_empty(), Flag::AllowedCn),
            (!info.allowed_hostname.is_empty(), Flag::AllowedHostname),
        ];
        if let Some((_, flag)) = needs_ca.into_iter().find(|(set, _)| *set) {
            return Err(TlsError::Needs {
                kind,
                flag,
                needs: Flag::TrustedCaFile,
            });
        }
        WebPkiClientVerifier::no_client_auth()
    };

    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls { kind, source })?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(cert_key));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No session resumption: a resumed session skips the client-certificate checks, so a
    // certificate revoked (or a CRL file changed) after a client's first connection would go on
    // being accepted. etcd checks the CRL on every connection, resumed or not. Peers reconnect
    // rarely; a full handshake each time costs little.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The client side, for dialling a TLS listener (a member dialling its peers).
///
/// - The server's certificate is verified against `trusted_ca_file` and the name in the URL
///   (an IP host against the certificate's IP SANs), then against the allowed CNs / hostnames
///   as etcd does on both sides. Without a trusted CA file this is an error (etcd would use the
///   system's roots), unless `auto_tls`: then the server's certificate is not verified at all
///   (etcd's `InsecureSkipVerify` for self-signed certificates).
/// - The certificate presented when the server asks for one is `client_cert_file` /
///   `client_key_file` if set, else `cert_file` / `key_file` (re-read when they change), else
///   none.
/// - TLS 1.2 and 1.3; ALPN `h2`.
pub fn client_config(info: &TlsInfo) -> Result<Arc<ClientConfig>, TlsError> {
    let kind = info.kind;
    check_auto_tls(info)?;
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = if info.auto_tls {
        Arc::new(AutoTlsServerVerifier {
            algorithms: provider.signature_verification_algorithms,
        })
    } else {
        let ca = info
            .trusted_ca_file
            .as_ref()
            .ok_or(TlsError::NoTrustedCa { kind })?;
        Arc::new(ServerVerifier::new(
            info,
            load_roots(kind, ca)?,
            Arc::clone(&provider),
        )?)
    };
    let client_pair = pair(
        kind,
        (Flag::ClientCertFile, &info.client_cert_file),
        (Flag::ClientKeyFile, &info.client_key_file),
    )?
    .map(|(c, k)| ((Flag::ClientCertFile, c), (Flag::ClientKeyFile, k)));
    let main_pair = pair(
        kind,
        (Flag::CertFile, &info.cert_file),
        (Flag::KeyFile, &info.key_file),
    )?
    .map(|(c, k)| ((Flag::CertFile, c), (Flag::KeyFile, k)));

    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls { kind, source })?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client_pair.or(main_pair) {
        Some((cert, key)) => builder
            .with_client_cert_resolver(Arc::new(CertKeyFiles::new(kind, cert, key, &provider)?)),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

fn check_auto_tls(info: &TlsInfo) -> Result<(), TlsError> {
    if info.auto_tls && info.cert_file.is_none() && info.key_file.is_none() {
        return Err(TlsError::AutoTlsNotResolved { kind: info.kind });
    }
    Ok(())
}

/// Both files of a cert/key pair, or neither (etcd: "KeyFile and CertFile must both be present").
fn pair<'a>(
    kind: TlsKind,
    (cert_flag, cert): (Flag, &'a Option<PathBuf>),
    (key_flag, key): (Flag, &'a Option<PathBuf>),
) -> Result<Option<(&'a Path, &'a Path)>, TlsError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some((cert, key))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(TlsError::Needs {
            kind,
            flag: cert_flag,
            needs: key_flag,
        }),
        (None, Some(_)) => Err(TlsError::Needs {
            kind,
            flag: key_flag,
            needs: cert_flag,
        }),
    }
}

/// A certificate and key read from files, re-read when they change; what a server presents, and
/// what a client presents when asked.
#[derive(Debug)]
struct CertKeyFiles(Reloading<Arc<CertifiedKey>>);

impl CertKeyFiles {
    fn new(
        kind: TlsKind,
        (cert_flag, cert): (Flag, &Path),
        (key_flag, key): (Flag, &Path),
        provider: &Arc<CryptoProvider>,
    ) -> Result<CertKeyFiles, TlsError> {
        let (cert, key, provider) = (cert.to_path_buf(), key.to_path_buf(), Arc::clone(provider));
        let paths = vec![cert.clone(), key.clone()];
        let load =
            move || load_certified_key(kind, (cert_flag, &cert), (key_flag, &key), &provider);
        Ok(CertKeyFiles(Reloading::new(paths, load)?))
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.0
            .get()
            .map_err(|e| tracing::warn!(error = %e, "TLS handshake without a certificate"))
            .ok()
    }
}

impl ResolvesServerCert for CertKeyFiles {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for CertKeyFiles {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        true
    }
}
