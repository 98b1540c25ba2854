use super::*;

const CA_ID: &str = "060791aeca7637fa3357dfc0299fb4c5";
const DA_ID: &str = "5921983fe0e6eb987aeedca54ad3c708";
const AA_ID: &str = "1234abcd";

/// A made-up certificate block (only its text is read here), with `tag` in it.
fn pem(tag: &str) -> String {
    format!("-----BEGIN CERTIFICATE-----\nMIIB{tag}\nQUJD\n-----END CERTIFICATE-----\n")
}

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

const STOMP_TOML: &str = r#"
servers = ["server1.example.com:1234", "127.0.0.1:61613", "127.0.0.1:61613"]
host = "/"
login = "login-${NODE_ID}"
passcode = "secret ${NODE_ID}"
destination = "/exchange/${NODE_ID}"
accepted-content-types = ["text/plain"]
"#;

/// A creditors agent's database in a new directory: the directory, and the database.
fn creditors_agent() -> (tempfile::TempDir, NodeDatabase) {
    let dir = tempfile::tempdir().expect("tempdir");
    write_creditors_agent(dir.path());
    let db = NodeDatabase::new(dir.path());
    (dir, db)
}

/// A creditors agent with one accounting authority as peer, files written the ways the
/// database allows (line ends of each kind, text around certificates).
fn write_creditors_agent(root: &Path) {
    write(root, "root-ca.crt", &format!("Our root\n{}", pem("OURS")));
    write(root, "db/nodeid", &format!("{CA_ID}\r\n"));
    write(root, "db/nodetype", "Creditors Agents");
    write(root, "creditors-subnet.txt", "0000010000\n");
    let peer = format!("peers/{AA_ID}");
    write(root, &format!("{peer}/ACTIVE"), "");
    write(root, &format!("{peer}/root-ca.crt"), &pem("THEIRS"));
    write(
        root,
        &format!("{peer}/sub-ca.crt"),
        &format!("Subject: ...\n{}{}", pem("SUB"), pem("SECOND")),
    );
    write(
        root,
        &format!("{peer}/nodetype.txt"),
        "Accounting Authorities\n",
    );
    write(root, &format!("{peer}/nodeinfo/stomp.toml"), STOMP_TOML);
    write(root, &format!("{peer}/masq-subnet.txt"), "0000020000");
}

#[test]
fn a_creditors_agent_reads_itself_and_its_accounting_authority() {
    let (dir, db) = creditors_agent();
    let node = db.node().expect("node");
    assert_eq!(node.node_type, NodeType::CreditorsAgent);
    assert_eq!(node.node_id, CA_ID, "the \\r\\n is not part of it");
    assert_eq!(
        node.root_cert,
        pem("OURS"),
        "the text before the block is not"
    );
    assert_eq!(
        node.creditors_subnet,
        Subnet::parse("0000010000").expect("valid")
    );
    assert_eq!(node.debtors_subnet, Subnet::ALL);
    assert_eq!(node.node_type.inbound_exchange(), "creditors_in");

    let peer = db.peer(AA_ID, true).expect("readable").expect("active");
    assert!(peer.active && !peer.deactivated);
    assert_eq!(peer.node_type, NodeType::AccountingAuthority);
    assert_eq!(peer.sub_cert, pem("SUB"), "the first block only");
    assert_eq!(peer.root_cert, pem("THEIRS"));
    assert_eq!(
        peer.creditors_subnet,
        Subnet::parse("0000020000").expect("valid")
    );
    assert_eq!(peer.debtors_subnet, Subnet::parse(AA_ID).expect("valid"));
    let stomp = &peer.stomp;
    assert_eq!(
        stomp.servers,
        vec![
            ("server1.example.com".to_owned(), 1234),
            ("127.0.0.1".to_owned(), 61613),
            ("127.0.0.1".to_owned(), 61613),
        ]
    );
    assert_eq!(stomp.host, "/");
    assert_eq!(
        stomp.destination,
        format!("/exchange/{CA_ID}"),
        "our id, not theirs"
    );
    assert_eq!(
        stomp.login.as_deref(),
        Some(format!("login-{CA_ID}").as_str())
    );
    assert_eq!(
        stomp.passcode.as_deref(),
        Some("secret ${NODE_ID}"),
        "the passcode is taken as written"
    );
    assert_eq!(
        stomp.accepted_content_types,
        ["text/plain", "application/json"]
    );
    // Our creditors as the peer knows them, and back.
    let ours = 0x0000_0100_0000_0042;
    let theirs = node
        .creditors_subnet
        .translate(ours, &peer.creditors_subnet)
        .expect("in our subnet");
    assert_eq!(theirs, 0x0000_0200_0000_0042);
    assert_eq!(db.peer_ids().expect("listed"), [AA_ID]);
    // swpt_stomp's form of the location.
    let url = format!("file://{}", dir.path().display());
    assert_eq!(NodeDatabase::new(&url).node().expect("node"), node);
}

#[test]
fn only_a_peer_with_active_and_without_deactivated_is_active() {
    let (dir, db) = creditors_agent();
    let root = dir.path();
    let peer_dir = root.join("peers").join(AA_ID);
    std::fs::remove_file(peer_dir.join("ACTIVE")).expect("rm");
    assert_eq!(db.peer(AA_ID, true).expect("readable"), None);
    let listed = db.peer(AA_ID, false).expect("readable").expect("listed");
    assert!(!listed.active && !listed.deactivated);
    write(root, &format!("peers/{AA_ID}/ACTIVE"), "");
    write(root, &format!("peers/{AA_ID}/DEACTIVATED"), "");
    assert_eq!(
        db.peer(AA_ID, true).expect("readable"),
        None,
        "DEACTIVATED wins"
    );
    let listed = db.peer(AA_ID, false).expect("readable").expect("listed");
    assert!(!listed.active && listed.deactivated);
    std::fs::remove_file(peer_dir.join("DEACTIVATED")).expect("rm");
    assert!(
        db.peer(AA_ID, true).expect("readable").is_some(),
        "read again each time"
    );
    // No sub-ca.crt: not a peer (yet).
    std::fs::remove_file(peer_dir.join("sub-ca.crt")).expect("rm");
    assert_eq!(db.peer(AA_ID, false).expect("readable"), None);
    // Unknown, and never a path.
    assert_eq!(db.peer("abcdef01", false).expect("readable"), None);
    for bad in ["../peers/1234abcd", "1234ABCD", "1234abc", "", "1234abcd/"] {
        assert_eq!(db.peer(bad, false).expect("no error"), None, "{bad:?}");
    }
}

#[test]
fn an_accounting_authority_gives_its_agents_the_subnets_listed_for_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(root, "root-ca.crt", &pem("AA"));
    write(root, "db/nodeid", &format!("{AA_ID}\n"));
    write(root, "db/nodetype", "Accounting Authorities\n");
    for (id, kind, subnet) in [
        (CA_ID, "Creditors Agents", "0000020000"),
        (DA_ID, "Debtors Agents", "1234abcd00"),
    ] {
        let peer = format!("peers/{id}");
        write(root, &format!("{peer}/ACTIVE"), "");
        write(root, &format!("{peer}/root-ca.crt"), &pem("ROOT"));
        write(root, &format!("{peer}/sub-ca.crt"), &pem("SUB"));
        write(root, &format!("{peer}/nodetype.txt"), kind);
        write(root, &format!("{peer}/nodeinfo/stomp.toml"), STOMP_TOML);
        write(root, &format!("{peer}/subnet.txt"), subnet);
    }
    write(root, "peers/not-a-node/ACTIVE", "");
    let db = NodeDatabase::new(root);
    let node = db.node().expect("node");
    assert_eq!(node.creditors_subnet, Subnet::ALL);
    assert_eq!(node.debtors_subnet, Subnet::parse(AA_ID).expect("valid"));
    assert_eq!(node.node_type.inbound_exchange(), "accounts_in");
    let ca = db.peer(CA_ID, true).expect("readable").expect("active");
    assert_eq!(
        ca.creditors_subnet,
        Subnet::parse("0000020000").expect("valid")
    );
    assert_eq!(ca.debtors_subnet, node.debtors_subnet);
    let da = db.peer(DA_ID, true).expect("readable").expect("active");
    assert_eq!(da.creditors_subnet, Subnet::ZERO);
    assert_eq!(
        da.debtors_subnet,
        Subnet::parse("1234abcd00").expect("valid")
    );
    let mut ids = vec![CA_ID.to_owned(), DA_ID.to_owned()];
    ids.sort();
    assert_eq!(db.peer_ids().expect("listed"), ids, "only node ids");
}

#[test]
fn what_the_protocol_does_not_allow_is_refused_with_the_file_named() {
    let (dir, db) = creditors_agent();
    let root = dir.path();
    let refused = |needle: &str| {
        let e = db.peer(AA_ID, true).expect_err("refused").to_string();
        assert!(e.contains(needle), "{e}");
    };
    let peer = format!("peers/{AA_ID}");
    // A subnet to masquerade into that is not as long as ours.
    write(root, &format!("{peer}/masq-subnet.txt"), "00000200");
    refused("masq-subnet.txt");
    write(root, &format!("{peer}/masq-subnet.txt"), "0000020000");
    // A creditors agent peers with accounting authorities only.
    write(root, &format!("{peer}/nodetype.txt"), "Debtors Agents");
    refused("nodetype.txt");
    write(
        root,
        &format!("{peer}/nodetype.txt"),
        "Accounting authorities",
    );
    refused("invalid node type");
    write(
        root,
        &format!("{peer}/nodetype.txt"),
        "Accounting Authorities",
    );
    for (toml, what) in [
        (
            "servers = []\nhost = \"/\"\ndestination = \"/q\"",
            "servers is empty",
        ),
        (
            "servers = [\"h:0\"]\nhost = \"/\"\ndestination = \"/q\"",
            "invalid port",
        ),
        (
            "servers = [\"h:+80\"]\nhost = \"/\"\ndestination = \"/q\"",
            "invalid port",
        ),
        (
            "servers = [\"-h:80\"]\nhost = \"/\"\ndestination = \"/q\"",
            "invalid host",
        ),
        (
            "servers = [\"h\"]\nhost = \"/\"\ndestination = \"/q\"",
            "host:port",
        ),
        (
            "servers = [\"h:80\"]\ndestination = \"/q\"",
            "host is missing",
        ),
        (
            "servers = [\"h:80\"]\nhost = 1\ndestination = \"/q\"",
            "host must be",
        ),
        ("servers = [\"h:80\"\n", "not TOML"),
    ] {
        write(root, &format!("{peer}/nodeinfo/stomp.toml"), toml);
        refused(what);
    }
    write(root, &format!("{peer}/nodeinfo/stomp.toml"), STOMP_TOML);
    write(
        root,
        &format!("{peer}/root-ca.crt"),
        "no certificate here\n",
    );
    refused("no PEM certificate");
    write(root, &format!("{peer}/root-ca.crt"), &pem("OK"));
    assert!(db.peer(AA_ID, true).expect("readable").is_some());
    // Our own id must be as long as our type says.
    write(root, "db/nodeid", AA_ID);
    let e = db.node().expect_err("refused").to_string();
    assert!(e.contains("db/nodeid"), "{e}");
}

#[test]
fn pem_blocks_are_found_whole_and_alone() {
    let block = pem("X");
    assert_eq!(first_pem_certificate(&block), Some(block.as_str()));
    let no_end_newline = block.trim_end();
    assert_eq!(first_pem_certificate(no_end_newline), Some(no_end_newline));
    let crlf = block.replace('\n', "\r\n");
    assert_eq!(first_pem_certificate(&crlf), Some(crlf.as_str()));
    let text = format!("comment -----BEGIN CERTIFICATE-----\n{block}trailing words\n");
    assert_eq!(first_pem_certificate(&text), Some(block.as_str()));
    assert_eq!(
        first_pem_certificate("-----BEGIN CERTIFICATE-----\nAB-C\n-----END CERTIFICATE-----\n"),
        None
    );
    assert_eq!(
        first_pem_certificate("-----BEGIN CERTIFICATE-----\nABC\n"),
        None
    );
    assert_eq!(first_pem_certificate(""), None);
}
