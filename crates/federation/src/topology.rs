//! Where a node's messages for its peers go, as swpt_stomp's `configure-queue` lays it out
//! on RabbitMQ, in Trunkline's terms (topics instead of exchanges):
//!
//! | this node | peer | its apps publish to | a queue for the peer is bound to |
//! |---|---|---|---|
//! | accounting authority | creditors agent | `to_creditors.<creditor id bytes>` | `to_creditors.<the agent's creditors subnet>.#` |
//! | accounting authority | debtors agent | `to_debtors.<debtor id bytes>` | `to_debtors.<the agent's debtors subnet>.#` |
//! | creditors agent | accounting authority | `creditors_out.<debtor id bytes>` | `creditors_out.<the authority's debtors subnet>.#` |
//! | debtors agent | accounting authority | `debtors_out.<anything>` | `debtors_out.#` |
//!
//! An id's bytes are written as topic words in hex (`12.34.ab.cd.00.00.00.01`), and a
//! subnet as its whole bytes then `#` ([`Subnet::binding_key`]). A message then goes to
//! every queue bound to it: one queue per peer (swpt_stomp spreads a peer's messages over
//! its queues at random; here each queue of a peer would get them all).

use crate::nodedata::{NodeData, NodeType, PeerData};
use crate::routing::{Subnet, SubnetError};

/// The topic pattern a queue forwarded to `peer` is bound to on node `owner`. `None` for a
/// pair the protocol does not link (the node database refuses those already).
pub fn queue_binding(owner: &NodeData, peer: &PeerData) -> Option<Result<String, SubnetError>> {
    use NodeType::*;
    let (exchange, subnet): (&str, Option<&Subnet>) = match (owner.node_type, peer.node_type) {
        (AccountingAuthority, CreditorsAgent) => ("to_creditors", Some(&peer.creditors_subnet)),
        (AccountingAuthority, DebtorsAgent) => ("to_debtors", Some(&peer.debtors_subnet)),
        (CreditorsAgent, AccountingAuthority) => ("creditors_out", Some(&peer.debtors_subnet)),
        (DebtorsAgent, AccountingAuthority) => ("debtors_out", None),
        _ => return None,
    };
    Some(match subnet {
        Some(s) => s.binding_key().map(|key| format!("{exchange}.{key}")),
        None => Ok(format!("{exchange}.#")),
    })
}

/// The topic words of an id's bytes, in hex, as apps route by it (`to_creditors.<this>`).
pub fn id_words(id: i64) -> String {
    let bytes = id.to_be_bytes();
    let words: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    words.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::nodedata::StompConfig;

    fn node(node_type: NodeType, creditors: &str, debtors: &str) -> NodeData {
        NodeData {
            node_type,
            node_id: "1234abcd".into(),
            root_cert: String::new(),
            creditors_subnet: Subnet::parse(creditors).expect("subnet"),
            debtors_subnet: Subnet::parse(debtors).expect("subnet"),
        }
    }

    fn peer(of: NodeData) -> PeerData {
        PeerData {
            node_type: of.node_type,
            node_id: of.node_id,
            stomp: StompConfig {
                servers: vec![],
                host: "/".into(),
                destination: String::new(),
                login: None,
                passcode: None,
                accepted_content_types: vec![],
            },
            root_cert: String::new(),
            sub_cert: String::new(),
            creditors_subnet: of.creditors_subnet,
            debtors_subnet: of.debtors_subnet,
            active: true,
            deactivated: false,
        }
    }

    #[test]
    fn a_queue_for_a_peer_takes_what_the_peer_speaks_for() {
        use NodeType::*;
        let aa = node(AccountingAuthority, "", "1234abcd");
        let ca = peer(node(CreditorsAgent, "000001", "1234abcd"));
        let da = peer(node(DebtorsAgent, "", "1234abcd00"));
        let binding = |o: &NodeData, p: &PeerData| queue_binding(o, p).map(|r| r.expect("bytes"));
        assert_eq!(
            binding(&aa, &ca).as_deref(),
            Some("to_creditors.00.00.01.#")
        );
        assert_eq!(
            binding(&aa, &da).as_deref(),
            Some("to_debtors.12.34.ab.cd.00.#")
        );
        let as_peer = peer(aa.clone());
        let ca_owner = node(CreditorsAgent, "000008", "");
        assert_eq!(
            binding(&ca_owner, &as_peer).as_deref(),
            Some("creditors_out.12.34.ab.cd.#")
        );
        let da_owner = node(DebtorsAgent, "", "1234abcd00");
        assert_eq!(
            binding(&da_owner, &as_peer).as_deref(),
            Some("debtors_out.#")
        );
        assert_eq!(binding(&aa, &as_peer), None, "authorities do not peer");
        // A subnet of half bytes cannot be a binding.
        let odd = peer(node(CreditorsAgent, "00001", ""));
        assert!(matches!(queue_binding(&aa, &odd), Some(Err(_))));
    }

    #[test]
    fn id_words_are_the_bytes_in_hex() {
        assert_eq!(id_words(0x1234_abcd_0000_0001), "12.34.ab.cd.00.00.00.01");
        assert_eq!(id_words(-1), "ff.ff.ff.ff.ff.ff.ff.ff");
    }
}
