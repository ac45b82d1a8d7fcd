//! Chains: steps sent without waiting for one another that must still run
//! one after the other, as if each had waited for the one before.
//!
//! A step is a future run inside [`Chain::step`]; it sends one request
//! (setting up a link on the way runs [`outside`] the chain). That request
//! carries `after` (see `ToAgent::Call`): the chain's last step, when that
//! one's request went to the same link. The agent starts it only once that
//! one ended, and not at all if it failed, so a failure stops the rest of
//! the chain where the controller would have stopped it. Where the agent
//! cannot order it (the last step went to another link, or sent nothing
//! and failed before), the request waits here for the last step to end
//! and is not sent if that failed. [`Chain::follow`] runs a future whose
//! requests come after the chain without extending it (the request the
//! steps prepare); [`Chain::after_all`] one that runs once every step has
//! ended, whatever their outcome (removing what they made).

use crate::error::{Error, Result};
use spindle_protocol::{ErrorKind, RequestId, WireError};
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::sync::{oneshot, watch};

tokio::task_local! {
    /// The step the current task runs, if any (`None`: outside any).
    static STEP: Option<Step>;
}

/// One connection's chain of steps (see the module docs).
#[derive(Debug, Default)]
pub struct Chain {
    /// The last step. Held while a request is being queued, so requests
    /// queue in chain order.
    last: tokio::sync::Mutex<Option<Last>>,
}

#[derive(Clone, Debug)]
struct Last {
    /// (link serial, request id) once the step sent its request.
    sent: Option<(u64, RequestId)>,
    /// `Some(failed)` once the step ended.
    ended: watch::Receiver<Option<bool>>,
}

struct Step {
    chain: Arc<Chain>,
    /// For a step: the one before it, its request's predecessor. `None`
    /// for a follower, whose predecessor is the chain's last step.
    before: Option<Option<Last>>,
    /// Told once the step's request is queued.
    sent: Mutex<Option<oneshot::Sender<()>>>,
}

impl Chain {
    /// Runs `fut` as the chain's next step; `failed` tells from its output
    /// whether it failed. `sent` is told once its request is queued to the
    /// agent (or dropped once the step ends without sending one): from then
    /// on, the next step may be started.
    pub async fn step<F: Future>(
        self: &Arc<Self>,
        sent: oneshot::Sender<()>,
        fut: F,
        failed: impl FnOnce(&F::Output) -> bool,
    ) -> F::Output {
        let (ended_tx, ended_rx) = watch::channel(None);
        let before = self.last.lock().await.replace(Last {
            sent: None,
            ended: ended_rx,
        });
        let step = Step {
            chain: self.clone(),
            before: Some(before.clone()),
            sent: Mutex::new(Some(sent)),
        };
        let output = STEP.scope(Some(step), fut).await;
        // A step has ended once the steps before it have too (one that
        // failed before sending did not wait for them), and has failed if
        // any of them did.
        let before_failed = match before {
            Some(before) => ended(before.ended).await,
            None => false,
        };
        let _ = ended_tx.send(Some(before_failed || failed(&output)));
        output
    }

    /// Runs `fut` with its requests ordered after the chain's last step,
    /// without extending the chain.
    pub async fn follow<F: Future>(self: &Arc<Self>, fut: F) -> F::Output {
        let step = Step {
            chain: self.clone(),
            before: None,
            sent: Mutex::new(None),
        };
        STEP.scope(Some(step), fut).await
    }

    /// Runs `fut` once the chain's last step (and so every step) has ended,
    /// whatever the outcome, outside the chain.
    pub async fn after_all<F: Future>(self: &Arc<Self>, fut: F) -> F::Output {
        let last = self.last.lock().await.as_ref().map(|l| l.ended.clone());
        if let Some(last) = last {
            ended(last).await;
        }
        outside(fut).await
    }

    /// Forgets the last step: everything before has ended.
    pub async fn settled(&self) {
        *self.last.lock().await = None;
    }
}

/// Runs `fut` outside any chain (setting up a link, say).
pub async fn outside<F: Future>(fut: F) -> F::Output {
    STEP.scope(None, fut).await
}

/// Waits for a step to end; whether it failed (a step that vanished
/// counts as failed).
async fn ended(mut rx: watch::Receiver<Option<bool>>) -> bool {
    match rx.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.unwrap_or(true),
        Err(_) => true,
    }
}

/// Queues request `id` on link `link` with `send`, which is given the
/// `after` the current task's chain step calls for (none outside a step).
pub(crate) async fn send_in_order<F, Fut>(link: u64, id: RequestId, send: F) -> Result<()>
where
    F: FnOnce(Option<RequestId>) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let step = STEP
        .try_with(|s| s.as_ref().map(|s| (s.chain.clone(), s.before.clone())))
        .ok()
        .flatten();
    let Some((chain, before)) = step else {
        return send(None).await;
    };
    let extends = before.is_some();
    let mut last = chain.last.lock().await;
    let predecessor = match before {
        Some(before) => before,
        None => last.clone(),
    };
    let mut after = None;
    if let Some(p) = predecessor {
        match p.sent {
            Some((on, earlier)) if on == link => after = Some(earlier),
            // The agent cannot order it after that step: wait for it here
            // (without the lock: that step may still queue requests).
            _ => {
                drop(last);
                if ended(p.ended).await {
                    return Err(Error::Remote(WireError::new(
                        ErrorKind::Skipped,
                        "not sent: a step before it failed",
                    )));
                }
                last = chain.last.lock().await;
            }
        }
    }
    send(after).await?;
    // A step sends one request (an exec or a put): once it has, the next
    // step may already be the chain's last.
    if extends {
        if let Some(l) = last.as_mut() {
            l.sent = Some((link, id));
        }
    }
    drop(last);
    let _ = STEP.try_with(|s| {
        let sent = s
            .as_ref()
            .and_then(|s| s.sent.lock().unwrap_or_else(|e| e.into_inner()).take());
        sent.map(|tx| tx.send(()))
    });
    Ok(())
}
