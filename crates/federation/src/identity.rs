//! Which node a peer's certificate names: the `serialNumber` of its subject, under
//! `O=Swaptacular Nodes Registry`, as `swpt_stomp` reads it. The TLS layer has already
//! checked the chain against our root (server) or the peer's (client).

use x509_parser::oid_registry::{OID_X509_ORGANIZATION_NAME, OID_X509_SERIALNUMBER};

/// The organization every node certificate names.
pub const REGISTRY: &str = "Swaptacular Nodes Registry";

/// The node id a peer certificate (DER) names, if it is a node certificate: its subject
/// has exactly one organization, [`REGISTRY`], and exactly one serialNumber, a node id
/// (8 or 32 lowercase hex digits), neither in a multi-valued RDN. `None` otherwise.
pub fn peer_node_id(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let (mut organization, mut serial) = (None, None);
    for rdn in cert.subject().iter() {
        for attr in rdn.iter() {
            let slot = match attr.attr_type() {
                t if *t == OID_X509_ORGANIZATION_NAME => &mut organization,
                t if *t == OID_X509_SERIALNUMBER => &mut serial,
                _ => continue,
            };
            if rdn.iter().count() > 1 || slot.is_some() {
                return None;
            }
            *slot = Some(attr.as_str().ok()?.to_owned());
        }
    }
    let serial = serial.filter(|s| crate::nodedata::is_node_id(s))?;
    (organization.as_deref() == Some(REGISTRY)).then_some(serial)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    fn cert(attrs: &[(DnType, &str)]) -> Vec<u8> {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        for (t, v) in attrs {
            p.distinguished_name.push(t.clone(), *v);
        }
        p.self_signed(&key).expect("sign").der().to_vec()
    }

    fn serial() -> DnType {
        DnType::CustomDnType(vec![2, 5, 4, 5])
    }

    #[test]
    fn a_node_certificate_names_its_node_and_nothing_else_does() {
        let id = "1234abcd";
        let node = cert(&[
            (DnType::OrganizationName, REGISTRY),
            (DnType::OrganizationalUnitName, "Accounting Authorities"),
            (serial(), id),
        ]);
        assert_eq!(peer_node_id(&node).as_deref(), Some(id));
        let agent = "060791aeca7637fa3357dfc0299fb4c5";
        let node = cert(&[(serial(), agent), (DnType::OrganizationName, REGISTRY)]);
        assert_eq!(peer_node_id(&node).as_deref(), Some(agent));
        for (why, attrs) in [
            (
                "another organization",
                vec![(DnType::OrganizationName, "Registry"), (serial(), id)],
            ),
            (
                "no organization",
                vec![(DnType::CommonName, REGISTRY), (serial(), id)],
            ),
            (
                "no serialNumber",
                vec![
                    (DnType::OrganizationName, REGISTRY),
                    (DnType::CommonName, id),
                ],
            ),
            (
                "not a node id",
                vec![(DnType::OrganizationName, REGISTRY), (serial(), "1234ABCD")],
            ),
            (
                "a path",
                vec![(DnType::OrganizationName, REGISTRY), (serial(), "../12345")],
            ),
        ] {
            assert_eq!(peer_node_id(&cert(&attrs)), None, "{why}");
        }
        assert_eq!(peer_node_id(b"not a certificate"), None);
    }
}
