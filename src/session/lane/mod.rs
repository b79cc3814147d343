//! One serialized lane per session: the VM handle and what the lane knows of the screen (the
//! latest frame, the scale agents' coordinates are in), and the input barrier. What it does
//! for each plan is in `run`.

mod run;
pub(super) use run::as_user;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::action::Plan;
use super::geometry::Geometry;
use crate::backend::Instance;
use crate::ledger::shots::frame_hash;
use crate::vm::display::Frame;
use crate::vm::link::Link;
use crate::vm::qmp::Qmp;
use crate::vm::{Button, Vm, VmError};

/// A frame the lane has seen, and when.
#[derive(Clone)]
pub struct Seen {
    pub frame: Arc<Frame>,
    /// Its pixel hash, which names it in the review ledger.
    pub hash: String,
    pub at: Instant,
    /// Whether the screen had stopped changing when this frame was taken.
    pub settled: bool,
}

/// The lane's state is its own: callers name what happened (a frame seen, the screen changed,
/// an after-frame recorded) and the lane keeps its fields consistent.
pub struct Lane {
    vm: Vm,
    instance: Box<dyn Instance>,
    /// Shared with the session, which checks coordinates against it before taking the lane.
    geometry: Arc<std::sync::Mutex<Geometry>>,
    /// When the latest click or drag was sent (see [`Lane::input_barrier`]).
    last_pointer: Option<Instant>,
    /// The latest frame any screendump of this lane produced.
    latest: Option<Seen>,
    /// Whether an action that can change the screen ran after `latest` was taken.
    changed_since_frame: bool,
    /// The action (seq, when it ended) whose "after" frame is still to be recorded: by its
    /// capture task, or else by the next call that looks at the screen.
    awaiting_after: Option<(u64, Instant)>,
    /// Where the pointer is, in screen pixels: every pointer event deskvm sends is absolute,
    /// so the last one sent is where the guest's pointer is.
    pointer: (u32, u32),
    /// Buttons pressed by `mouse_down` and not yet released.
    held: Vec<Button>,
    /// The disk layer the guest writes to: the runtime dir's `disk.qcow2` until a checkpoint
    /// freezes it and adds a layer of another name above it. Layers are never renamed while
    /// QEMU runs: it reopens a layer by its name when it changes its access mode.
    disk: PathBuf,
    /// What runs in the guest: who exec runs as, whether an agent answers.
    guest: Guest,
}

/// What the session's image says about its guest.
#[derive(Debug, Clone)]
pub struct Guest {
    pub image: String,
    /// The desktop's user, whom exec runs as unless asked for root (`None`: root).
    pub user: Option<String>,
    /// Whether a guest agent answers (an imported disk may have none).
    pub agent: bool,
}

/// A frame younger than this counts as the current screen even if it was still changing.
const FRESH: Duration = Duration::from_millis(500);
/// A settled frame counts as the current screen this long after it was taken (an agent that
/// looked, thought and acts within it costs no screendump). Past it the screen is looked at
/// again, since a program may have changed it meanwhile.
const SETTLED_FOR: Duration = Duration::from_secs(10);

impl Lane {
    pub(in crate::session) fn vm(&self) -> &Vm {
        &self.vm
    }

    pub(in crate::session) fn guest(&self) -> &Guest {
        &self.guest
    }
}

impl Lane {
    /// `pointer`: where the guest's pointer is when the session starts.
    pub fn new(
        vm: Vm,
        instance: Box<dyn Instance>,
        geometry: Arc<std::sync::Mutex<Geometry>>,
        pointer: (u32, u32),
        guest: Guest,
    ) -> Self {
        Lane {
            guest,
            disk: vm.files.disk(),
            vm,
            instance,
            geometry,
            pointer,
            held: Vec::new(),
            last_pointer: None,
            latest: None,
            changed_since_frame: true,
            awaiting_after: None,
        }
    }

    pub fn qmp(&self) -> &Qmp {
        self.vm.qmp()
    }

    /// The way to the VM's sockets (its VNC socket for the live view).
    pub fn link(&self) -> Arc<dyn Link> {
        self.vm.link()
    }

    /// Where the guest's pointer is, in screen pixels.
    pub fn pointer(&self) -> (u32, u32) {
        self.pointer
    }

    /// The disk layer the guest writes to now.
    pub fn disk(&self) -> &Path {
        &self.disk
    }

    /// The guest writes to `layer` from now on (a checkpoint froze the one below it).
    pub fn switch_disk(&mut self, layer: PathBuf) {
        self.disk = layer;
    }

    /// Something the lane did not do may have changed the screen (a checkpoint's pause, say):
    /// the latest frame is not the current screen any more.
    pub fn mark_changed(&mut self) {
        self.changed_since_frame = true;
    }

    /// A person's input reached the guest through a control view: the screen may have changed,
    /// and the pointer is where they left it (if they moved it).
    pub fn note_human_input(&mut self, pointer: Option<(u16, u16)>) {
        self.changed_since_frame = true;
        if let Some((x, y)) = pointer {
            self.pointer = (u32::from(x), u32::from(y));
        }
    }

    /// Action `seq`, which ended now, waits for its "after" frame.
    pub fn await_after(&mut self, seq: u64) {
        self.awaiting_after = Some((seq, Instant::now()));
    }

    /// The action still waiting for its "after" frame (its seq, when it ended) and a frame
    /// taken since `since` that shows the screen after it: the waiting ends, since the caller
    /// records that frame. `None` (and it goes on waiting) without such a frame.
    pub fn take_awaiting_after(&mut self, since: Instant) -> Option<(u64, Instant, Seen)> {
        let fresh = self.latest.clone().filter(|s| s.at >= since)?;
        let (seq, ended) = self.awaiting_after.take()?;
        Some((seq, ended, fresh))
    }

    /// The "after" frame of action `of_seq` is recorded: no later call need record one.
    pub fn after_recorded(&mut self, of_seq: u64) {
        if self.awaiting_after.is_some_and(|(seq, _)| seq == of_seq) {
            self.awaiting_after = None;
        }
    }

    /// The latest frame showed a still screen: the next action may reuse it as its "before".
    pub fn mark_settled(&mut self) {
        if let Some(l) = self.latest.as_mut() {
            l.settled = true;
        }
    }

    /// Stops the VM: asks QEMU to quit first when it still runs (`quit`), then stops its
    /// instance (process or container) either way.
    pub async fn stop_vm(&mut self, quit: bool) {
        if quit {
            self.vm.qmp().quit().await;
        }
        self.instance.stop().await;
    }

    /// A new VM (a restore's) in place of the stopped one: nothing the lane knew of the old
    /// screen, pointer, buttons or pending frames holds for it.
    pub fn replace_vm(&mut self, vm: Vm, instance: Box<dyn Instance>, pointer: (u32, u32)) {
        self.disk = vm.files.disk();
        self.vm = vm;
        self.instance = instance;
        self.latest = None;
        self.changed_since_frame = true;
        self.awaiting_after = None;
        self.pointer = pointer;
        self.held.clear();
    }

    /// A screendump, remembered as the latest frame.
    pub async fn look(&mut self) -> Result<Seen, VmError> {
        let frame = Arc::new(self.vm.frame().await?);
        Ok(self.saw(frame, false))
    }

    fn saw(&mut self, frame: Arc<Frame>, settled: bool) -> Seen {
        let hash = frame_hash(&frame);
        // The same pixels as a settled frame with no action in between: still settled.
        let still = !self.changed_since_frame
            && self
                .latest
                .as_ref()
                .is_some_and(|l| l.settled && l.hash == hash);
        let seen = Seen {
            frame,
            hash,
            at: Instant::now(),
            settled: settled || still,
        };
        self.latest = Some(seen.clone());
        self.changed_since_frame = false;
        seen
    }

    /// The screen as it is now: the latest frame when nothing can have changed it since (no
    /// action ran, and it was settled or is fresh), else a new screendump. Reusing is what
    /// keeps the ledger's cost off most replies.
    pub async fn current(&mut self) -> Result<Seen, VmError> {
        match &self.latest {
            Some(s)
                if !self.changed_since_frame
                    && s.at.elapsed() < if s.settled { SETTLED_FOR } else { FRESH } =>
            {
                Ok(s.clone())
            }
            _ => self.look().await,
        }
    }

    async fn settle(
        &mut self,
        timeout: Duration,
        interval: Duration,
        needed: u32,
    ) -> Result<bool, VmError> {
        let (frame, stable) = self.vm.settle(timeout, interval, needed).await?;
        self.saw(Arc::new(frame), stable);
        Ok(stable)
    }

    /// Input right after a click can overtake it: the window manager moves the focus only once
    /// it has handled the click. Under TCG the first three characters typed after a click reached
    /// the previously focused window, and a click on a window right after a click on the
    /// desktop background left no window focused (2 of 3 tries). So input that follows a click
    /// waits (at most 1.5 s) until the screen stops changing, which a focus change always does.
    async fn input_barrier(&mut self) -> Result<(), VmError> {
        if self
            .last_pointer
            .take()
            .is_some_and(|t| t.elapsed() < Duration::from_secs(2))
        {
            self.settle(Duration::from_millis(1500), Duration::from_millis(50), 2)
                .await?;
        }
        Ok(())
    }

    /// Waits at the input barrier when the plan is input that could overtake a click, and
    /// before input the window manager handles until it has taken in a keymap that Unicode
    /// typing gave back.
    pub async fn before(&mut self, plan: &Plan) -> Result<(), VmError> {
        if matches!(
            plan,
            Plan::Click { .. }
                | Plan::MouseButton { .. }
                | Plan::MouseMove { .. }
                | Plan::Drag { .. }
                | Plan::Scroll { .. }
                | Plan::Key { .. }
        ) {
            self.vm.settle_keymap().await?;
        }
        if matches!(
            plan,
            Plan::Click { .. }
                | Plan::MouseButton { .. }
                | Plan::Drag { .. }
                | Plan::Scroll { .. }
                | Plan::Type { .. }
                | Plan::Key { .. }
        ) {
            self.input_barrier().await?;
        }
        Ok(())
    }
}
