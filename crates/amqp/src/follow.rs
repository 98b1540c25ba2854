//! Tasks that follow something in RabbitMQ (the registry stream, the node's live queue)
//! for as long as the node runs, starting again a second after each loss.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use trunkline_broker::backend::BoxFuture;
use trunkline_broker::BrokerError;

/// The pause before following again after the connection (or channel) was lost.
const RETRY: Duration = Duration::from_secs(1);

pub(crate) trait Follower: Send + Sync + 'static {
    /// What it follows, for the log.
    const WHAT: &'static str;
    /// Follows until its channel closes (`Err`) or `stop` (`Ok`).
    fn run<'a>(&'a self, stop: &'a CancellationToken) -> BoxFuture<'a, Result<(), BrokerError>>;
}

/// Follows with `it` until `stop`, or until `it` is dropped.
pub(crate) fn spawn<T: Follower>(it: &Arc<T>, stop: CancellationToken) {
    tokio::spawn(follow(Arc::downgrade(it), stop));
}

async fn follow<T: Follower>(it: Weak<T>, stop: CancellationToken) {
    loop {
        let Some(f) = it.upgrade() else { return };
        match f.run(&stop).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(cause = %e, "following {}; again in 1 s", T::WHAT),
        }
        drop(f);
        tokio::select! {
            () = tokio::time::sleep(RETRY) => {}
            () = stop.cancelled() => return,
        }
    }
}
