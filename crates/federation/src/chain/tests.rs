//! Chains made as Swaptacular makes them (a root per node, peer certificates with a
//! directory-name constraint, node certificates signed by their root), and broken ones.

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

use super::*;
use crate::identity::REGISTRY;

const NOW: i64 = 1_800_000_000;

fn dn(unit: &str, id: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, REGISTRY);
    dn.push(DnType::OrganizationalUnitName, unit);
    dn.push(DnType::CustomDnType(vec![2, 5, 4, 5]), id);
    dn
}

struct Node {
    dn: DistinguishedName,
    key: KeyPair,
    root: Certificate,
}

fn ca_params(dn: DistinguishedName) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

fn node(unit: &str, id: &str) -> Node {
    let key = KeyPair::generate().expect("key");
    let root = ca_params(dn(unit, id)).self_signed(&key).expect("root");
    Node {
        dn: dn(unit, id),
        key,
        root,
    }
}

/// `of`'s root key, certified by `by`'s root, constrained to `of`'s names (a
/// `sub-ca.crt`); `constrained: false` leaves the constraint out.
fn peer_cert(of: &Node, by: &Node, constrained: bool) -> Certificate {
    let mut p = ca_params(of.dn.clone());
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    if constrained {
        // rcgen's own name constraints tag a directory name implicitly; Swaptacular's
        // (OpenSSL's) do it as the standard says.
        let (_, root) = x509_parser::parse_x509_certificate(of.root.der()).expect("root");
        let value = directory_name_constraint(root.subject().as_raw());
        let mut ext = CustomExtension::from_oid_content(NAME_CONSTRAINTS_OID, value);
        ext.set_criticality(true);
        p.custom_extensions.push(ext);
    }
    p.signed_by(&of.key, &by.root, &by.key).expect("peer cert")
}

/// A node certificate naming `subject`, signed by `signer`'s root.
fn leaf(subject: DistinguishedName, signer: &Node, eku: &[ExtendedKeyUsagePurpose]) -> Vec<u8> {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name = subject;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = eku.to_vec();
    p.signed_by(&key, &signer.root, &signer.key)
        .expect("leaf")
        .der()
        .to_vec()
}

const BOTH: &[ExtendedKeyUsagePurpose] = &[
    ExtendedKeyUsagePurpose::ClientAuth,
    ExtendedKeyUsagePurpose::ServerAuth,
];

const AA: &str = "1234abcd";
const CA: &str = "5921983fe0e6eb987aeedca54ad3c708";

#[test]
fn a_peer_chain_leads_to_our_root_and_names_the_peer() {
    let (aa, ca) = (
        node("Accounting Authorities", AA),
        node("Creditors Agents", CA),
    );
    let ca_leaf = leaf(ca.dn.clone(), &ca, BOTH);
    let sub = peer_cert(&ca, &aa, true);
    // The agent connects to the authority: its certificate, then the one we issued it.
    let id = verify_chain(&[&ca_leaf, sub.der()], aa.root.der(), NOW, Usage::Client);
    assert_eq!(id.as_deref(), Ok(CA));
    // The authority's server, as the agent's link sees it: straight to the root it trusts
    // (what else the server sends is not needed).
    let aa_leaf = leaf(aa.dn.clone(), &aa, BOTH);
    let their_sub = peer_cert(&aa, &ca, true);
    let id = verify_chain(
        &[&aa_leaf, their_sub.der()],
        aa.root.der(),
        NOW,
        Usage::Server,
    );
    assert_eq!(id.as_deref(), Ok(AA));
}

#[test]
fn chains_that_do_not_hold_are_refused() {
    let (aa, ca) = (
        node("Accounting Authorities", AA),
        node("Creditors Agents", CA),
    );
    let stranger = node("Creditors Agents", "0123456789abcdef0123456789abcdef");
    let ca_leaf = leaf(ca.dn.clone(), &ca, BOTH);
    let sub = peer_cert(&ca, &aa, true);
    let refused = |chain: &[&[u8]], root: &Certificate, now: i64, usage: Usage| {
        verify_chain(chain, root.der(), now, usage).expect_err("refused")
    };
    // Without the certificate we issued, the agent's root means nothing to us.
    let e = refused(&[&ca_leaf], &aa.root, NOW, Usage::Client);
    assert!(e.0.contains("not signed by the trusted root"), "{e}");
    // A root we do not trust.
    let e = refused(&[&ca_leaf, sub.der()], &stranger.root, NOW, Usage::Client);
    assert!(e.0.contains("not signed"), "{e}");
    // Someone else's certificate, issued by us, does not vouch for this key.
    let other_sub = peer_cert(&stranger, &aa, true);
    let e = refused(&[&ca_leaf, other_sub.der()], &aa.root, NOW, Usage::Client);
    assert!(e.0.contains("not signed"), "{e}");
    // The agent signs a certificate for another node: the constraint we put in forbids it.
    let forged = leaf(dn("Creditors Agents", &"f".repeat(32)), &ca, BOTH);
    let e = refused(&[&forged, sub.der()], &aa.root, NOW, Usage::Client);
    assert!(e.0.contains("outside the names"), "{e}");
    // And without the constraint, it still speaks only for itself.
    let loose = peer_cert(&ca, &aa, false);
    let e = refused(&[&forged, loose.der()], &aa.root, NOW, Usage::Client);
    assert!(e.0.contains("which is not itself"), "{e}");
    // A node certificate that names no node.
    let mut plain = DistinguishedName::new();
    plain.push(DnType::CommonName, "someone");
    let unnamed = leaf(plain, &ca, BOTH);
    let e = refused(&[&unnamed, loose.der()], &aa.root, NOW, Usage::Client);
    assert!(e.0.contains("does not name a node"), "{e}");
    // Made for servers only, presented by a client.
    let server_only = leaf(ca.dn.clone(), &ca, &[ExtendedKeyUsagePurpose::ServerAuth]);
    let e = refused(&[&server_only, sub.der()], &aa.root, NOW, Usage::Client);
    assert!(e.0.contains("client authentication"), "{e}");
    // Not valid yet, or any more (rcgen certificates run from 1975 to 4096).
    let e = refused(&[&ca_leaf, sub.der()], &aa.root, 0, Usage::Client);
    assert!(e.0.contains("not valid now"), "{e}");
    // A certificate in the middle that is no CA.
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name = ca.dn.clone();
    p.is_ca = IsCa::ExplicitNoCa;
    let not_ca = p.signed_by(&ca.key, &aa.root, &aa.key).expect("cert");
    let e = refused(&[&ca_leaf, not_ca.der()], &aa.root, NOW, Usage::Client);
    assert!(e.0.contains("not a CA"), "{e}");
    // Garbage.
    let e = verify_chain(&[b"nope"], aa.root.der(), NOW, Usage::Client).expect_err("garbage");
    assert!(e.0.contains("not a DER certificate"), "{e}");
    assert!(verify_chain(&[], aa.root.der(), NOW, Usage::Client).is_err());
}
