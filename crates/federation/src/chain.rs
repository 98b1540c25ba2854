//! Whether a peer's certificate chain leads to the one root we trust for it, checked as
//! Swaptacular's certificates need: their peer certificates (`sub-ca.crt`) carry a
//! critical *name constraint* of the `directoryName` form (the subject's `O`, `OU` and
//! `serialNumber` may not change down the chain), which rustls' verifier (webpki) refuses
//! outright. So federation connections verify chains here, and TLS checks only the
//! handshake's signature with the key the chain ends in.
//!
//! What holds for a chain taken ([`verify_chain`]): the end certificate, then each
//! certificate it was signed by (found among those presented by subject and signature),
//! ends in a certificate signed by the root; every certificate and the root are valid now;
//! each certificate between end and root is a CA (basic constraints, `keyCertSign` when a
//! key usage is given, within its path length); an extended key usage, where given, allows
//! the use (client or server authentication); directory-name constraints of each CA (and
//! the root) hold for every certificate below it; a constraint of another name form, or
//! an unknown critical extension, refuses the chain. And the end certificate names a node
//! ([`crate::identity::peer_node_id`]), the same node as every certificate between it and
//! the root: a peer signs for itself only, whatever its certificates say.

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, GeneralSubtree, ParsedExtension};
use x509_parser::oid_registry::OID_X509_SERIALNUMBER;
use x509_parser::time::ASN1Time;
use x509_parser::x509::X509Name;

/// Longest chain taken, root not counted.
pub const MAX_DEPTH: usize = 4;

/// What the end certificate is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A peer connecting to our server.
    Client,
    /// A peer's server our link connects to.
    Server,
}

/// Why a chain is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ChainError(pub String);

fn refuse<T>(why: impl Into<String>) -> Result<T, ChainError> {
    Err(ChainError(why.into()))
}

fn parse<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>, ChainError> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        _ => refuse(format!("{what} is not a DER certificate")),
    }
}

/// Verifies `chain` (end certificate first, DER) against `root` (DER) at `now` (seconds
/// since the epoch) for `usage`; returns the node id the end certificate names.
pub fn verify_chain(
    chain: &[&[u8]],
    root: &[u8],
    now: i64,
    usage: Usage,
) -> Result<String, ChainError> {
    let Some((end, rest)) = chain.split_first() else {
        return refuse("no certificate presented");
    };
    let end = parse(end, "the end certificate")?;
    let presented = rest
        .iter()
        .map(|der| parse(der, "a presented certificate"))
        .collect::<Result<Vec<_>, _>>()?;
    let root = parse(root, "the trusted root")?;
    // The path: from the end certificate to one the root signed.
    let mut path: Vec<&X509Certificate<'_>> = vec![&end];
    let mut used = vec![false; presented.len()];
    loop {
        let cur = path[path.len() - 1];
        if signed_by(cur, &root) {
            break;
        }
        if path.len() > MAX_DEPTH {
            return refuse(format!(
                "no chain of at most {MAX_DEPTH} certificates leads to the trusted root"
            ));
        }
        let next = presented
            .iter()
            .enumerate()
            .find(|(i, c)| !used[*i] && signed_by(cur, c));
        match next {
            Some((i, c)) => {
                used[i] = true;
                path.push(c);
            }
            None => {
                return refuse(format!(
                    "the certificate of `{}` was not signed by the trusted root, nor by a \
                     certificate presented with it that leads there",
                    cur.subject()
                ))
            }
        }
    }
    let at = ASN1Time::from_timestamp(now).map_err(|_| ChainError("bad time".into()))?;
    for c in path.iter().copied().chain([&root]) {
        if !c.validity().is_valid_at(at) {
            return refuse(format!(
                "the certificate of `{}` is not valid now (valid from {} to {})",
                c.subject(),
                c.validity().not_before,
                c.validity().not_after
            ));
        }
        known_critical_extensions(c)?;
    }
    allows(&end, usage)?;
    for (depth, ca) in path.iter().enumerate().skip(1) {
        let basic = ca.basic_constraints().ok().flatten();
        match basic {
            Some(b) if b.value.ca => {
                // Certificates between this one and the end one.
                let below = depth - 1;
                if b.value
                    .path_len_constraint
                    .is_some_and(|n| (n as usize) < below)
                {
                    return refuse(format!("`{}` allows a shorter path", ca.subject()));
                }
            }
            _ => return refuse(format!("`{}` is not a CA", ca.subject())),
        }
        if let Ok(Some(ku)) = ca.key_usage() {
            if !ku.value.key_cert_sign() {
                return refuse(format!("`{}` may not sign certificates", ca.subject()));
            }
        }
        allows(ca, usage)?;
    }
    // Name constraints of every CA, the root's too, on every certificate below it.
    let with_root: Vec<&X509Certificate<'_>> = path.iter().copied().chain([&root]).collect();
    for (depth, ca) in with_root.iter().enumerate().skip(1) {
        let Ok(Some(nc)) = ca.name_constraints() else {
            continue;
        };
        let permitted = directory_names(ca, &nc.value.permitted_subtrees)?;
        let excluded = directory_names(ca, &nc.value.excluded_subtrees)?;
        for below in &with_root[..depth] {
            let subject = below.subject();
            if !permitted.is_empty() && !permitted.iter().any(|p| within(subject, p)) {
                return refuse(format!(
                    "`{subject}` is outside the names `{}` permits",
                    ca.subject()
                ));
            }
            if excluded.iter().any(|p| within(subject, p)) {
                return refuse(format!(
                    "`{subject}` is among the names `{}` excludes",
                    ca.subject()
                ));
            }
        }
    }
    let Some(id) = crate::identity::peer_node_id(end.as_ref()) else {
        return refuse(format!(
            "`{}` does not name a node (O={}, serialNumber=<node id>)",
            end.subject(),
            crate::identity::REGISTRY
        ));
    };
    for ca in &path[1..] {
        if serial_number(ca.subject()).as_deref() != Some(id.as_str()) {
            return refuse(format!(
                "`{}` signed a certificate for node {id}, which is not itself",
                ca.subject()
            ));
        }
    }
    Ok(id)
}

/// The OID of the name constraints extension.
pub const NAME_CONSTRAINTS_OID: &[u64] = &[2, 5, 29, 30];

/// The value of a name constraints extension that permits `name` (a DER `Name`, such as
/// a certificate's subject) and the names below it, as Swaptacular's peer certificates
/// carry it (`directoryName` is explicitly tagged: `Name` is a CHOICE). For tools and
/// tests that make such certificates.
pub fn directory_name_constraint(name: &[u8]) -> Vec<u8> {
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match content.len() {
            n @ 0..=0x7f => out.push(n as u8),
            n @ 0x80..=0xff => out.extend([0x81, n as u8]),
            n => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(content);
        out
    }
    // NameConstraints ::= SEQUENCE { permittedSubtrees [0] GeneralSubtrees }
    // GeneralSubtrees ::= SEQUENCE OF GeneralSubtree ::= SEQUENCE { base GeneralName }
    tlv(0x30, &tlv(0xa0, &tlv(0x30, &tlv(0xa4, name))))
}

/// The directory names of a name constraint's subtrees; other forms refuse the chain.
fn directory_names<'a>(
    ca: &X509Certificate<'_>,
    subtrees: &'a Option<Vec<GeneralSubtree<'a>>>,
) -> Result<Vec<&'a X509Name<'a>>, ChainError> {
    let mut dirs = Vec::new();
    for s in subtrees.iter().flatten() {
        match &s.base {
            GeneralName::DirectoryName(n) => dirs.push(n),
            other => {
                return refuse(format!(
                    "`{}` constrains names of a form not supported here: {other:?}",
                    ca.subject()
                ))
            }
        }
    }
    Ok(dirs)
}

/// `cert` names `issuer` as its issuer and carries its signature.
fn signed_by(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
    cert.issuer().as_raw() == issuer.subject().as_raw()
        && cert.verify_signature(Some(issuer.public_key())).is_ok()
}

fn allows(c: &X509Certificate<'_>, usage: Usage) -> Result<(), ChainError> {
    match c.extended_key_usage() {
        Ok(Some(eku)) => {
            let e = eku.value;
            let ok = e.any
                || match usage {
                    Usage::Client => e.client_auth,
                    Usage::Server => e.server_auth,
                };
            if ok {
                Ok(())
            } else {
                refuse(format!(
                    "`{}` is not for TLS {} authentication",
                    c.subject(),
                    match usage {
                        Usage::Client => "client",
                        Usage::Server => "server",
                    }
                ))
            }
        }
        Ok(None) => Ok(()),
        Err(_) => refuse(format!(
            "`{}` has an unreadable extended key usage",
            c.subject()
        )),
    }
}

fn known_critical_extensions(c: &X509Certificate<'_>) -> Result<(), ChainError> {
    for ext in c.extensions() {
        if !ext.critical {
            continue;
        }
        if matches!(
            ext.parsed_extension(),
            ParsedExtension::UnsupportedExtension { .. } | ParsedExtension::ParseError { .. }
        ) {
            return refuse(format!(
                "`{}` has a critical extension {} that is not understood",
                c.subject(),
                ext.oid
            ));
        }
    }
    Ok(())
}

/// `name` is `base` or below it: its relative names start with those of `base`, each the
/// same attributes with the same values (compared as strings, exactly).
fn within(name: &X509Name<'_>, base: &X509Name<'_>) -> bool {
    let ours: Vec<_> = name.iter().collect();
    let theirs: Vec<_> = base.iter().collect();
    theirs.len() <= ours.len()
        && theirs.iter().zip(&ours).all(|(b, n)| {
            let b: Vec<_> = b.iter().map(attr).collect();
            let n: Vec<_> = n.iter().map(attr).collect();
            b.len() == n.len() && b.iter().all(|a| n.contains(a))
        })
}

/// An attribute's type and value: the value as a string, or else its encoded bytes.
fn attr(a: &x509_parser::x509::AttributeTypeAndValue<'_>) -> (String, Result<String, Vec<u8>>) {
    let value = match a.as_str() {
        Ok(s) => Ok(s.to_owned()),
        Err(_) => Err(a.attr_value().data.to_vec()),
    };
    (a.attr_type().to_id_string(), value)
}

fn serial_number(name: &X509Name<'_>) -> Option<String> {
    name.iter_attributes()
        .find(|a| *a.attr_type() == OID_X509_SERIALNUMBER)
        .and_then(|a| a.as_str().ok())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests;
