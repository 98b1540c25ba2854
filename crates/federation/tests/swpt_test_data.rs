//! Reads the node databases of the original's own test data (`test_data/AA`, `CA`, `DA`
//! of a `swaptacular/swpt_stomp` checkout), and the node ids its certificates carry.
//! Local only (CI has no checkout), so ignored unless asked for:
//! `TRUNKLINE_SWPT_TEST_DATA=/path/to/swpt_stomp/test_data cargo test -p trunkline-federation --test swpt_test_data -- --ignored`.

use std::path::PathBuf;

use trunkline_federation::{peer_node_id, NodeDatabase, NodeType};

fn test_data() -> PathBuf {
    std::env::var_os("TRUNKLINE_SWPT_TEST_DATA")
        .map(PathBuf::from)
        .expect("TRUNKLINE_SWPT_TEST_DATA: the test_data directory of a swpt_stomp checkout")
}

fn der(pem_text: &str) -> Vec<u8> {
    let mut reader = pem_text.as_bytes();
    let cert = rustls_pemfile::certs(&mut reader)
        .next()
        .expect("a certificate")
        .expect("PEM");
    cert.to_vec()
}

#[test]
#[ignore = "needs a swpt_stomp checkout (TRUNKLINE_SWPT_TEST_DATA)"]
fn the_originals_node_databases_read_as_it_reads_them() {
    let root = test_data();
    let (mut active, mut inactive) = (0, 0);
    for (node, node_type) in [
        ("AA", NodeType::AccountingAuthority),
        ("CA", NodeType::CreditorsAgent),
        ("DA", NodeType::DebtorsAgent),
    ] {
        let db = NodeDatabase::new(root.join(node));
        let me = db.node().unwrap_or_else(|e| panic!("{node}: {e}"));
        assert_eq!(me.node_type, node_type, "{node}");
        let ids = db.peer_ids().expect("peers");
        assert!(!ids.is_empty(), "{node} has peers");
        for id in ids {
            let peer = db
                .peer(&id, false)
                .unwrap_or_else(|e| panic!("{node} peer {id}: {e}"))
                .unwrap_or_else(|| panic!("{node} peer {id} is listed"));
            assert_eq!(peer.active, db.peer(&id, true).expect("read").is_some());
            if peer.active {
                active += 1;
            } else {
                inactive += 1;
            }
            // The peer's certificate (issued by its own root) names it.
            let cert = std::fs::read_to_string(
                root.join(node).join("peers").join(&id).join("peercert.crt"),
            );
            if let Ok(cert) = cert {
                assert_eq!(
                    peer_node_id(&der(&cert)).as_deref(),
                    Some(id.as_str()),
                    "{node} peer {id}"
                );
            }
            println!(
                "{node} peer {id}: {:?}, active {}, creditors {}, debtors {}, servers {:?}, destination {}",
                peer.node_type, peer.active, peer.creditors_subnet, peer.debtors_subnet,
                peer.stomp.servers, peer.stomp.destination
            );
        }
        assert!(
            active > 0 && inactive > 0,
            "{node}: both kinds in the test data"
        );
    }
}

#[test]
#[ignore = "needs a swpt_stomp checkout (TRUNKLINE_SWPT_TEST_DATA)"]
fn the_originals_certificate_chains_verify_between_its_nodes() {
    use trunkline_federation::chain::{verify_chain, Usage};
    let root = test_data();
    let read = |path: &str| {
        der(&std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}")))
    };
    // Each node as the other's server sees it: its certificate, then the peer certificate
    // the other issued it; and as the other's link sees its server.
    let aa = NodeDatabase::new(root.join("AA")).node().expect("AA");
    for (agent, dir) in [("CA", "CA"), ("DA", "DA")] {
        let me = NodeDatabase::new(root.join(dir)).node().expect("agent");
        let (leaf, sub) = (
            read(&format!("{agent}/server.crt")),
            read(&format!("AA/peers/{}/sub-ca.crt", me.node_id)),
        );
        let to_aa = read(&format!("{agent}/peers/{}/sub-ca.crt", aa.node_id));
        // The agent connects to the authority with the peer certificate the authority gave it.
        let id = verify_chain(
            &[&leaf, &to_aa],
            &read("AA/root-ca.crt"),
            now(),
            Usage::Client,
        );
        assert_eq!(id.as_deref(), Ok(me.node_id.as_str()), "{agent} -> AA");
        // The authority connects to the agent with the one the agent gave it.
        let aa_leaf = read("AA/server.crt");
        let id = verify_chain(
            &[&aa_leaf, &sub],
            &read(&format!("{agent}/root-ca.crt")),
            now(),
            Usage::Client,
        );
        assert_eq!(id.as_deref(), Ok(aa.node_id.as_str()), "AA -> {agent}");
        // A link checks the server it reached against the peer's root only.
        let id = verify_chain(
            &[&aa_leaf],
            &read(&format!("{agent}/peers/{}/root-ca.crt", aa.node_id)),
            now(),
            Usage::Server,
        );
        assert_eq!(
            id.as_deref(),
            Ok(aa.node_id.as_str()),
            "{agent}'s link to AA"
        );
        // The agent's certificate alone does not reach the authority's root.
        assert!(verify_chain(&[&leaf], &read("AA/root-ca.crt"), now(), Usage::Client).is_err());
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
