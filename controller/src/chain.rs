//! Chains: steps sent without waiting for one another that must still run
//! one after the other, as if each had waited for the one before.
//!
//! A step is a future run inside [`Chain::step`]. Every request it starts
//! on a link carries `after` (see `ToAgent::Call`): the chain's last step
//! on that same link. The agent starts it only once that one ended, and
//! not at all if it failed, so a failure stops the rest of the chain where
//! the controller would have stopped it. [`Chain::follow`] runs a future
//! whose requests come after the chain without extending it (the request
//! the chain prepares, which must not hold back the next chain).
//!
//! The chain orders requests on one link only: a step on another link than
//! the last is not ordered after it, so callers chain only steps that run
//! on one link (Ansible's temp dir steps all run on the login account's).

use crate::error::Result;
use spindle_protocol::RequestId;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

tokio::task_local! {
    static STEP: Step;
}

/// One connection's chain of steps (see the module docs).
#[derive(Debug, Default)]
pub struct Chain {
    /// The last request a step sent: (link serial, request id). Held while
    /// a request is being queued, so requests queue in chain order.
    last: tokio::sync::Mutex<Option<(u64, RequestId)>>,
}

struct Step {
    chain: Arc<Chain>,
    /// Whether its requests become the chain's last.
    extends: bool,
    /// Told once the step's first request is queued.
    sent: Mutex<Option<oneshot::Sender<()>>>,
}

impl Chain {
    /// Runs `fut` as the chain's next step. `sent` is told once its first
    /// request is queued to the agent (or dropped if it sends none): from
    /// then on, the next step may be started.
    pub async fn step<F: Future>(self: &Arc<Self>, sent: oneshot::Sender<()>, fut: F) -> F::Output {
        let step = Step {
            chain: self.clone(),
            extends: true,
            sent: Mutex::new(Some(sent)),
        };
        STEP.scope(step, fut).await
    }

    /// Runs `fut` with its requests ordered after the chain's last step,
    /// without extending the chain.
    pub async fn follow<F: Future>(self: &Arc<Self>, fut: F) -> F::Output {
        let step = Step {
            chain: self.clone(),
            extends: false,
            sent: Mutex::new(None),
        };
        STEP.scope(step, fut).await
    }

    /// Forgets the last step: everything before has ended.
    pub async fn settled(&self) {
        *self.last.lock().await = None;
    }
}

/// Queues request `id` on link `link` with `send`, which is given the
/// `after` the current task's chain step calls for (none outside a step).
pub(crate) async fn send_in_order<F, Fut>(link: u64, id: RequestId, send: F) -> Result<()>
where
    F: FnOnce(Option<RequestId>) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let Ok((chain, extends)) = STEP.try_with(|s| (s.chain.clone(), s.extends)) else {
        return send(None).await;
    };
    let mut last = chain.last.lock().await;
    let after = last
        .filter(|&(on, _)| on == link)
        .map(|(_, earlier)| earlier);
    send(after).await?;
    if extends {
        *last = Some((link, id));
    }
    drop(last);
    let _ = STEP.try_with(|s| {
        let sent = s.sent.lock().unwrap_or_else(|e| e.into_inner()).take();
        sent.map(|tx| tx.send(()))
    });
    Ok(())
}
