//! What the other nodes of a cluster hold, as this node last heard it: the members of
//! their channels, the RPC servers and the client functions of their sessions.
//!
//! A node sends its changes numbered, in order. A change that comes in order is applied; a
//! gap (a change lost while the bus was down, or dropped under load) makes the receiver
//! ask for the sender's whole holdings, which replace what it knew. A node heard from
//! for the first time is asked too. A node not heard from (changes or beats) for the
//! timeout is gone: its members leave and the calls to it end. Time is an argument.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::bus::{Change, Crossing, Holdings};
use crate::MemberInfo;

/// What a presence change means for this node's sessions.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Joined { channel: String, member: MemberInfo },
    Left { channel: String, member: MemberInfo },
}

/// What to do after a crossing was taken in.
#[derive(Debug, Default, PartialEq)]
pub struct Taken {
    /// Presence changes to tell this node's sessions, in order.
    pub effects: Vec<Effect>,
    /// Ask the sender for its holdings.
    pub ask: bool,
    /// Send the sender this node's holdings.
    pub answer: bool,
}

struct Peer {
    seq: u64,
    heard: Instant,
    /// Whether `holdings` is whole: false until the first holdings came, and after a gap.
    whole: bool,
    asked: Option<Instant>,
    holdings: Holdings,
}

/// The other nodes, by origin.
#[derive(Default)]
pub struct Peers {
    nodes: HashMap<String, Peer>,
    /// Turns of the RPC calls handed to other nodes.
    turn: usize,
}

/// How long to wait for asked holdings before asking again.
const ASK_AGAIN: Duration = Duration::from_secs(2);

impl Peers {
    /// Takes in a holdings-related crossing from node `from` at `now` (messages and calls
    /// are not for this table, but count as heard).
    pub fn take(&mut self, from: &str, c: &Crossing, now: Instant) -> Taken {
        let peer = self.nodes.entry(from.to_owned()).or_insert_with(|| Peer {
            seq: 0,
            heard: now,
            whole: false,
            asked: None,
            holdings: Holdings::default(),
        });
        peer.heard = now;
        let mut taken = Taken::default();
        match c {
            Crossing::Change { seq, change } if peer.whole && *seq == peer.seq + 1 => {
                peer.seq = *seq;
                apply(&mut peer.holdings, change, &mut taken.effects);
            }
            Crossing::Change { seq, .. } | Crossing::Beat { seq }
                if !peer.whole || *seq > peer.seq =>
            {
                peer.whole = false;
                taken.ask = peer.asked.is_none_or(|at| now >= at + ASK_AGAIN);
                if taken.ask {
                    peer.asked = Some(now);
                }
            }
            Crossing::Holdings { seq, holdings, ask } => {
                replace(&mut peer.holdings, holdings, &mut taken.effects);
                peer.seq = *seq;
                peer.whole = true;
                peer.asked = None;
                taken.answer = *ask;
            }
            Crossing::Ask => taken.answer = true,
            _ => {}
        }
        taken
    }

    /// Forgets the nodes not heard from within `timeout` of `now`: their origins, and
    /// their members' leaving.
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> (Vec<String>, Vec<Effect>) {
        let gone: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.heard) >= timeout)
            .map(|(o, _)| o.clone())
            .collect();
        let mut effects = Vec::new();
        for origin in &gone {
            if let Some(p) = self.nodes.remove(origin) {
                replace_members(&p.holdings, &Holdings::default(), &mut effects);
            }
        }
        (gone, effects)
    }

    /// The members of `channel` on other nodes.
    pub fn members(&self, channel: &str) -> Vec<MemberInfo> {
        self.nodes
            .values()
            .filter_map(|p| p.holdings.members.get(channel))
            .flatten()
            .cloned()
            .collect()
    }

    pub fn is_member(&self, channel: &str, session_id: &str) -> bool {
        self.nodes.values().any(|p| {
            p.holdings
                .members
                .get(channel)
                .is_some_and(|m| m.iter().any(|m| m.session_id == session_id))
        })
    }

    /// The members of every system channel on other nodes.
    pub fn system_members(&self) -> HashMap<String, Vec<MemberInfo>> {
        let mut all: HashMap<String, Vec<MemberInfo>> = HashMap::new();
        for p in self.nodes.values() {
            for (channel, members) in &p.holdings.members {
                if crate::names::is_system(channel) {
                    all.entry(channel.clone())
                        .or_default()
                        .extend(members.iter().cloned());
                }
            }
        }
        all
    }

    /// A node one of whose sessions serves `function` under `server`, taken in turn.
    pub fn server_node(&mut self, server: &str, function: &str) -> Option<String> {
        let mut serving: Vec<&String> = self
            .nodes
            .iter()
            .filter(|(_, p)| {
                p.holdings
                    .servers
                    .get(server)
                    .is_some_and(|f| f.contains(function))
            })
            .map(|(o, _)| o)
            .collect();
        if serving.is_empty() {
            return None;
        }
        serving.sort();
        self.turn = self.turn.wrapping_add(1);
        Some(serving[self.turn % serving.len()].clone())
    }

    /// The node of session `session_id`, if that session exposes `function`.
    pub fn session_node(&self, session_id: &str, function: &str) -> Option<String> {
        self.nodes
            .iter()
            .find(|(_, p)| {
                p.holdings
                    .exposed
                    .get(session_id)
                    .is_some_and(|f| f.contains(function))
            })
            .map(|(o, _)| o.clone())
    }

    /// The nodes heard from.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

fn apply(h: &mut Holdings, change: &Change, effects: &mut Vec<Effect>) {
    match change {
        Change::Joined { channel, member } => {
            let members = h.members.entry(channel.clone()).or_default();
            members.retain(|m| m.session_id != member.session_id);
            members.push(member.clone());
            effects.push(Effect::Joined {
                channel: channel.clone(),
                member: member.clone(),
            });
        }
        Change::Left {
            channel,
            session_id,
        } => {
            let Some(members) = h.members.get_mut(channel) else {
                return;
            };
            if let Some(i) = members.iter().position(|m| &m.session_id == session_id) {
                let member = members.remove(i);
                effects.push(Effect::Left {
                    channel: channel.clone(),
                    member,
                });
            }
            if members.is_empty() {
                h.members.remove(channel);
            }
        }
        Change::Serves { name, functions } => set(&mut h.servers, name, functions),
        Change::Exposes {
            session_id,
            functions,
        } => set(&mut h.exposed, session_id, functions),
    }
}

fn set(
    map: &mut std::collections::BTreeMap<String, BTreeSet<String>>,
    key: &str,
    functions: &BTreeSet<String>,
) {
    if functions.is_empty() {
        map.remove(key);
    } else {
        map.insert(key.to_owned(), functions.clone());
    }
}

/// Replaces `old` with `new`, saying which members left and which joined.
fn replace(old: &mut Holdings, new: &Holdings, effects: &mut Vec<Effect>) {
    replace_members(old, new, effects);
    *old = new.clone();
}

fn replace_members(old: &Holdings, new: &Holdings, effects: &mut Vec<Effect>) {
    let has = |h: &Holdings, channel: &str, sid: &str| {
        h.members
            .get(channel)
            .is_some_and(|m| m.iter().any(|m| m.session_id == sid))
    };
    for (channel, members) in &old.members {
        for m in members {
            if !has(new, channel, &m.session_id) {
                effects.push(Effect::Left {
                    channel: channel.clone(),
                    member: m.clone(),
                });
            }
        }
    }
    for (channel, members) in &new.members {
        for m in members {
            if !has(old, channel, &m.session_id) {
                effects.push(Effect::Joined {
                    channel: channel.clone(),
                    member: m.clone(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn member(sid: &str) -> MemberInfo {
        MemberInfo {
            session_id: sid.into(),
            client_id: format!("client-{sid}"),
            info: Value::Null,
        }
    }

    fn joined(seq: u64, channel: &str, sid: &str) -> Crossing {
        Crossing::Change {
            seq,
            change: Change::Joined {
                channel: channel.into(),
                member: member(sid),
            },
        }
    }

    fn holdings(members: &[(&str, &str)]) -> Holdings {
        let mut h = Holdings::default();
        for (c, sid) in members {
            h.members.entry((*c).into()).or_default().push(member(sid));
        }
        h
    }

    #[test]
    fn a_new_node_is_asked_and_its_holdings_are_told_as_joins() {
        let mut peers = Peers::default();
        let t0 = Instant::now();
        // A change from a node not known yet: not applied, its holdings asked once.
        let t = peers.take("b", &joined(3, "prs:r", "b1"), t0);
        assert!(t.ask && t.effects.is_empty());
        let t = peers.take("b", &Crossing::Beat { seq: 3 }, t0);
        assert!(!t.ask, "asked already");
        assert!(peers.members("prs:r").is_empty());
        let h = Crossing::Holdings {
            seq: 3,
            holdings: holdings(&[("prs:r", "b1"), ("prs:r", "b2")]),
            ask: true,
        };
        let t = peers.take("b", &h, t0);
        assert!(t.answer, "it asked for ours");
        assert_eq!(
            t.effects,
            vec![
                Effect::Joined {
                    channel: "prs:r".into(),
                    member: member("b1")
                },
                Effect::Joined {
                    channel: "prs:r".into(),
                    member: member("b2")
                },
            ]
        );
        assert!(peers.is_member("prs:r", "b2"));
        // The next change applies in order.
        let t = peers.take("b", &joined(4, "prs:r", "b3"), t0);
        assert!(!t.ask);
        assert_eq!(t.effects.len(), 1);
        assert_eq!(peers.members("prs:r").len(), 3);
    }

    #[test]
    fn a_missed_change_asks_for_the_holdings_which_replace_what_was_known() {
        let mut peers = Peers::default();
        let t0 = Instant::now();
        let h = |seq, members: &[(&str, &str)], ask| Crossing::Holdings {
            seq,
            holdings: holdings(members),
            ask,
        };
        peers.take("b", &h(1, &[("prs:r", "b1")], false), t0);
        // Change 2 was lost; 3 comes.
        let t = peers.take("b", &joined(3, "prs:r", "b3"), t0);
        assert!(t.ask && t.effects.is_empty());
        // A beat ahead of what was applied asks again only after a while.
        assert!(!peers.take("b", &Crossing::Beat { seq: 3 }, t0).ask);
        assert!(
            peers
                .take("b", &Crossing::Beat { seq: 3 }, t0 + ASK_AGAIN)
                .ask
        );
        // The holdings say b1 left and b2, b3 joined.
        let t = peers.take("b", &h(3, &[("prs:r", "b2"), ("prs:r", "b3")], false), t0);
        assert!(!t.answer);
        assert_eq!(
            t.effects,
            vec![
                Effect::Left {
                    channel: "prs:r".into(),
                    member: member("b1")
                },
                Effect::Joined {
                    channel: "prs:r".into(),
                    member: member("b2")
                },
                Effect::Joined {
                    channel: "prs:r".into(),
                    member: member("b3")
                },
            ]
        );
        // A beat at the applied count asks nothing; an old change is ignored.
        assert!(!peers.take("b", &Crossing::Beat { seq: 3 }, t0).ask);
        let t = peers.take("b", &joined(2, "prs:r", "b9"), t0);
        assert_eq!(t, Taken::default());
        assert!(!peers.is_member("prs:r", "b9"));
    }

    #[test]
    fn a_silent_node_is_gone_with_its_members() {
        let mut peers = Peers::default();
        let t0 = Instant::now();
        let timeout = Duration::from_secs(5);
        let h = Crossing::Holdings {
            seq: 0,
            holdings: holdings(&[("prs:r", "b1")]),
            ask: false,
        };
        peers.take("b", &h, t0);
        peers.take("c", &Crossing::Beat { seq: 0 }, t0 + Duration::from_secs(3));
        let (gone, effects) = peers.expire(t0 + Duration::from_secs(4), timeout);
        assert!(gone.is_empty() && effects.is_empty());
        let (gone, effects) = peers.expire(t0 + timeout, timeout);
        assert_eq!(gone, vec!["b".to_owned()]);
        assert_eq!(
            effects,
            vec![Effect::Left {
                channel: "prs:r".into(),
                member: member("b1")
            }]
        );
        assert!(peers.members("prs:r").is_empty());
        assert_eq!(peers.len(), 1);
    }

    #[test]
    fn calls_find_the_node_that_serves_and_go_round() {
        let mut peers = Peers::default();
        let t0 = Instant::now();
        for (i, node) in ["b", "c"].into_iter().enumerate() {
            let mut h = Holdings::default();
            h.servers
                .insert("calc".into(), ["add".to_owned(), "mul".to_owned()].into());
            h.exposed
                .insert(format!("{node}-s"), ["ping".to_owned()].into());
            let c = Crossing::Holdings {
                seq: i as u64,
                holdings: h,
                ask: false,
            };
            peers.take(node, &c, t0);
        }
        let picks: BTreeSet<String> = (0..4)
            .filter_map(|_| peers.server_node("calc", "add"))
            .collect();
        assert_eq!(picks, ["b".to_owned(), "c".to_owned()].into());
        assert_eq!(peers.server_node("calc", "div"), None);
        assert_eq!(peers.server_node("other", "add"), None);
        assert_eq!(peers.session_node("c-s", "ping").as_deref(), Some("c"));
        assert_eq!(peers.session_node("c-s", "pong"), None);
        // c stops serving.
        let stop = Crossing::Change {
            seq: 2,
            change: Change::Serves {
                name: "calc".into(),
                functions: BTreeSet::new(),
            },
        };
        peers.take("c", &stop, t0);
        assert!((0..4).all(|_| peers.server_node("calc", "add").as_deref() == Some("b")));
    }
}
