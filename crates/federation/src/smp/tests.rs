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

/// This node's clock in the tests: 2026-12-07T00:00:00Z.
const NOW_MS: i64 = 1_796_601_600_000;

/// A message as a frame carries it: the type its body says, and the body.
fn framed(body: &Value) -> (&str, Vec<u8>) {
    let message_type = body["type"].as_str().expect("a type");
    (message_type, body.to_string().into_bytes())
}

/// What `owner` does with `body` from `peer`, sent as JSON of the type the body says.
fn take(owner: &NodeData, peer: &PeerData, body: &Value) -> Result<Inbound, Refusal> {
    let (message_type, bytes) = framed(body);
    check_inbound(
        owner,
        peer,
        message_type,
        "application/json",
        &bytes,
        NOW_MS,
    )
}

/// A whole, valid message of type `message_type` with `fields` set over the defaults.
fn message(message_type: &str, fields: Value) -> Value {
    let ts = "2026-12-06T23:59:00+00:00";
    let mut m = serde_json::json!({
        "type": message_type, "debtor_id": DEBTOR, "creditor_id": 0, "ts": ts,
    });
    let own = match message_type {
        "ConfigureAccount" => serde_json::json!({
            "negligible_amount": 0.0, "config_data": "", "config_flags": 0, "seqnum": 1
        }),
        "RejectedConfig" => serde_json::json!({
            "config_ts": ts, "config_seqnum": 1, "config_flags": 0, "config_data": "",
            "negligible_amount": 1e30, "rejection_code": "NO_CONNECTION"
        }),
        "PrepareTransfer" => serde_json::json!({
            "coordinator_type": "direct", "coordinator_id": 0, "coordinator_request_id": 1,
            "min_locked_amount": 0, "max_locked_amount": 10, "recipient": "acc",
            "final_interest_rate_ts": ts, "max_commit_delay": 100
        }),
        "FinalizeTransfer" => serde_json::json!({
            "coordinator_type": "direct", "coordinator_id": 0, "coordinator_request_id": 1,
            "transfer_id": 5, "committed_amount": 10, "transfer_note_format": "",
            "transfer_note": ""
        }),
        "RejectedTransfer" => serde_json::json!({
            "coordinator_type": "direct", "coordinator_id": 0, "coordinator_request_id": 1,
            "status_code": "TIMEOUT", "total_locked_amount": 0
        }),
        "PreparedTransfer" => serde_json::json!({
            "coordinator_type": "direct", "coordinator_id": 0, "coordinator_request_id": 1,
            "transfer_id": 5, "locked_amount": 10, "recipient": "acc", "prepared_at": ts,
            "demurrage_rate": -50.0, "deadline": ts, "final_interest_rate_ts": ts
        }),
        "FinalizedTransfer" => serde_json::json!({
            "coordinator_type": "direct", "coordinator_id": 0, "coordinator_request_id": 1,
            "transfer_id": 5, "committed_amount": 10, "status_code": "OK",
            "total_locked_amount": 0, "prepared_at": ts
        }),
        "AccountUpdate" => serde_json::json!({
            "creation_date": "2026-01-31", "last_change_ts": ts, "last_change_seqnum": 1,
            "principal": 1000, "interest": -1.5, "interest_rate": 2.0,
            "last_interest_rate_change_ts": ts, "last_config_ts": ts, "last_config_seqnum": 1,
            "negligible_amount": 0, "config_flags": 0, "config_data": "", "account_id": "",
            "debtor_info_iri": "", "debtor_info_content_type": "", "debtor_info_sha256": "",
            "last_transfer_number": 0, "last_transfer_committed_at": ts,
            "demurrage_rate": -50.0, "commit_period": 1000, "transfer_note_max_bytes": 500,
            "ttl": 10000
        }),
        "AccountPurge" => serde_json::json!({"creation_date": "2026-01-31"}),
        "AccountTransfer" => serde_json::json!({
            "coordinator_type": "direct", "transfer_note_format": "", "transfer_note": "",
            "creation_date": "2026-01-31", "transfer_number": 2, "sender": "a",
            "recipient": "b", "acquired_amount": 5, "committed_at": ts, "principal": 5,
            "previous_transfer_number": 1
        }),
        other => panic!("no type {other}"),
    };
    for (k, v) in own
        .as_object()
        .expect("object")
        .iter()
        .chain(fields.as_object().expect("object"))
    {
        m[k.as_str()] = v.clone();
    }
    m
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
    let body = message(
        "PrepareTransfer",
        serde_json::json!({"creditor_id": creditor, "coordinator_id": creditor, "extra": "kept"}),
    );
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
        check_inbound(&aa, &ca, t, ct, body.to_string().as_bytes(), NOW_MS)
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
        b"{not json",
        NOW_MS
    )
    .is_err());
    assert!(check_inbound(
        &aa,
        &ca,
        "PrepareTransfer",
        "application/json",
        b"[1]",
        NOW_MS
    )
    .is_err());
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
    let update = |creditor: i64| {
        message(
            "AccountUpdate",
            serde_json::json!({"creditor_id": creditor}),
        )
    };
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
    let prepared = message(
        "PreparedTransfer",
        serde_json::json!({
            "creditor_id": theirs, "coordinator_type": "agent", "coordinator_id": coordinator
        }),
    );
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
    let transfer = message(
        "AccountTransfer",
        serde_json::json!({"creditor_id": theirs, "coordinator_type": "agent"}),
    );
    let m = take(&ca, &aa, &transfer).expect("taken");
    assert_eq!(header(&m, "ca-creditors"), Some("true"));
    assert_eq!(header(&m, "ca-trade"), Some("true"));
    assert_eq!(
        header(&m, "coordinator-id"),
        None,
        "it has no coordinator id"
    );
    // Requests are an authority's to take, and ids outside what the peer speaks for are refused.
    let request = message(
        "ConfigureAccount",
        serde_json::json!({"creditor_id": theirs}),
    );
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
        message(
            "FinalizedTransfer",
            serde_json::json!({
                "debtor_id": debtor, "creditor_id": creditor,
                "coordinator_type": kind, "coordinator_id": coordinator
            }),
        )
        .to_string()
    };
    let m = check_inbound(
        &da,
        &aa,
        "FinalizedTransfer",
        "application/json",
        issuing(0, "issuing", debtor).as_bytes(),
        NOW_MS,
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
            NOW_MS,
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

/// Every message type: what an authority takes, and what agents take.
fn types() -> impl Iterator<Item = &'static str> {
    IN_MESSAGE_TYPES.into_iter().chain(OUT_MESSAGE_TYPES)
}

fn check(m: &Value) -> Result<(), String> {
    let t = m["type"].as_str().expect("a type");
    super::fields::check_fields(t, m.as_object().expect("object"))
}

#[test]
fn every_field_of_every_type_is_required() {
    for t in types() {
        let whole = message(t, serde_json::json!({}));
        check(&whole).unwrap_or_else(|e| panic!("{t}: {e}"));
        for field in whole
            .as_object()
            .expect("object")
            .keys()
            .filter(|k| *k != "type")
        {
            let mut m = whole.clone();
            m.as_object_mut().expect("object").remove(field);
            assert_eq!(check(&m), Err(format!("{field} is missing")), "{t}");
        }
    }
}

#[test]
fn fields_out_of_their_limits_are_refused() {
    let config = "é".repeat(1001);
    let refused = [
        (
            "ConfigureAccount",
            serde_json::json!({"config_data": config}),
            "config_data is invalid",
        ),
        (
            "ConfigureAccount",
            serde_json::json!({"negligible_amount": -0.5}),
            "negligible_amount is invalid",
        ),
        (
            "ConfigureAccount",
            serde_json::json!({"seqnum": 1i64 << 31}),
            "seqnum is invalid",
        ),
        (
            "ConfigureAccount",
            serde_json::json!({"seqnum": "1"}),
            "seqnum is invalid",
        ),
        (
            "ConfigureAccount",
            serde_json::json!({"seqnum": 1.5}),
            "seqnum is invalid",
        ),
        (
            "ConfigureAccount",
            serde_json::json!({"ts": "2026-13-01T00:00:00Z"}),
            "ts is invalid",
        ),
        (
            "RejectedConfig",
            serde_json::json!({"rejection_code": "ÉCHEC"}),
            "rejection_code is invalid",
        ),
        (
            "PrepareTransfer",
            serde_json::json!({"min_locked_amount": 11}),
            "max_locked_amount must be at least min_locked_amount",
        ),
        (
            "PrepareTransfer",
            serde_json::json!({"coordinator_type": ""}),
            "coordinator_type is invalid",
        ),
        (
            "PrepareTransfer",
            serde_json::json!({"recipient": "x".repeat(101)}),
            "recipient is invalid",
        ),
        (
            "FinalizeTransfer",
            serde_json::json!({"transfer_note_format": "a_b"}),
            "transfer_note_format is invalid",
        ),
        (
            "FinalizeTransfer",
            serde_json::json!({"transfer_note_format": "123456789"}),
            "transfer_note_format is invalid",
        ),
        (
            "FinalizeTransfer",
            serde_json::json!({"transfer_note": "€".repeat(167)}),
            "transfer_note is invalid",
        ),
        (
            "FinalizeTransfer",
            serde_json::json!({"committed_amount": -1}),
            "committed_amount is invalid",
        ),
        (
            "RejectedTransfer",
            serde_json::json!({"status_code": "OK"}),
            "status_code cannot be OK",
        ),
        (
            "PreparedTransfer",
            serde_json::json!({"demurrage_rate": 0.5}),
            "demurrage_rate is invalid",
        ),
        (
            "FinalizedTransfer",
            serde_json::json!({"status_code": "TIMEOUT"}),
            "committed_amount must be 0 unless status_code is OK",
        ),
        (
            "AccountUpdate",
            serde_json::json!({"debtor_info_sha256": "aB".repeat(32)}),
            "debtor_info_sha256 is invalid",
        ),
        (
            "AccountUpdate",
            serde_json::json!({"creation_date": "2026-02-29"}),
            "creation_date is invalid",
        ),
        (
            "AccountUpdate",
            serde_json::json!({"transfer_note_max_bytes": 501}),
            "transfer_note_max_bytes is invalid",
        ),
        (
            "AccountUpdate",
            serde_json::json!({"interest_rate": -100.5}),
            "interest_rate is invalid",
        ),
        (
            "AccountTransfer",
            serde_json::json!({"acquired_amount": 0}),
            "acquired_amount cannot be 0",
        ),
        (
            "AccountTransfer",
            serde_json::json!({"previous_transfer_number": 2}),
            "transfer_number must be past previous_transfer_number",
        ),
        (
            "AccountTransfer",
            serde_json::json!({"transfer_number": 0}),
            "transfer_number is invalid",
        ),
    ];
    for (t, fields, error) in refused {
        assert_eq!(
            check(&message(t, fields.clone())),
            Err(error.to_owned()),
            "{t} {fields}"
        );
    }
    let taken = [
        (
            "ConfigureAccount",
            serde_json::json!({"config_data": "é".repeat(1000)}),
        ),
        (
            "ConfigureAccount",
            serde_json::json!({"negligible_amount": 3}),
        ),
        (
            "FinalizeTransfer",
            serde_json::json!({"transfer_note_format": "json.v-1", "transfer_note": "€".repeat(166)}),
        ),
        (
            "FinalizedTransfer",
            serde_json::json!({"status_code": "TIMEOUT", "committed_amount": 0}),
        ),
        (
            "AccountUpdate",
            serde_json::json!({"debtor_info_sha256": "AB".repeat(32), "creation_date": "2024-2-29"}),
        ),
        (
            "AccountTransfer",
            serde_json::json!({"acquired_amount": -5, "unknown": [1, 2]}),
        ),
    ];
    for (t, fields) in taken {
        check(&message(t, fields.clone())).unwrap_or_else(|e| panic!("{t} {fields}: {e}"));
    }
}

#[test]
fn dates_and_times_read_as_the_protocol_writes_them() {
    use super::fields::{parse_date, parse_datetime};
    let base = 1_796_601_600_000; // 2026-12-07T00:00:00Z
    let cases = [
        ("2026-12-07T00:00:00Z", Some((base, true))),
        ("2026-12-07T00:00:00+00:00", Some((base, true))),
        ("2026-12-07T02:00:00+02:00", Some((base, true))),
        ("2026-12-06T23:30:00-0030", Some((base, true))),
        ("2026-12-07 00:00", Some((base, false))),
        ("2026-12-07T00:00:00.123456789Z", Some((base + 123, true))),
        ("2026-12-7T0:0:1.5Z", Some((base + 1500, true))),
        ("1970-01-01T00:00:00Z", Some((0, true))),
        ("2026-12-07", None),
        ("2026-12-07T24:00:00Z", None),
        ("2026-12-07T00:00:00.Z", None),
        ("2026-12-07T00:00:00+2", None),
        ("2026-12-07T00:00:00 Z", None),
        ("26-12-07T00:00:00Z", None),
    ];
    for (text, want) in cases {
        assert_eq!(parse_datetime(text), want, "{text}");
    }
    assert_eq!(parse_date("1970-01-01"), Some(0));
    assert_eq!(parse_date("2000-02-29"), Some(11_016));
    assert_eq!(parse_date("1900-02-29"), None);
    assert_eq!(parse_date("2026-12-07T00:00"), None);
}

#[test]
fn a_timestamp_more_than_two_hours_ahead_or_without_an_offset_is_refused() {
    let (aa, ca) = authority();
    let at = |ts: &str| {
        let creditor: i64 = 0x0000_0200_0000_0001;
        message(
            "PrepareTransfer",
            serde_json::json!({"creditor_id": creditor, "coordinator_id": creditor, "ts": ts}),
        )
    };
    assert!(take(&aa, &ca, &at("2026-12-07T01:59:59Z")).is_ok());
    assert_eq!(
        take(&aa, &ca, &at("2026-12-07T02:00:01Z"))
            .expect_err("refused")
            .0,
        "The message timestamp is 7201 seconds in the future."
    );
    assert_eq!(
        take(&aa, &ca, &at("2026-12-07T00:00:00"))
            .expect_err("refused")
            .0,
        "Invalid PrepareTransfer message."
    );
}

/// What `owner` sends `peer` of `body`, queued as JSON of the type the body says.
fn send(owner: &NodeData, peer: &PeerData, body: &Value) -> Result<Outbound, Refusal> {
    let (message_type, bytes) = framed(body);
    check_outbound(owner, peer, message_type, "application/json", &bytes)
}

#[test]
fn a_creditors_agent_sends_its_requests_with_its_creditors_as_the_authority_knows_them() {
    let (ca, aa) = agent();
    let ours: i64 = 0x0000_0101_0000_0005;
    let theirs: i64 = 0x0000_0201_0000_0005;
    let request = message(
        "PrepareTransfer",
        serde_json::json!({"creditor_id": ours, "coordinator_type": "agent", "coordinator_id": ours + 1}),
    );
    let out = send(&ca, &aa, &request).expect("sent");
    let body: Value = serde_json::from_slice(&out.body).expect("JSON");
    assert_eq!(body["creditor_id"], theirs);
    assert_eq!(body["coordinator_id"], theirs + 1);
    assert_eq!(
        body["recipient"], request["recipient"],
        "the rest as queued"
    );
    // What the authority does with it gives back our ids: a round trip.
    let (aa_node, ca_peer) = authority();
    let seen = take(&aa_node, &ca_peer, &body).expect("taken by the authority");
    assert_eq!(
        header(&seen, "creditor-id"),
        Some(theirs.to_string().as_str())
    );
    // Only requests go to an authority, and only our creditors.
    let answer = message("AccountUpdate", serde_json::json!({"creditor_id": ours}));
    assert_eq!(
        send(&ca, &aa, &answer).expect_err("refused").0,
        "Invalid message type: AccountUpdate."
    );
    let stranger = message(
        "ConfigureAccount",
        serde_json::json!({"creditor_id": theirs}),
    );
    assert_eq!(
        send(&ca, &aa, &stranger).expect_err("refused").0,
        "Invalid creditor ID: 0x0000020100000005."
    );
    let other_debtor = message(
        "ConfigureAccount",
        serde_json::json!({"creditor_id": ours, "debtor_id": 7}),
    );
    assert_eq!(
        send(&ca, &aa, &other_debtor).expect_err("refused").0,
        "Invalid debtor ID: 0x0000000000000007."
    );
}

#[test]
fn an_accounting_authority_sends_its_answers_unchanged() {
    let (aa, ca) = authority();
    let creditor: i64 = 0x0000_0200_0000_0001;
    let answer = message(
        "AccountUpdate",
        serde_json::json!({"creditor_id": creditor}),
    );
    let out = send(&aa, &ca, &answer).expect("sent");
    assert_eq!(
        serde_json::from_slice::<Value>(&out.body).expect("JSON"),
        answer
    );
    let request = message(
        "ConfigureAccount",
        serde_json::json!({"creditor_id": creditor}),
    );
    assert!(
        send(&aa, &ca, &request).is_err(),
        "requests are the agents' to send"
    );
    let outside = message(
        "AccountUpdate",
        serde_json::json!({"creditor_id": 0x0000_0300_0000_0001i64}),
    );
    assert!(
        send(&aa, &ca, &outside).is_err(),
        "not this agent's creditor"
    );
}
