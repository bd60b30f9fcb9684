//! `Notifier`: wakes readers of a [`crate::ReplayLog`] when its owner
//! appends, on any instance.
//!
//! Each append publishes its last seq on the log's channel
//! ([`crate::ReplayLog::channel`]). One task per [`Notifier`] holds one
//! Pub/Sub connection, subscribed to the channels of the logs read here
//! (one subscription per channel, however many readers), and wakes their
//! [`Watch`]es. After the connection drops (a Redis restart) it connects
//! again, subscribes again and wakes every watch, since a message may have
//! been missed meanwhile: a woken reader reads the log, so nothing is
//! lost, at worst it reads once for nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use futures::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

/// Delay before connecting again after the Pub/Sub connection failed.
const RECONNECT_DELAY: Duration = Duration::from_millis(200);

struct Slot {
    fired: AtomicBool,
    waker: AtomicWaker,
}

impl Slot {
    fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.waker.wake();
    }
}

enum Cmd {
    Subscribe(String, oneshot::Sender<()>),
    Unsubscribe(String),
}

struct Inner {
    watchers: Mutex<HashMap<String, Vec<Weak<Slot>>>>,
    cmds: mpsc::UnboundedSender<Cmd>,
}

/// Wakes the readers of logs when their owners append (see the module
/// docs). Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("channels", &self.inner.watchers.lock().len())
            .finish()
    }
}

/// One reader's subscription to a log's appends; dropped, it ends.
pub struct Watch {
    slot: Arc<Slot>,
    channel: String,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("channel", &self.channel)
            .finish()
    }
}

impl Watch {
    /// Ready once after the log was appended to (or the notifier
    /// reconnected) since the last time it was ready.
    pub fn poll_fired(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.slot.fired.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.slot.waker.register(cx.waker());
        if self.slot.fired.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut map = self.inner.watchers.lock();
        let Some(list) = map.get_mut(&self.channel) else {
            return;
        };
        list.retain(|w| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), Arc::as_ptr(&self.slot)));
        if list.is_empty() {
            map.remove(&self.channel);
            let _ = self
                .inner
                .cmds
                .send(Cmd::Unsubscribe(std::mem::take(&mut self.channel)));
        }
    }
}

impl Notifier {
    /// Starts the notifier's task on the current runtime, connecting to
    /// `url` (the replay log's Redis).
    pub fn start(url: &str) -> Result<Notifier, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            watchers: Mutex::new(HashMap::new()),
            cmds: tx,
        });
        tokio::spawn(run(client, Arc::downgrade(&inner), rx));
        Ok(Notifier { inner })
    }

    /// Watches `channel`; returns once the subscription is in place (or
    /// after `within`, when Redis does not answer: the watch then only
    /// fires after a reconnect).
    pub async fn watch(&self, channel: &str, within: Duration) -> Watch {
        let slot = Arc::new(Slot {
            fired: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        let first = {
            let mut map = self.inner.watchers.lock();
            let list = map.entry(channel.to_owned()).or_default();
            list.push(Arc::downgrade(&slot));
            list.len() == 1
        };
        if first {
            let (done, subscribed) = oneshot::channel();
            if self
                .inner
                .cmds
                .send(Cmd::Subscribe(channel.to_owned(), done))
                .is_ok()
            {
                let _ = tokio::time::timeout(within, subscribed).await;
            }
        }
        Watch {
            slot,
            channel: channel.to_owned(),
            inner: Arc::clone(&self.inner),
        }
    }
}

fn fire(inner: &Inner, channel: &str) {
    if let Some(list) = inner.watchers.lock().get(channel) {
        for s in list.iter().filter_map(Weak::upgrade) {
            s.fire();
        }
    }
}

async fn run(client: redis::Client, inner: Weak<Inner>, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        let pubsub = match client.get_async_pubsub().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "replay log notifier: cannot connect to redis; retrying");
                metrics::counter!("shadowcat_replay_log_errors_total", "op" => "notify", "kind" => "redis").increment(1);
                // Commands keep coming meanwhile: answer subscriptions
                // (they are made on the next connection) and stop when the
                // notifier is gone.
                let sleep = tokio::time::sleep(RECONNECT_DELAY);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        _ = &mut sleep => break,
                        cmd = cmds.recv() => match cmd {
                            None => return,
                            Some(Cmd::Subscribe(_, done)) => waiting.push(done),
                            Some(Cmd::Unsubscribe(_)) => {}
                        }
                    }
                }
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let channels: Vec<String> = strong.watchers.lock().keys().cloned().collect();
        drop(strong);
        let mut ok = true;
        for ch in &channels {
            if let Err(e) = sink.subscribe(ch).await {
                tracing::warn!(error = %e, "replay log notifier: subscribe failed");
                ok = false;
                break;
            }
        }
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
        // Anything may have been missed while not subscribed.
        if let Some(strong) = inner.upgrade() {
            for ch in &channels {
                fire(&strong, ch);
            }
        }
        while ok {
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    None => return,
                    Some(Cmd::Subscribe(ch, done)) => {
                        if let Err(e) = sink.subscribe(&ch).await {
                            tracing::warn!(error = %e, "replay log notifier: subscribe failed");
                            waiting.push(done);
                            ok = false;
                        } else {
                            let _ = done.send(());
                        }
                    }
                    Some(Cmd::Unsubscribe(ch)) => {
                        let still = inner
                            .upgrade()
                            .is_some_and(|i| i.watchers.lock().contains_key(&ch));
                        if !still && sink.unsubscribe(&ch).await.is_err() {
                            ok = false;
                        }
                    }
                },
                msg = stream.next() => match msg {
                    Some(msg) => {
                        let Some(strong) = inner.upgrade() else { return };
                        fire(&strong, msg.get_channel_name());
                    }
                    None => {
                        tracing::warn!("replay log notifier: connection to redis lost; reconnecting");
                        metrics::counter!("shadowcat_replay_log_errors_total", "op" => "notify", "kind" => "redis").increment(1);
                        ok = false;
                    }
                },
            }
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}
