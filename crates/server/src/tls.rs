//! TLS for STOMP: TLS 1.3 only (rustls with the ring provider), optionally requiring a
//! client certificate signed by a configured CA. A verified client certificate names the
//! client: its subject's serialNumber, or else its common name, is the client id.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tokio_rustls::TlsAcceptor;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("cannot read {path}: {cause}")]
    Read { path: String, cause: String },
    #[error("{path} holds no {what}")]
    Missing { path: String, what: &'static str },
    #[error("TLS configuration: {0}")]
    Config(String),
}

pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let text = std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.display().to_string(),
        cause: e.to_string(),
    })?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut text.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Read {
            path: path.display().to_string(),
            cause: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Missing {
            path: path.display().to_string(),
            what: "PEM certificate",
        });
    }
    Ok(certs)
}

pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let text = std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.display().to_string(),
        cause: e.to_string(),
    })?;
    rustls_pemfile::private_key(&mut text.as_slice())
        .map_err(|e| TlsError::Read {
            path: path.display().to_string(),
            cause: e.to_string(),
        })?
        .ok_or(TlsError::Missing {
            path: path.display().to_string(),
            what: "PEM private key",
        })
}

/// An acceptor for the given certificate chain and key; with `client_ca`, clients must
/// present a certificate that chains to it.
pub fn acceptor(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| TlsError::Config(format!("client CA: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(read_certs(cert)?, read_key(key)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The client id a certificate names: its subject's serialNumber, else its common name.
pub fn identity(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject();
    let serial = subject
        .iter_attributes()
        .find(|a| *a.attr_type() == x509_parser::oid_registry::OID_X509_SERIALNUMBER)
        .and_then(|a| a.as_str().ok());
    let name = serial.or_else(|| {
        subject
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
    })?;
    Some(name.to_owned())
}
