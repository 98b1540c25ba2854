//! The one fan-out of the live engine: an event rendered at most once per style and
//! queued for each mailbox it goes to. Channels and topic subscriptions both deliver
//! through it.

use crate::{Event, Mailbox};

/// One event rendered at most once per style, and queued for each member.
pub(crate) struct Fanout<'a, M: Mailbox> {
    event: Event<'a>,
    frames: Vec<(M::Style, Option<M::Frame>)>,
}

impl<'a, M: Mailbox> Fanout<'a, M> {
    pub(crate) fn new(event: Event<'a>) -> Self {
        Fanout {
            event,
            frames: Vec::with_capacity(2),
        }
    }

    fn frame(&mut self, style: M::Style) -> Option<M::Frame> {
        if let Some((_, f)) = self.frames.iter().find(|(s, _)| *s == style) {
            return f.clone();
        }
        let f = M::render(style, &self.event);
        self.frames.push((style, f.clone()));
        f
    }

    /// Queues the event for `mailbox`; whether it was queued.
    pub(crate) fn push(&mut self, mailbox: &M, style: M::Style) -> bool {
        self.frame(style).is_some_and(|f| mailbox.push(f))
    }
}
