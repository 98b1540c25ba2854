//! TLS 1.3 between peer nodes, both ways, with chains verified by
//! [`trunkline_federation::chain`] (Swaptacular's peer certificates carry a directory-name
//! constraint that rustls' own verifier refuses) and no host name check (a node is the
//! node its certificate names, wherever it is reached).
//!
//! - Our server trusts our own root only: a peer presents its certificate and the peer
//!   certificate we issued it.
//! - A link to a peer trusts that peer's root only, presents our certificate and the peer
//!   certificate the peer issued us (`sub-ca.crt`), and takes only the peer it meant to
//!   reach.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use trunkline_federation::chain::{verify_chain, Usage};

use crate::tls::{read_certs, read_key, TlsError};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_certs(what: &str, pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Read {
            path: what.to_owned(),
            cause: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Missing {
            path: what.to_owned(),
            what: "PEM certificate",
        });
    }
    Ok(certs)
}

fn chain_of<'a>(end: &'a CertificateDer<'_>, rest: &'a [CertificateDer<'_>]) -> Vec<&'a [u8]> {
    std::iter::once(end.as_ref())
        .chain(rest.iter().map(|c| c.as_ref()))
        .collect()
}

/// A refused chain: the peer is told `bad_certificate`; the reason is logged here.
fn refusal(e: impl std::fmt::Display) -> rustls::Error {
    let e = std::io::Error::other(format!("peer certificate refused: {e}"));
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(e),
    )))
}

/// The handshake signatures of both verifiers: checked with the key of the certificate
/// the chain was verified for, by the provider's algorithms.
macro_rules! signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algs = &self.provider.signature_verification_algorithms;
            verify_tls12_signature(message, cert, dss, algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algs = &self.provider.signature_verification_algorithms;
            verify_tls13_signature(message, cert, dss, algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            let algs = &self.provider.signature_verification_algorithms;
            algs.supported_schemes()
        }
    };
}

/// Verifies a connecting peer's chain against our root.
#[derive(Debug)]
struct PeerClients {
    root: CertificateDer<'static>,
    hints: Vec<DistinguishedName>,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for PeerClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let chain = chain_of(end_entity, intermediates);
        match verify_chain(&chain, &self.root, now.as_secs() as i64, Usage::Client) {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(e) => {
                tracing::info!(cause = %e, "peer certificate refused");
                Err(refusal(e))
            }
        }
    }

    signatures!();
}

/// Verifies the server a link reached against the peer's root, and that it is that peer.
#[derive(Debug)]
struct PeerServer {
    root: CertificateDer<'static>,
    peer_id: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PeerServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = chain_of(end_entity, intermediates);
        match verify_chain(&chain, &self.root, now.as_secs() as i64, Usage::Server) {
            Ok(id) if id == self.peer_id => Ok(ServerCertVerified::assertion()),
            Ok(id) => Err(refusal(format!(
                "the server is node {id}, not {}",
                self.peer_id
            ))),
            Err(e) => Err(refusal(e)),
        }
    }

    signatures!();
}

/// The federation server's TLS: our certificate and key, peers verified against
/// `root_ca` (PEM text: the node database's `root-ca.crt`).
pub fn acceptor(cert: &Path, key: &Path, root_ca: &str) -> Result<TlsAcceptor, TlsError> {
    let provider = provider();
    let root = pem_certs("root-ca.crt", root_ca)?.remove(0);
    let hints = match x509_parser::parse_x509_certificate(root.as_ref()) {
        Ok((_, c)) => vec![DistinguishedName::from(c.subject().as_raw().to_vec())],
        Err(_) => Vec::new(),
    };
    let verifier = PeerClients {
        root,
        hints,
        provider: provider.clone(),
    };
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(read_certs(cert)?, read_key(key)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// What a link to one peer connects with: our certificate then `sub_ca` (PEM, the peer
/// certificate the peer issued us), our key; the peer's server verified against its
/// `root_ca` (PEM) and required to be node `peer_id`.
pub fn connector(
    cert: &Path,
    key: &Path,
    sub_ca: &str,
    root_ca: &str,
    peer_id: &str,
) -> Result<TlsConnector, TlsError> {
    let provider = provider();
    let mut chain = read_certs(cert)?;
    chain.extend(pem_certs("sub-ca.crt", sub_ca)?);
    let verifier = PeerServer {
        root: pem_certs("root-ca.crt", root_ca)?.remove(0),
        peer_id: peer_id.to_owned(),
        provider: provider.clone(),
    };
    let key: PrivateKeyDer<'static> = read_key(key)?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(TlsConnector::from(Arc::new(config)))
}
