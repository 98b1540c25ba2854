//! STOMP over TLS 1.3 with mutual authentication. Certificates are made here, per test.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use trunkline_proto::{encode, Command, Decoder, Frame, Item, Limits};
use trunkline_testkit::TestServer;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    Ca {
        cert: p.self_signed(&key).expect("self-sign"),
        key,
    }
}

/// A certificate signed by `ca`; `serial` goes into the subject's serialNumber.
fn leaf(ca: &Ca, cn: &str, serial: Option<&str>, server: bool) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(if server {
        vec!["localhost".to_string()]
    } else {
        vec![]
    })
    .expect("params");
    p.distinguished_name.push(DnType::CommonName, cn);
    if let Some(s) = serial {
        p.distinguished_name
            .push(DnType::CustomDnType(vec![2, 5, 4, 5]), s);
    }
    p.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    (p.signed_by(&key, &ca.cert, &ca.key).expect("sign"), key)
}

fn write(dir: &Path, name: &str, text: String) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write pem");
    p
}

async fn tls_connect(
    addr: &str,
    server_ca: &Ca,
    client: Option<&(rcgen::Certificate, KeyPair)>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(server_ca.cert.der().to_vec()))
        .expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
}

/// Sends CONNECT (no credentials: the certificate is the credential) and returns the
/// answer, or `None` if the server closed first.
async fn stomp_connect<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    login: Option<&str>,
) -> Option<Frame> {
    let mut out = BytesMut::new();
    let mut f = Frame::new(Command::Connect)
        .header("accept-version", "1.2")
        .header("host", "/");
    if let Some(l) = login {
        f = f.header("login", l);
    }
    encode(&f, &mut out).expect("encode");
    s.write_all(&out).await.ok()?;
    let mut decoder = Decoder::new(Limits::default());
    let mut buf = BytesMut::new();
    loop {
        if let Ok(Some(Item::Frame(f))) = decoder.decode(&mut buf) {
            return Some(f);
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read_buf(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
    }
}

#[tokio::test]
async fn mutual_tls_names_the_client_by_its_certificate() {
    let dir = tempfile::tempdir().expect("tmp");
    let server_ca = ca("server CA");
    let client_ca = ca("clients CA");
    let (srv, srv_key) = leaf(&server_ca, "localhost", None, true);
    let cert = write(dir.path(), "server.pem", srv.pem());
    let key = write(dir.path(), "server.key", srv_key.serialize_pem());
    let cas = write(dir.path(), "clients.pem", client_ca.cert.pem());
    let server = TestServer::start_with(|c| {
        c.stomp.tls_listen = Some("127.0.0.1:0".parse().expect("addr"));
        c.stomp.tls_cert = Some(cert.clone());
        c.stomp.tls_key = Some(key.clone());
        c.stomp.tls_client_ca = Some(cas.clone());
    })
    .await;
    server.new_client("peer-7", &["peers.#"]).await;
    let addr = server.stomp_tls.clone();

    // serialNumber wins over CN.
    let good = leaf(&client_ca, "Some Display Name", Some("peer-7"), false);
    let mut s = tls_connect(&addr, &server_ca, Some(&good))
        .await
        .expect("handshake");
    let f = stomp_connect(&mut s, None).await.expect("answer");
    assert_eq!(
        (f.command, f.get("user-name")),
        (Command::Connected, Some("peer-7")),
        "{f:?}"
    );

    // Trunkline's own client, with the certificate as its only credential.
    let mut opts = trunkline_client::stomp::StompOptions::new(addr.clone(), "", "");
    opts.session.login = None;
    opts.session.passcode = None;
    opts.tls = Some(trunkline_client::stomp::TlsOptions {
        ca_pem: server_ca.cert.pem().into_bytes(),
        client_cert_pem: Some(good.0.pem().into_bytes()),
        client_key_pem: Some(good.1.serialize_pem().into_bytes()),
        server_name: "localhost".into(),
    });
    let client = trunkline_client::stomp::StompClient::connect(opts)
        .await
        .expect("TLS client connects");
    client
        .send("/topic/peers.hello", &[], "hi")
        .await
        .expect("send")
        .await
        .expect("confirmed over TLS");
    client.disconnect().await.expect("disconnect");

    // A login that disagrees with the certificate is refused.
    let mut s = tls_connect(&addr, &server_ca, Some(&good))
        .await
        .expect("handshake");
    let f = stomp_connect(&mut s, Some("admin")).await.expect("answer");
    assert_eq!(
        (f.command, f.get("code")),
        (Command::Error, Some("forbidden"))
    );

    // A certificate for a client that does not exist.
    let stranger = leaf(&client_ca, "nobody-here", None, false);
    let mut s = tls_connect(&addr, &server_ca, Some(&stranger))
        .await
        .expect("handshake");
    let f = stomp_connect(&mut s, None).await.expect("answer");
    assert_eq!(
        (f.command, f.get("code")),
        (Command::Error, Some("unknown_client"))
    );

    // No certificate, or one from another CA: no session at all.
    for client in [
        None,
        Some(leaf(&ca("rogue CA"), "peer-7", Some("peer-7"), false)),
    ] {
        let refused = match tls_connect(&addr, &server_ca, client.as_ref()).await {
            Err(_) => true,
            // TLS 1.3 clients learn of a rejected certificate on their first read.
            Ok(mut s) => stomp_connect(&mut s, None).await.is_none(),
        };
        assert!(
            refused,
            "a connection without a trusted client certificate must fail"
        );
    }
    server.stop().await;
}
