//! Writes a three-node federation (an accounting authority, a creditors agent and a
//! debtors agent: `trunkline_testkit::federation::triangle`) into a directory, each
//! peer's `stomp.toml` pointing at `127.0.0.1:<that peer's port>`, and prints where
//! everything is: for interoperability runs against the original `swpt_stomp`.
//!
//! `cargo run -p trunkline-testkit --example federation_nodes -- DIR PORT_AA PORT_CA PORT_DA`

use std::path::PathBuf;

use trunkline_testkit::federation::{triangle, AUTHORITY_ID, CREDITORS_AGENT_ID, DEBTORS_AGENT_ID};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: federation_nodes DIR PORT_AA PORT_CA PORT_DA";
    let [dir, ports @ ..] = args.as_slice() else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let ports: Vec<u16> = ports
        .iter()
        .map(|p| p.parse().ok().filter(|p| *p > 0))
        .collect::<Option<_>>()
        .filter(|p: &Vec<u16>| p.len() == 3)
        .unwrap_or_else(|| {
            eprintln!("{usage}");
            std::process::exit(2);
        });
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("create DIR");
    let dir = dir.canonicalize().expect("DIR");
    let fed = triangle(&dir);
    for (id, port) in [AUTHORITY_ID, CREDITORS_AGENT_ID, DEBTORS_AGENT_ID]
        .into_iter()
        .zip(ports)
    {
        fed.set_node_servers(id, &[format!("127.0.0.1:{port}")]);
        let n = fed.node(id);
        println!("# {} {} (port {port})", n.kind.as_str(), n.id);
        println!("SWPT_NODEDATA_URL=file://{}", n.nodedata.display());
        println!("SWPT_SERVER_CERT={}", n.cert.display());
        println!("SWPT_SERVER_KEY={}", n.key.display());
        println!("SWPT_SERVER_PORT={port}");
        println!();
    }
}
