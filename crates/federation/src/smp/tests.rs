use super::*;
use crate::nodedata::StompConfig;
use crate::routing::Subnet;

const AA_ID: &str = "1234abcd";
const CA_ID: &str = "060791aeca7637fa3357dfc0299fb4c5";
const DA_ID: &str = "5921983fe0e6eb987aeedca54ad3c708";

fn subnet(hex: &str) -> Subnet {
    Subnet::parse(hex).expect("valid")
}

fn node(node_type: NodeType, node_id: &str, creditors: Subnet, debtors: Subnet) -> NodeData {
    NodeData {
        node_type,
        node_id: node_id.into(),
        root_cert: String::new(),
        creditors_subnet: creditors,
        debtors_subnet: debtors,
    }
}

fn peer(node_type: NodeType, node_id: &str, creditors: Subnet, debtors: Subnet) -> PeerData {
    PeerData {
        node_type,
        node_id: node_id.into(),
        stomp: StompConfig {
            servers: vec![("127.0.0.1".into(), 1234)],
            host: "/".into(),
            destination: "/exchange/x".into(),
            login: None,
            passcode: None,
            accepted_content_types: vec!["application/json".into()],
        },
        root_cert: String::new(),
        sub_cert: String::new(),
        creditors_subnet: creditors,
        debtors_subnet: debtors,
        active: true,
        deactivated: false,
    }
}

/// The debtors of the accounting authority: its id's 32 bits.
const DEBTOR: i64 = 0x1234_abcd_0000_0007;

fn header<'a>(m: &'a Inbound, name: &str) -> Option<&'a str> {
    m.headers.iter().find(|h| h.0 == name).map(|h| h.1.as_str())
}

/// What `owner` does with `body` from `peer`, sent as JSON of the type the body says.
fn take(owner: &NodeData, peer: &PeerData, body: &Value) -> Result<Inbound, Refusal> {
    let message_type = body["type"].as_str().expect("a type");
    check_inbound(
        owner,
        peer,
        message_type,
        "application/json",
        body.to_string().as_bytes(),
    )
}

fn json(m: &Inbound) -> Value {
    serde_json::from_slice(&m.body).expect("JSON")
}

/// An accounting authority and a creditors agent it knows as subnet `000002`.
fn authority() -> (NodeData, PeerData) {
    let aa = node(
        NodeType::AccountingAuthority,
        AA_ID,
        Subnet::ALL,
        subnet(AA_ID),
    );
    let ca = peer(
        NodeType::CreditorsAgent,
        CA_ID,
        subnet("000002"),
        subnet(AA_ID),
    );
    (aa, ca)
}

#[test]
fn an_accounting_authority_takes_its_agents_requests_routed_by_debtor_and_creditor() {
    let (aa, ca) = authority();
    let creditor: i64 = 0x0000_0200_0000_0001;
    let body = serde_json::json!({
        "type": "PrepareTransfer", "debtor_id": DEBTOR, "creditor_id": creditor,
        "coordinator_type": "direct", "coordinator_id": creditor, "coordinator_request_id": 1,
        "extra": "kept"
    });
    let m = take(&aa, &ca, &body).expect("taken");
    assert_eq!(m.routing_key, routing_key(&[DEBTOR, creditor]));
    assert_eq!(
        header(&m, "creditor-id"),
        Some(creditor.to_string().as_str())
    );
    assert_eq!(header(&m, "coordinator-type"), Some("direct"));
    assert_eq!(
        header(&m, "ca-trade"),
        None,
        "only a creditors agent adds those"
    );
    assert_eq!(json(&m), body);
    let refused = |t: &str, ct: &str, body: Value| {
        check_inbound(&aa, &ca, t, ct, body.to_string().as_bytes())
            .expect_err("refused")
            .0
    };
    let with = |k: &str, v: Value| {
        let mut b = body.clone();
        b[k] = v;
        b
    };
    assert_eq!(
        refused("PrepareTransfer", "text/plain", body.clone()),
        "Unsupported content type: text/plain."
    );
    assert_eq!(
        refused(
            "AccountUpdate",
            "application/json",
            with("type", "AccountUpdate".into())
        ),
        "Invalid message type: AccountUpdate.",
        "an authority's own answers are not taken from agents"
    );
    assert_eq!(
        refused("FinalizeTransfer", "application/json", body.clone()),
        "Invalid FinalizeTransfer message."
    );
    assert_eq!(
        refused(
            "PrepareTransfer",
            "application/json",
            with("creditor_id", 0x0000_0300_0000_0001i64.into())
        ),
        "Invalid creditor ID: 0x0000030000000001."
    );
    assert_eq!(
        refused(
            "PrepareTransfer",
            "application/json",
            with("debtor_id", 7.into())
        ),
        "Invalid debtor ID: 0x0000000000000007."
    );
    assert_eq!(
        refused(
            "PrepareTransfer",
            "application/json",
            with("coordinator_type", "issuing".into())
        ),
        "Invalid coordinator type: issuing."
    );
    assert_eq!(
        refused(
            "PrepareTransfer",
            "application/json",
            with("coordinator_id", (creditor + 1).into())
        ),
        "Invalid coordinator ID."
    );
    for bad in [
        with("debtor_id", "7".into()),
        with("debtor_id", 1.5.into()),
        with("creditor_id", Value::Null),
    ] {
        assert_eq!(
            refused("PrepareTransfer", "application/json", bad),
            "Invalid PrepareTransfer message."
        );
    }
    assert!(check_inbound(
        &aa,
        &ca,
        "PrepareTransfer",
        "application/json",
        b"{not json"
    )
    .is_err());
    assert!(check_inbound(&aa, &ca, "PrepareTransfer", "application/json", b"[1]").is_err());
}

/// A creditors agent whose creditors are subnet `000001`, and its accounting authority,
/// which knows them as `000002`.
fn agent() -> (NodeData, PeerData) {
    let ca = node(
        NodeType::CreditorsAgent,
        CA_ID,
        subnet("000001"),
        Subnet::ALL,
    );
    let aa = peer(
        NodeType::AccountingAuthority,
        AA_ID,
        subnet("000002"),
        subnet(AA_ID),
    );
    (ca, aa)
}

#[test]
fn a_creditors_agent_moves_creditor_ids_into_its_subnet_and_marks_trades() {
    let (ca, aa) = agent();
    let update = |creditor: i64| serde_json::json!({"type": "AccountUpdate", "debtor_id": DEBTOR, "creditor_id": creditor});
    // A regular account: its low 40 bits at or past 2^32.
    let theirs: i64 = 0x0000_0201_0000_0005;
    let ours: i64 = 0x0000_0101_0000_0005;
    let m = take(&ca, &aa, &update(theirs)).expect("taken");
    assert_eq!(m.routing_key, routing_key(&[ours]), "routed by our id");
    assert_eq!(json(&m)["creditor_id"], ours);
    assert_eq!(header(&m, "creditor-id"), Some(ours.to_string().as_str()));
    assert_eq!(header(&m, "ca-creditors"), Some("true"));
    assert_eq!(header(&m, "ca-trade"), Some("false"));
    // A system account of circular trades: below 2^32 in the agent's 40 bits.
    let m = take(&ca, &aa, &update(0x0000_0200_0000_0005)).expect("taken");
    assert_eq!(header(&m, "ca-creditors"), Some("false"));
    assert_eq!(header(&m, "ca-trade"), Some("true"));
    // A transfer another agent's account coordinates: routed by the coordinator.
    let coordinator: i64 = 0x0000_0201_0000_0009;
    let prepared = serde_json::json!({
        "type": "PreparedTransfer", "debtor_id": DEBTOR, "creditor_id": theirs,
        "coordinator_type": "agent", "coordinator_id": coordinator, "coordinator_request_id": 3
    });
    let m = take(&ca, &aa, &prepared).expect("taken");
    let our_coordinator: i64 = 0x0000_0101_0000_0009;
    assert_eq!(m.routing_key, routing_key(&[our_coordinator]));
    assert_eq!(json(&m)["coordinator_id"], our_coordinator);
    assert_eq!(json(&m)["creditor_id"], ours);
    assert_eq!(header(&m, "ca-creditors"), Some("false"));
    assert_eq!(header(&m, "ca-trade"), Some("true"));
    assert_eq!(
        header(&m, "coordinator-id"),
        Some(our_coordinator.to_string().as_str())
    );
    // An account transfer an agent coordinated notifies the trade side too.
    let transfer = serde_json::json!({
        "type": "AccountTransfer", "debtor_id": DEBTOR, "creditor_id": theirs, "coordinator_type": "agent"
    });
    let m = take(&ca, &aa, &transfer).expect("taken");
    assert_eq!(header(&m, "ca-creditors"), Some("true"));
    assert_eq!(header(&m, "ca-trade"), Some("true"));
    assert_eq!(
        header(&m, "coordinator-id"),
        None,
        "it has no coordinator id"
    );
    // Requests are an authority's to take, and ids outside what the peer speaks for are refused.
    let request =
        serde_json::json!({"type": "ConfigureAccount", "debtor_id": DEBTOR, "creditor_id": theirs});
    assert!(take(&ca, &aa, &request).is_err());
    let outside = update(0x0000_0101_0000_0005);
    assert!(take(&ca, &aa, &outside).is_err());
}

#[test]
fn a_debtors_agent_takes_issuing_transfers_of_its_debtors_routed_by_debtor() {
    let da = node(
        NodeType::DebtorsAgent,
        DA_ID,
        Subnet::ZERO,
        subnet("1234abcd00"),
    );
    let aa = peer(
        NodeType::AccountingAuthority,
        AA_ID,
        Subnet::ZERO,
        subnet("1234abcd00"),
    );
    let debtor: i64 = 0x1234_abcd_0000_0001;
    let issuing = |creditor: i64, kind: &str, coordinator: i64| {
        serde_json::json!({
            "type": "FinalizedTransfer", "debtor_id": debtor, "creditor_id": creditor,
            "coordinator_type": kind, "coordinator_id": coordinator
        })
        .to_string()
    };
    let m = check_inbound(
        &da,
        &aa,
        "FinalizedTransfer",
        "application/json",
        issuing(0, "issuing", debtor).as_bytes(),
    )
    .expect("taken");
    assert_eq!(m.routing_key, routing_key(&[debtor]));
    assert_eq!(header(&m, "ca-trade"), None);
    let refused = |body: String| {
        check_inbound(
            &da,
            &aa,
            "FinalizedTransfer",
            "application/json",
            body.as_bytes(),
        )
    };
    assert_eq!(
        refused(issuing(0, "direct", 0)).expect_err("refused").0,
        "Invalid coordinator type: direct."
    );
    assert_eq!(
        refused(issuing(0, "issuing", debtor + 1))
            .expect_err("refused")
            .0,
        "Invalid coordinator ID."
    );
    assert!(
        refused(issuing(5, "issuing", debtor)).is_err(),
        "creditor 0 only"
    );
}
