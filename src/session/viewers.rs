//! What a session shares with the people watching it live. The `view` room, on the floor above,
//! serves them (the page, the WebSocket bridge, the links); the session never calls it. It keeps
//! only what it must know of them: how many are attached (`session_list`), the signal that cuts
//! them off when it ends, the link by which they reach its VM's VNC socket (a restore replaces
//! it), and a person's input not yet on record ([`HumanLog`], which it writes to its ledger).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::after::{spawn_after_frame, AfterFrame};
use super::human::{Burst, HumanLog};
use super::Session;
use crate::vm::link::Link;

/// Viewers one session may have at once.
pub const MAX_VIEWERS: u32 = 8;

/// A session's side of its live viewers.
pub struct Viewers {
    /// Cancelled when the session ends: every viewer is cut off and every link dies.
    closed: CancellationToken,
    /// The VM's link; replaced when a restore starts a new VM.
    link: Mutex<Arc<dyn Link>>,
    /// What a person did in control mode, until the session records it.
    pub human: HumanLog,
    open: AtomicU32,
    next_viewer: AtomicU32,
}

impl Viewers {
    pub fn new(link: Arc<dyn Link>) -> Self {
        Viewers {
            closed: CancellationToken::new(),
            link: Mutex::new(link),
            human: HumanLog::default(),
            open: AtomicU32::new(0),
            next_viewer: AtomicU32::new(1),
        }
    }

    pub(super) fn set_link(&self, link: Arc<dyn Link>) {
        *self.link.lock().expect("view link poisoned") = link;
    }

    pub fn link(&self) -> Arc<dyn Link> {
        self.link.lock().expect("view link poisoned").clone()
    }

    /// Ends every view of the session (it is stopping).
    pub(super) fn close(&self) {
        self.closed.cancel();
    }

    pub fn closed(&self) -> &CancellationToken {
        &self.closed
    }

    /// How many viewers are attached now.
    pub fn count(&self) -> u32 {
        self.open.load(Ordering::SeqCst)
    }

    /// A place for one more viewer (its number), or `None` when the session has
    /// [`MAX_VIEWERS`].
    pub fn admit(self: &Arc<Self>) -> Option<Viewer> {
        let n = self.open.fetch_add(1, Ordering::SeqCst);
        let seat = Viewer {
            viewers: self.clone(),
            id: self.next_viewer.fetch_add(1, Ordering::SeqCst),
        };
        (n < MAX_VIEWERS).then_some(seat)
    }
}

/// One open viewer; its place is given back when dropped.
pub struct Viewer {
    viewers: Arc<Viewers>,
    pub id: u32,
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.viewers.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Session {
    /// Its live viewers: how many, their link to the VM, a person's input.
    pub fn view(&self) -> &Arc<Viewers> {
        &self.viewers
    }

    /// Writes a person's input burst down; a failed write is logged, not raised: the input
    /// already reached the desktop, and the agent's call that found it is not to blame.
    pub(super) fn append_human(&self, burst: &Burst) -> Option<u64> {
        match self.ledger.append("human_input", burst.to_json()) {
            Ok(seq) => Some(seq),
            Err(e) => {
                tracing::error!(error = %e, session = %self.info.session_id, "could not record a person's input in the review ledger");
                None
            }
        }
    }

    /// Writes down the burst the view holds, if any: a person's input goes on record ahead of
    /// whatever the session does next.
    pub(super) fn record_pending_human(&self) {
        if let Some(b) = self.viewers.human.take() {
            self.append_human(&b);
        }
    }

    /// Records a burst of a person's input (control view), and the screen after it unless the
    /// agent's last action is still waiting for its own after-frame (taking the slot would
    /// cancel that capture).
    pub fn record_human(self: &Arc<Self>, burst: Burst) {
        let Some(seq) = self.append_human(&burst) else {
            return;
        };
        let busy = self
            .after
            .lock()
            .expect("capture slot poisoned")
            .as_ref()
            .is_some_and(AfterFrame::running);
        if !busy {
            spawn_after_frame(self, seq);
        }
    }
}
