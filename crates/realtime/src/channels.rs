//! Channels: named groups of sessions, publish to every member, presence on `prs:` and
//! `sys:` channels, and `sys:*` watchers that follow every system channel at once.
//!
//! A channel exists while it has members. Events of one channel reach its members in one
//! order: they are rendered and queued under the engine's lock. A member whose mailbox is
//! full misses the event (its front-end ends it as a slow consumer), so one slow reader
//! never holds up the others or grows memory without bound.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use serde_json::Value;

use crate::fanout::Fanout;
use crate::names::{has_presence, is_system};
use crate::{tell, Caller, Event, Mailbox, MemberInfo};

struct Member<M: Mailbox> {
    info: MemberInfo,
    mailbox: M,
    style: M::Style,
}

struct Inner<M: Mailbox> {
    channels: HashMap<String, Members<M>>,
    /// Sessions that follow every `sys:` channel (`sys:*`), by session id.
    watchers: HashMap<String, M>,
}

/// Every channel of the node.
pub struct Channels<M: Mailbox> {
    inner: Mutex<Inner<M>>,
}

impl<M: Mailbox> Default for Channels<M> {
    fn default() -> Self {
        Channels {
            inner: Mutex::new(Inner {
                channels: HashMap::new(),
                watchers: HashMap::new(),
            }),
        }
    }
}

type Members<M> = HashMap<String, Member<M>>;

/// Queues a channel's event for its members and, on a system channel, for the watchers
/// that are not members (they got it already); `except` gets nothing. How many members
/// got it.
fn tell_channel<M: Mailbox>(
    out: &mut Fanout<'_, M>,
    channel: &str,
    members: Option<&Members<M>>,
    watchers: &HashMap<String, M>,
    except: Option<&str>,
) -> usize {
    let not_except = |sid: &str| Some(sid) != except;
    if is_system(channel) {
        for (sid, mailbox) in watchers {
            if not_except(sid) && !members.is_some_and(|m| m.contains_key(sid)) {
                out.push(mailbox, M::Style::default());
            }
        }
    }
    members.map_or(0, |members| {
        members
            .values()
            .filter(|m| not_except(&m.info.session_id))
            .filter(|m| out.push(&m.mailbox, m.style))
            .count()
    })
}

impl<M: Mailbox> Channels<M> {
    fn lock(&self) -> MutexGuard<'_, Inner<M>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows every `sys:` channel; returns their members now.
    pub fn watch_system(&self, session_id: &str, mailbox: M) -> HashMap<String, Vec<MemberInfo>> {
        let mut inner = self.lock();
        inner.watchers.insert(session_id.to_owned(), mailbox);
        inner
            .channels
            .iter()
            .filter(|(name, _)| is_system(name))
            .map(|(name, m)| (name.clone(), m.values().map(|m| m.info.clone()).collect()))
            .collect()
    }

    /// Stops following every `sys:` channel; false if the session did not.
    pub fn unwatch_system(&self, session_id: &str) -> bool {
        self.lock().watchers.remove(session_id).is_some()
    }

    /// Adds a member (or replaces the session's membership); returns the members before
    /// it on a presence channel, whom it tells that it joined.
    pub fn join(
        &self,
        channel: &str,
        info: MemberInfo,
        mailbox: M,
        style: M::Style,
    ) -> Vec<MemberInfo> {
        let mut inner = self.lock();
        let Inner { channels, watchers } = &mut *inner;
        let members = channels.entry(channel.to_owned()).or_default();
        let presence = has_presence(channel);
        let before = if presence {
            members.values().map(|m| m.info.clone()).collect()
        } else {
            Vec::new()
        };
        if presence {
            let mut out = Fanout::<M>::new(Event::Joined {
                channel,
                member: &info,
            });
            let except = Some(info.session_id.as_str());
            tell_channel(&mut out, channel, Some(members), watchers, except);
        }
        let member = Member {
            info,
            mailbox,
            style,
        };
        members.insert(member.info.session_id.clone(), member);
        before
    }

    /// Removes a member; its peers on a presence channel are told it left. False if it
    /// was not a member.
    pub fn leave(&self, channel: &str, session_id: &str) -> bool {
        let mut inner = self.lock();
        let Inner { channels, watchers } = &mut *inner;
        let Some(members) = channels.get_mut(channel) else {
            return false;
        };
        let Some(gone) = members.remove(session_id) else {
            return false;
        };
        if has_presence(channel) {
            let mut out = Fanout::<M>::new(Event::Left {
                channel,
                member: &gone.info,
            });
            tell_channel(&mut out, channel, Some(members), watchers, Some(session_id));
        }
        if members.is_empty() {
            channels.remove(channel);
        }
        true
    }

    /// Sends `message` to every member (but `except`); the number it was queued for.
    pub fn publish(
        &self,
        channel: &str,
        message: &Value,
        from: &Caller,
        except: Option<&str>,
    ) -> usize {
        let inner = self.lock();
        let members = inner.channels.get(channel);
        let mut out = Fanout::<M>::new(Event::Message {
            channel,
            message,
            from,
        });
        tell_channel(&mut out, channel, members, &inner.watchers, except)
    }

    /// Tells the members of a presence channel here (and the `sys:*` watchers) that a
    /// member elsewhere joined or left, as [`crate::peers::Effect`] says.
    pub fn tell(&self, effect: &crate::peers::Effect) {
        let (channel, member, joined) = match effect {
            crate::peers::Effect::Joined { channel, member } => (channel, member, true),
            crate::peers::Effect::Left { channel, member } => (channel, member, false),
        };
        if !has_presence(channel) {
            return;
        }
        let inner = self.lock();
        let event = if joined {
            Event::Joined { channel, member }
        } else {
            Event::Left { channel, member }
        };
        let mut out = Fanout::<M>::new(event);
        tell_channel(
            &mut out,
            channel,
            inner.channels.get(channel.as_str()),
            &inner.watchers,
            None,
        );
    }

    /// Every channel's members.
    pub fn all_members(&self) -> std::collections::BTreeMap<String, Vec<MemberInfo>> {
        self.lock()
            .channels
            .iter()
            .map(|(name, m)| (name.clone(), m.values().map(|m| m.info.clone()).collect()))
            .collect()
    }

    /// Whether `session_id` is a member of `channel`.
    pub fn is_member(&self, channel: &str, session_id: &str) -> bool {
        self.lock()
            .channels
            .get(channel)
            .is_some_and(|m| m.contains_key(session_id))
    }

    /// The members of a channel.
    pub fn members(&self, channel: &str) -> Vec<MemberInfo> {
        self.lock()
            .channels
            .get(channel)
            .map(|m| m.values().map(|m| m.info.clone()).collect())
            .unwrap_or_default()
    }

    /// Channels with at least one member.
    pub fn len(&self) -> usize {
        self.lock().channels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Tells one session a backend's message.
pub fn direct<M: Mailbox>(mailbox: &M, message: &Value) -> bool {
    tell(mailbox, &Event::Direct { message })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{Inbox, Style};

    fn info(sid: &str) -> MemberInfo {
        MemberInfo {
            session_id: sid.into(),
            client_id: format!("client-{sid}"),
            info: Value::Null,
        }
    }

    #[test]
    fn presence_tells_members_and_watchers_once_each() {
        let ch = Channels::<Inbox>::default();
        let (a, b, w) = (Inbox::new(8), Inbox::new(8), Inbox::new(8));
        let watched = ch.watch_system("w", w.clone());
        assert!(watched.is_empty());
        assert!(ch
            .join("sys:x", info("a"), a.clone(), Style::Full)
            .is_empty());
        let before = ch.join("sys:x", info("b"), b.clone(), Style::Full);
        assert_eq!(before, vec![info("a")]);
        // a was told b joined; the watcher saw both joins; b was told nothing of itself.
        assert_eq!(a.taken(), vec!["joined sys:x b"]);
        assert_eq!(w.taken(), vec!["joined sys:x a", "joined sys:x b"]);
        assert!(b.taken().is_empty());

        // A watcher that is also a member gets each event once.
        ch.join("sys:x", info("w"), w.clone(), Style::Full);
        a.taken();
        b.taken();
        let n = ch.publish("sys:x", &json!(1), &Caller::Backend, None);
        assert_eq!(n, 3);
        assert_eq!(w.taken(), vec!["message sys:x 1"]);

        assert!(ch.leave("sys:x", "a"));
        assert!(!ch.leave("sys:x", "a"));
        assert_eq!(b.taken(), vec!["message sys:x 1", "left sys:x a"]);
    }

    #[test]
    fn one_frame_per_style_and_styles_choose_what_they_hear() {
        let ch = Channels::<Inbox>::default();
        let (full, terse) = (Inbox::new(8), Inbox::new(8));
        ch.join("prs:r", info("f"), full.clone(), Style::Full);
        ch.join("prs:r", info("t"), terse.clone(), Style::Terse);
        // The terse style hears no presence.
        assert!(terse.taken().is_empty());
        assert_eq!(full.taken(), vec!["joined prs:r t"]);
        let renders = Inbox::renders();
        let n = ch.publish("prs:r", &json!("hi"), &Caller::Backend, Some("f"));
        assert_eq!(n, 1, "the publisher is left out");
        assert_eq!(terse.taken(), vec!["terse prs:r \"hi\""]);
        assert!(full.taken().is_empty());
        assert_eq!(
            Inbox::renders() - renders,
            1,
            "rendered once, for the style that got it"
        );
        // Public channels have no presence: joining tells nobody and lists nobody.
        ch.join("news", info("f"), full.clone(), Style::Full);
        assert!(ch
            .join("news", info("t"), terse.clone(), Style::Full)
            .is_empty());
        assert!(full.taken().is_empty());
        assert_eq!(ch.members("news").len(), 2);
    }

    #[test]
    fn a_full_mailbox_misses_without_holding_up_the_others() {
        let ch = Channels::<Inbox>::default();
        let (slow, quick) = (Inbox::new(1), Inbox::new(8));
        ch.join("news", info("s"), slow.clone(), Style::Full);
        ch.join("news", info("q"), quick.clone(), Style::Full);
        assert_eq!(ch.publish("news", &json!(1), &Caller::Backend, None), 2);
        assert_eq!(ch.publish("news", &json!(2), &Caller::Backend, None), 1);
        assert_eq!(slow.taken().len(), 1);
        assert_eq!(quick.taken().len(), 2);
        assert_eq!(ch.len(), 1);
        ch.leave("news", "s");
        ch.leave("news", "q");
        assert!(ch.is_empty(), "an empty channel is gone");
    }
}
