//! Auto-TLS (`--peer-auto-tls`, `--auto-tls`): a self-signed certificate generated once into
//! `<data-dir>/fixtures/peer/` (or `fixtures/client/`) as `cert.pem` and `key.pem`, etcd's layout,
//! and reused on every later start.
//!
//! What it gives is encryption without authentication: a member using it does not verify the
//! certificate of the peer it dials, and does not ask its own clients for one (etcd sets
//! `InsecureSkipVerify` for self-signed certificates and drops every other TLS setting). Anyone
//! who can reach the port can talk to the member, and a man in the middle is not detected.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::config::provider;
use crate::error::{Flag, TlsError};
use crate::files::load_certified_key;
use crate::{TlsInfo, TlsKind};

impl TlsInfo {
    /// etcd's `PeerSelfCert` / `ClientSelfCert`: with `auto_tls` and no cert or key file given,
    /// generate (or reuse) the self-signed certificate in `<data_dir>/fixtures/<peer|client>/`,
    /// valid for `hosts` (the listen URLs' hosts, `host` or `host:port`; IP addresses become IP
    /// SANs) for `validity_years` years (etcd's `--self-signed-cert-validity`, default 1).
    ///
    /// The result has `cert_file` and `key_file` set to the fixtures, `auto_tls` still true and
    /// every verification setting cleared, as etcd's: the trusted CA, client cert auth, CRL and
    /// allowed CN / hostname do not apply to a self-signed certificate (a warning names the ones
    /// that were set). With a cert or key file given, auto-TLS is ignored (a warning, as etcd) and
    /// the result has `auto_tls` false. Without `auto_tls` nothing changes.
    pub fn resolve_auto_tls<S: AsRef<str>>(
        self,
        data_dir: &Path,
        hosts: &[S],
        validity_years: u32,
    ) -> Result<TlsInfo, TlsError> {
        let kind = self.kind;
        if !self.auto_tls {
            return Ok(self);
        }
        if !self.is_empty() {
            tracing::warn!(%kind, "ignoring {} since certs given", Flag::AutoTls.name(kind));
            return Ok(TlsInfo {
                auto_tls: false,
                ..self
            });
        }
        let ignored: Vec<&str> = [
            (self.trusted_ca_file.is_some(), Flag::TrustedCaFile),
            (self.client_cert_auth, Flag::ClientCertAuth),
            (self.crl_file.is_some(), Flag::CrlFile),
            (!self.allowed_cn.is_empty(), Flag::AllowedCn),
            (!self.allowed_hostname.is_empty(), Flag::AllowedHostname),
            (self.client_cert_file.is_some(), Flag::ClientCertFile),
            (self.client_key_file.is_some(), Flag::ClientKeyFile),
        ]
        .into_iter()
        .filter(|(set, _)| *set)
        .map(|(_, flag)| flag.name(kind))
        .collect();
        if !ignored.is_empty() {
            tracing::warn!(%kind, ?ignored, "{} certificates are not verified: these flags do not apply", Flag::AutoTls.name(kind));
        }
        let dir = data_dir.join("fixtures").join(kind.to_string());
        let (cert, key) = self_cert(kind, &dir, hosts, validity_years)?;
        Ok(TlsInfo {
            kind,
            cert_file: Some(cert),
            key_file: Some(key),
            auto_tls: true,
            skip_client_san_verify: self.skip_client_san_verify,
            ..TlsInfo::default()
        })
    }
}

/// etcd's `transport.SelfCert`: `dir/cert.pem` and `dir/key.pem`, reused when both exist and can
/// be used, generated otherwise. Returns their paths.
///
/// The key is ECDSA P-256 (etcd generates P-521, which ring cannot sign with; an etcd-made
/// fixture that cannot be used is replaced, with a warning: it authenticated nothing).
pub fn self_cert<S: AsRef<str>>(
    kind: TlsKind,
    dir: &Path,
    hosts: &[S],
    validity_years: u32,
) -> Result<(PathBuf, PathBuf), TlsError> {
    let fail = |problem: String| TlsError::AutoTls {
        kind,
        dir: dir.to_path_buf(),
        problem,
    };
    if validity_years == 0 {
        return Err(fail(
            "the certificate validity must be at least one year".into(),
        ));
    }
    create_private_dir(dir).map_err(|e| fail(format!("cannot create the directory: {e}")))?;
    let dir = std::path::absolute(dir).map_err(|e| fail(e.to_string()))?;
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));

    if cert_path.exists() && key_path.exists() {
        match load_certified_key(
            kind,
            (Flag::CertFile, &cert_path),
            (Flag::KeyFile, &key_path),
            &provider(),
        ) {
            Ok(_) => return Ok((cert_path, key_path)),
            Err(e) => {
                tracing::warn!(%kind, error = %e, "replacing the unusable auto-TLS certificate")
            }
        }
    }

    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| fail(format!("cannot generate a key: {e}")))?;
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "ballast");
    params.not_before = now;
    params.not_after = now + Duration::days(365 * i64::from(validity_years));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.subject_alt_names = subject_alt_names(hosts).map_err(fail)?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| fail(format!("cannot sign: {e}")))?;

    tracing::warn!(%kind, dir = %dir.display(), not_after = %params.not_after, "generated a self-signed TLS certificate");
    // Key first: a crash before the certificate is renamed into place leaves no cert.pem, and
    // the next start generates both again.
    write_durably(&key_path, key.serialize_pem().as_bytes(), 0o600).map_err(|source| {
        TlsError::File {
            kind,
            flag: Flag::KeyFile,
            path: key_path.clone(),
            source,
        }
    })?;
    write_durably(&cert_path, cert.pem().as_bytes(), 0o644).map_err(|source| TlsError::File {
        kind,
        flag: Flag::CertFile,
        path: cert_path.clone(),
        source,
    })?;
    Ok((cert_path, key_path))
}

/// The hosts of `host`, `host:port`, `[v6]:port` or bare IPv6 strings, without duplicates.
fn subject_alt_names<S: AsRef<str>>(hosts: &[S]) -> Result<Vec<SanType>, String> {
    let mut sans: Vec<SanType> = Vec::new();
    for host in hosts {
        let host = host.as_ref();
        let bare = match host.parse::<std::net::IpAddr>() {
            Ok(_) => host,
            Err(_) => match host.rsplit_once(':') {
                Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
                _ => host,
            },
        };
        let bare = bare
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(bare);
        if bare.is_empty() {
            continue;
        }
        let san = match bare.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                bare.to_string()
                    .try_into()
                    .map_err(|e| format!("host {host:?}: {e}"))?,
            ),
        };
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    Ok(sans)
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Writes `path` whole or not at all: a temporary file, fsync'd, renamed into place, then the
/// directory fsync'd.
fn write_durably(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("pem.tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn hosts_become_sans() {
        let sans = subject_alt_names(&[
            "127.0.0.1:2380",
            "[::1]:2380",
            "::1",
            "node-a.example:2380",
            "node-a.example",
            "10.0.0.1",
            ":2380",
        ])
        .expect("sans");
        let ip = |s: &str| SanType::IpAddress(s.parse::<IpAddr>().expect("ip"));
        assert_eq!(
            sans,
            vec![
                ip("127.0.0.1"),
                ip("::1"),
                SanType::DnsName("node-a.example".to_string().try_into().expect("dns")),
                ip("10.0.0.1"),
            ]
        );
    }

    #[test]
    fn zero_validity_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = self_cert(TlsKind::Peer, dir.path(), &["127.0.0.1"], 0).expect_err("refused");
        assert!(err.to_string().contains("at least one year"), "{err}");
    }
}
