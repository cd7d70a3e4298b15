//! Reading PEM files into rustls types, with errors that name the file, and [`Reloading`]: a
//! value built from files and rebuilt when one of them changes.
//!
//! etcd reads the cert and key files on every handshake and the CRL file on every accepted
//! connection, so replacing them takes effect without a restart. [`Reloading`] keeps that
//! behaviour at the cost of a `stat` per file per handshake instead of a read and a parse.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use crate::error::{Flag, TlsError};
use crate::TlsKind;

fn read(kind: TlsKind, flag: Flag, path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::File {
        kind,
        flag,
        path: path.to_path_buf(),
        source,
    })
}

fn content(kind: TlsKind, flag: Flag, path: &Path, problem: impl Into<String>) -> TlsError {
    TlsError::Content {
        kind,
        flag,
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

fn bad_pem(kind: TlsKind, flag: Flag, path: &Path, err: pem::Error) -> TlsError {
    content(kind, flag, path, format!("bad PEM: {err}"))
}

/// Every CERTIFICATE block of a PEM file, in order; at least one.
pub(crate) fn load_certs(
    kind: TlsKind,
    flag: Flag,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    pem_blocks(kind, flag, path, &read(kind, flag, path)?, "certificate")
}

/// Every block of one type in a PEM file; at least one.
fn pem_blocks<T: PemObject>(
    kind: TlsKind,
    flag: Flag,
    path: &Path,
    bytes: &[u8],
    what: &str,
) -> Result<Vec<T>, TlsError> {
    let blocks = T::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(kind, flag, path, e))?;
    if blocks.is_empty() {
        return Err(content(kind, flag, path, format!("no {what} found")));
    }
    Ok(blocks)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 "RSA PRIVATE KEY" or SEC1 "EC PRIVATE
/// KEY", as Go's `tls.X509KeyPair` accepts).
fn load_key(kind: TlsKind, flag: Flag, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(kind, flag, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => content(kind, flag, path, "no private key found"),
        e => bad_pem(kind, flag, path, e),
    })
}

/// A certificate chain and its private key, checked to belong together.
pub(crate) fn load_certified_key(
    kind: TlsKind,
    (cert_flag, cert_path): (Flag, &Path),
    (key_flag, key_path): (Flag, &Path),
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = load_certs(kind, cert_flag, cert_path)?;
    let key = load_key(kind, key_flag, key_path)?;
    let signing_key = provider.key_provider.load_private_key(key).map_err(|e| {
        content(
            kind,
            key_flag,
            key_path,
            format!("unusable private key: {e}"),
        )
    })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(Arc::new(certified))
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(content(
                kind,
                key_flag,
                key_path,
                format!(
                    "the private key does not match the certificate in {}",
                    cert_path.display()
                ),
            ))
        }
        Err(e) => Err(content(
            kind,
            cert_flag,
            cert_path,
            format!("unusable certificate: {e}"),
        )),
    }
}

/// The trusted CA file as a root store; every certificate in it must be usable as a trust anchor.
pub(crate) fn load_roots(kind: TlsKind, path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let flag = Flag::TrustedCaFile;
    let mut roots = RootCertStore::empty();
    for (i, cert) in load_certs(kind, flag, path)?.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            content(
                kind,
                flag,
                path,
                format!("certificate {} is not a usable CA: {e}", i + 1),
            )
        })?;
    }
    Ok(Arc::new(roots))
}

/// The CRLs of a CRL file: PEM ("X509 CRL" blocks) or one DER CRL, as etcd accepts both.
pub(crate) fn load_crls(
    kind: TlsKind,
    path: &Path,
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let flag = Flag::CrlFile;
    let bytes = read(kind, flag, path)?;
    if bytes.trim_ascii().is_empty() || bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        return pem_blocks(kind, flag, path, &bytes, "CRL");
    }
    // webpki parses it when the verifier is built, and says what is wrong with it.
    Ok(vec![CertificateRevocationListDer::from(bytes)])
}

/// What identifies one version of a file: replaced (new inode), rewritten (mtime, ctime) or
/// resized. `None` when it cannot be read: it will be reloaded (and the reload will fail and
/// say why) on every handshake until it can.
type Stamp = Option<(SystemTime, u64, u64, (i64, i64))>;

fn stamp(path: &Path) -> Stamp {
    let meta = fs::metadata(path).ok()?;
    #[cfg(unix)]
    let (ino, ctime) = {
        use std::os::unix::fs::MetadataExt;
        (meta.ino(), (meta.ctime(), meta.ctime_nsec()))
    };
    #[cfg(not(unix))]
    let (ino, ctime) = (0, (0, 0));
    Some((meta.modified().ok()?, meta.len(), ino, ctime))
}

type Loader<T> = Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>;

/// A value built from files, rebuilt the first time it is asked for after one of them changed.
///
/// A rebuild that fails is returned as the error (the handshake fails, as etcd's does when a
/// file it re-reads is bad) and tried again on the next call.
pub(crate) struct Reloading<T> {
    paths: Vec<PathBuf>,
    load: Loader<T>,
    current: Mutex<(Vec<Stamp>, T)>,
}

impl<T: Clone> Reloading<T> {
    /// Loads once now, so that a bad file is an error when the configuration is built.
    pub(crate) fn new(
        paths: Vec<PathBuf>,
        load: impl Fn() -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Self, TlsError> {
        let stamps = paths.iter().map(|p| stamp(p)).collect();
        let value = load()?;
        Ok(Reloading {
            paths,
            load: Box::new(load),
            current: Mutex::new((stamps, value)),
        })
    }

    pub(crate) fn get(&self) -> Result<T, TlsError> {
        // The files are stat'ed before they are read: a change during the read is seen next time.
        let stamps: Vec<Stamp> = self.paths.iter().map(|p| stamp(p)).collect();
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if current.0 == stamps && stamps.iter().all(Option::is_some) {
            return Ok(current.1.clone());
        }
        let value = (self.load)()?;
        *current = (stamps, value.clone());
        Ok(value)
    }
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}
