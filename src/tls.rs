//! TLS material for NATS and for HTTPS targets: trusted roots (the system's, `SSL_CERT_FILE` /
//! `SSL_CERT_DIR` as additions, extra CA files), client certificates, rustls client configs,
//! and TLS failures told in plain words.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{AlertDescription, CertificateError, RootCertStore};
use sha2::{Digest, Sha256};

/// Where distributions keep their CA bundle (the first that exists is the system's roots).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
    "/usr/local/etc/openssl/cert.pem",
];

/// Folders of one-certificate files, used when no bundle exists.
const SYSTEM_DIRS: &[&str] = &["/etc/ssl/certs", "/etc/pki/tls/certs"];

/// Why TLS material could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    #[error("{}: cannot read: {why}", .path.display())]
    Read { path: PathBuf, why: String },
    #[error("{}: no PEM certificate in it", .0.display())]
    NoCertificate(PathBuf),
    #[error("{}: no PEM private key in it", .0.display())]
    NoKey(PathBuf),
    #[error("{}: {why}", .path.display())]
    Invalid { path: PathBuf, why: String },
    #[error("TLS setup: {0}")]
    Config(String),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.to_path_buf(),
        why: e.to_string(),
    })
}

/// Every certificate of a PEM file (an error when there is none).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Invalid {
            path: path.to_path_buf(),
            why: format!("not valid PEM ({e})"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}

/// A CA file: every certificate must be usable as a trust anchor.
pub fn load_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = load_certs(path)?;
    let mut store = RootCertStore::empty();
    for c in &certs {
        store.add(c.clone()).map_err(|e| TlsError::Invalid {
            path: path.to_path_buf(),
            why: format!("not a usable CA certificate ({e})"),
        })?;
    }
    Ok(certs)
}

/// A certificate and its private key, presented to servers that verify clients.
pub struct ClientIdentity {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// sha256 of the certificate chain and key: the same identity, the same HTTP client.
    pub fingerprint: [u8; 32],
}

impl Clone for ClientIdentity {
    fn clone(&self) -> Self {
        ClientIdentity {
            certs: self.certs.clone(),
            key: self.key.clone_key(),
            fingerprint: self.fingerprint,
        }
    }
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ClientIdentity({} certificate(s), key ***)",
            self.certs.len()
        )
    }
}

impl ClientIdentity {
    /// Parses PEM bytes (names are for messages) and checks that the key belongs to the
    /// certificate.
    pub fn from_pem(
        cert_pem: &[u8],
        cert_name: &Path,
        key_pem: &[u8],
        key_name: &Path,
    ) -> Result<ClientIdentity, TlsError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Invalid {
                path: cert_name.to_path_buf(),
                why: format!("not valid PEM ({e})"),
            })?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate(cert_name.to_path_buf()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|_| TlsError::NoKey(key_name.to_path_buf()))?;
        let provider = rustls::crypto::ring::default_provider();
        rustls::sign::CertifiedKey::from_der(certs.clone(), key.clone_key(), &provider).map_err(
            |e| TlsError::Invalid {
                path: key_name.to_path_buf(),
                why: match e {
                    rustls::Error::InconsistentKeys(_) => format!(
                        "this key does not belong to the certificate in {}",
                        cert_name.display()
                    ),
                    other => format!("not a usable private key ({other})"),
                },
            },
        )?;
        let mut h = Sha256::new();
        for c in &certs {
            h.update(c.as_ref());
        }
        h.update(key.secret_der());
        Ok(ClientIdentity {
            certs,
            key,
            fingerprint: h.finalize().into(),
        })
    }

    /// Reads and checks a certificate file and its key file.
    pub fn load(cert: &Path, key: &Path) -> Result<ClientIdentity, TlsError> {
        ClientIdentity::from_pem(&read(cert)?, cert, &read(key)?, key)
    }
}

/// The system's roots (the distribution's bundle), plus `SSL_CERT_FILE` and `SSL_CERT_DIR`
/// when set (additions, not replacements), plus `extra` CA files. Unreadable extra files are
/// errors; a missing system bundle only leaves the store smaller.
pub fn root_store(extra: &[&Path]) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    let bundle = SYSTEM_BUNDLES.iter().map(Path::new).find(|p| p.is_file());
    let mut found = match bundle {
        Some(b) => rustls_native_certs::load_certs_from_paths(Some(b), None).certs,
        None => SYSTEM_DIRS
            .iter()
            .map(Path::new)
            .filter(|d| d.is_dir())
            .flat_map(|d| rustls_native_certs::load_certs_from_paths(None, Some(d)).certs)
            .collect(),
    };
    if let Some(f) = std::env::var_os("SSL_CERT_FILE") {
        found.extend(rustls_native_certs::load_certs_from_paths(Some(Path::new(&f)), None).certs);
    }
    if let Some(d) = std::env::var_os("SSL_CERT_DIR") {
        for dir in std::env::split_paths(&d).filter(|p| p.is_dir()) {
            found.extend(rustls_native_certs::load_certs_from_paths(None, Some(&dir)).certs);
        }
    }
    store.add_parsable_certificates(found);
    for path in extra {
        for c in load_ca(path)? {
            store.add(c).map_err(|e| TlsError::Invalid {
                path: path.to_path_buf(),
                why: e.to_string(),
            })?;
        }
    }
    Ok(store)
}

/// A rustls client config (ring, TLS 1.2 and 1.3) trusting `roots`, presenting `identity`.
pub fn client_config(
    roots: Arc<RootCertStore>,
    identity: Option<&ClientIdentity>,
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsError::Config(e.to_string()))?
    .with_root_certificates(roots);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some(id) => builder
            .with_client_auth_cert(id.certs.clone(), id.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string())),
    }
}

/// A TLS failure somewhere in `err`'s chain, in plain words (`None` when it is not one).
pub fn explain(err: &(dyn StdError + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(explain_rustls(r));
        }
        // An io::Error's `source()` skips the error it wraps (and TLS errors are wrapped in
        // one, sometimes twice): look inside.
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            cur = Some(inner as &(dyn StdError + 'static));
            continue;
        }
        cur = e.source();
    }
    None
}

/// A rustls error in plain words: certificate problems say "certificate" and why.
pub fn explain_rustls(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(c) => {
            format!(
                "TLS: the server's certificate is not accepted: {}",
                certificate_why(c)
            )
        }
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => {
            "TLS: the server requires a client certificate, and none was presented".into()
        }
        rustls::Error::AlertReceived(
            a @ (AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::AccessDenied),
        ) => format!("TLS: the server refused our client certificate ({a:?})"),
        rustls::Error::AlertReceived(a) => format!("TLS: the server ended the handshake ({a:?})"),
        rustls::Error::NoCertificatesPresented => "TLS: the server presented no certificate".into(),
        other => format!("TLS: {other}"),
    }
}

fn certificate_why(c: &CertificateError) -> String {
    match c {
        CertificateError::UnknownIssuer => {
            "it is not signed by a trusted certificate authority (unknown issuer; trust its CA with a caFile)".into()
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "the certificate has expired".into()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "the certificate is not valid yet".into()
        }
        CertificateError::NotValidForName => "the certificate is not valid for this host name".into(),
        CertificateError::NotValidForNameContext { expected, presented } => format!(
            "the certificate is for {}, not for {}",
            if presented.is_empty() {
                "no name".to_string()
            } else {
                presented.join(", ")
            },
            expected.to_str()
        ),
        CertificateError::Revoked => "the certificate was revoked".into(),
        CertificateError::BadSignature => "the certificate's signature is not valid".into(),
        CertificateError::BadEncoding => "the certificate is not correctly encoded".into(),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "the certificate is not meant for a TLS server".into()
        }
        other => format!("{other:?}"),
    }
}
