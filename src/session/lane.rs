//! One serialized lane per session: the VM handle and what the lane knows of the screen (the
//! latest frame, the scale agents' coordinates are in), and the input barrier.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::action::Plan;
use super::geometry::Geometry;
use crate::backend::Instance;
use crate::ledger::shots::frame_hash;
use crate::vm::display::Frame;
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

pub struct Lane {
    pub vm: Vm,
    pub instance: Box<dyn Instance>,
    /// Shared with the session, which checks coordinates against it before taking the lane.
    pub geometry: Arc<std::sync::Mutex<Geometry>>,
    /// When the latest click or drag was sent (see [`Lane::input_barrier`]).
    pub last_pointer: Option<Instant>,
    /// The latest frame any screendump of this lane produced.
    pub latest: Option<Seen>,
    /// Whether an action that can change the screen ran after `latest` was taken.
    pub changed_since_frame: bool,
    /// The action (seq, when it ended) whose "after" frame is still to be recorded: by its
    /// capture task, or else by the next call that looks at the screen.
    pub awaiting_after: Option<(u64, Instant)>,
    /// Where the pointer is, in screen pixels: every pointer event deskvm sends is absolute,
    /// so the last one sent is where the guest's pointer is.
    pub pointer: (u32, u32),
    /// Buttons pressed by `mouse_down` and not yet released.
    pub held: Vec<Button>,
    /// The disk layer the guest writes to: the runtime dir's `disk.qcow2` until a checkpoint
    /// freezes it and adds a layer of another name above it. Layers are never renamed while
    /// QEMU runs: it reopens a layer by its name when it changes its access mode.
    pub disk: PathBuf,
    /// Whether the guest's RAM is mapped from a shared-memory template.
    pub memory: super::MemoryMode,
}

/// A frame younger than this counts as the current screen even if it was still changing.
const FRESH: Duration = Duration::from_millis(500);
/// A settled frame counts as the current screen this long after it was taken (an agent that
/// looked, thought and acts within it costs no screendump). Past it the screen is looked at
/// again, since a program may have changed it meanwhile.
const SETTLED_FOR: Duration = Duration::from_secs(10);

impl Lane {
    /// `pointer`: where the guest's pointer is when the session starts.
    pub fn new(
        vm: Vm,
        instance: Box<dyn Instance>,
        geometry: Arc<std::sync::Mutex<Geometry>>,
        pointer: (u32, u32),
    ) -> Self {
        Lane {
            disk: vm.files.disk(),
            memory: super::MemoryMode::Private,
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

    /// A screendump, remembered as the latest frame.
    pub async fn look(&mut self) -> Result<Seen, VmError> {
        let frame = Arc::new(self.vm.frame().await?);
        Ok(self.saw(frame, false))
    }

    pub(super) fn saw(&mut self, frame: Arc<Frame>, settled: bool) -> Seen {
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

    pub(super) async fn settle(
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
