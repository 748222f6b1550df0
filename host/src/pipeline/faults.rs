//! Faults that tests inject (cargo feature `fault-injection`, off in the
//! daemon's own build): failures of Sluice's own machinery that no record,
//! topic or handler can cause, to prove that the daemon recovers from them
//! without losing a message.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::oneshot;

/// Topics whose next handler thread panics.
static PANIC_NEXT: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Whether `PANIC_NEXT` may hold anything: checked once per batch.
static ARMED: AtomicBool = AtomicBool::new(false);

/// Makes the next handler thread of the route consuming `topic` panic
/// before it calls the handler, taking its batch of messages with it.
pub fn panic_next_handler_thread(topic: &str) {
    let mut topics = PANIC_NEXT.lock().unwrap_or_else(|e| e.into_inner());
    topics.push(topic.to_owned());
    ARMED.store(true, Ordering::Release);
}

/// Panics if a fault is armed for `topic`.
pub(crate) fn handler_thread(topic: &str) {
    if !ARMED.load(Ordering::Acquire) {
        return;
    }
    let mut topics = PANIC_NEXT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = topics.iter().position(|t| t == topic) {
        topics.remove(i);
        ARMED.store(!topics.is_empty(), Ordering::Release);
        drop(topics);
        panic!("injected fault: the handler thread of the route for {topic:?} panics");
    }
}

/// A config reload held in preparation by [`hold_next_reload`].
pub struct HeldReload {
    /// Completes once the next reload's preparation has started and waits.
    pub started: oneshot::Receiver<()>,
    /// Lets the preparation go on when sent (or dropped).
    pub release: oneshot::Sender<()>,
}

/// The hold armed for the next reload: whom to tell it started, and what
/// to wait for.
static HOLD_NEXT: Mutex<Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>> = Mutex::new(None);

/// Makes the next config reload wait in its preparation (as a slow module
/// compile would) until released, to show what the daemon does meanwhile.
pub fn hold_next_reload() -> HeldReload {
    let (started_tx, started) = oneshot::channel();
    let (release, release_rx) = oneshot::channel();
    *HOLD_NEXT.lock().unwrap_or_else(|e| e.into_inner()) = Some((started_tx, release_rx));
    HeldReload { started, release }
}

/// Waits here if a hold is armed for this reload.
pub(crate) async fn reload_preparation() {
    let hold = HOLD_NEXT.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some((started, release)) = hold {
        let _ = started.send(());
        let _ = release.await;
    }
}
