//! Owner markers: who made a directory or container, so cleanup can tell a live instance's
//! things from a dead one's. A process is identified by its pid *and* its start time (in clock
//! ticks since boot) on this boot of this machine: a pid the kernel handed to another process
//! since is not alive, and neither is anything from before a reboot.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// The marker file in every directory deskvm creates. Defined in `vm::spec`, its lowest user
/// (a session's tmpfs companion dir counts as in use while it carries one).
pub use crate::vm::spec::MARKER;

/// In a local session's runtime dir: its QEMU process ([`ProcessRef`]), for cleanup after a crash.
pub const PROCESS_FILE: &str = "qemu.process";

/// Container labels carrying the same facts as a directory's marker.
pub const LABEL_INSTANCE: &str = "deskvm.instance";
pub const LABEL_PID: &str = "deskvm.pid";
pub const LABEL_PID_START: &str = "deskvm.pid-start";
pub const LABEL_BOOT: &str = "deskvm.boot";
pub const LABEL_MACHINE: &str = "deskvm.machine";
pub const LABEL_SESSION: &str = "deskvm.session";
pub const LABEL_KIND: &str = "deskvm.kind";
pub const LABEL_CREATED: &str = "deskvm.created";
pub const LABEL_PID_NS: &str = "deskvm.pid-ns";
/// The deskvm version that made a container or runtime image.
pub const LABEL_VERSION: &str = "deskvm.version";
/// The repository of the runtime images (QEMU in a container) deskvm builds and imports.
pub const IMAGE_REPO: &str = "deskvm-runtime";
/// The repository of guest images pushed to engines as Docker images.
pub const GUEST_REPO: &str = "deskvm-guest";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Owner {
    /// Random id of the deskvm process (one per server or CLI run).
    pub instance: String,
    pub pid: u32,
    /// Field 22 of /proc/<pid>/stat; 0 in markers written before deskvm recorded it.
    pub pid_start: u64,
    pub boot_id: String,
    pub machine_id: String,
    /// What the directory is: session, ready_build, image_build, runtime_build, guest_image,
    /// ready_state, ledger, export.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Unix seconds.
    pub created_at: u64,
    /// Cache directories (guest image, ready state) a session runs from: reclaim keeps them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uses: Vec<PathBuf>,
    /// Docker images (tags) it runs from: reclaim keeps them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    /// A process working for the owner that may outlive it (a build's recipe script): while
    /// it runs, the owner's work is alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helper: Option<ProcessRef>,
    /// The pid namespace the pid belongs to (inode of /proc/self/ns/pid; 0: not recorded).
    #[serde(default)]
    pub pid_ns: u64,
    /// For a server: what it exposes ("stdio", or its HTTP address and auth), for `doctor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<String>,
}

/// Whether an owner still runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    /// Gone, and why we know.
    Dead(String),
    /// Cannot be judged from here (another machine): never touched.
    Unknown(String),
}

/// This process's instance id: 8 random hex digits, fixed for its lifetime.
pub fn instance_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| format!("{:08x}", rand::random::<u32>()))
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn boot_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| read_trimmed("/proc/sys/kernel/random/boot_id"))
}

/// This process's pid namespace: a pid means nothing in another one.
fn pid_ns() -> u64 {
    static NS: OnceLock<u64> = OnceLock::new();
    *NS.get_or_init(|| {
        std::fs::read_link("/proc/self/ns/pid")
            .ok()
            .and_then(|l| {
                let l = l.to_string_lossy().into_owned();
                l.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
            })
            .unwrap_or(0)
    })
}

fn machine_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let id = read_trimmed("/etc/machine-id");
        if id.is_empty() {
            read_trimmed("/var/lib/dbus/machine-id")
        } else {
            id
        }
    })
}

/// Start time of `pid` in clock ticks since boot, or None when there is no such process (a
/// zombie, dead but not yet waited for by its parent, counts as none).
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields after the last ')'.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    // Field 3 is the state; starttime is field 22.
    if matches!(fields.next()?, "Z" | "X" | "x") {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Owner {
    /// This process, as the owner of something of `kind`.
    pub fn me(kind: &str, session: Option<&str>) -> Self {
        let pid = std::process::id();
        Owner {
            instance: instance_id().to_string(),
            pid,
            pid_start: process_start(pid).unwrap_or(0),
            boot_id: boot_id().to_string(),
            machine_id: machine_id().to_string(),
            kind: kind.to_string(),
            session: session.map(str::to_string),
            created_at: unix_now(),
            uses: Vec::new(),
            images: Vec::new(),
            helper: None,
            pid_ns: pid_ns(),
            serving: None,
        }
    }

    pub fn uses(mut self, dirs: impl IntoIterator<Item = PathBuf>) -> Self {
        self.uses.extend(dirs);
        self
    }

    pub fn liveness(&self) -> Liveness {
        match self.own_liveness() {
            Liveness::Dead(_) if self.helper.as_ref().is_some_and(ProcessRef::alive) => {
                Liveness::Alive
            }
            l => l,
        }
    }

    /// The rule for an engine other machines may use too (`--engine`): only an owner labelled
    /// with this machine's id, this boot and this pid namespace is judged at all; anything
    /// else (another host, a host without a machine id, a cloned machine id with another boot,
    /// an older deskvm's labels) is Unknown, so it is never removed from here.
    pub fn liveness_on_shared_engine(&self) -> Liveness {
        let same_host = !self.machine_id.is_empty()
            && self.machine_id == machine_id()
            && !self.boot_id.is_empty()
            && self.boot_id == boot_id()
            && self.pid_ns != 0
            && self.pid_ns == pid_ns();
        if !same_host {
            return Liveness::Unknown(
                "not made by a deskvm of this machine and boot: not judged on an engine others may use".into(),
            );
        }
        self.liveness()
    }

    fn own_liveness(&self) -> Liveness {
        if !self.machine_id.is_empty() && self.machine_id != machine_id() {
            return Liveness::Unknown(format!(
                "made on another machine ({})",
                &self.machine_id[..self.machine_id.len().min(12)]
            ));
        }
        if !self.boot_id.is_empty() && self.boot_id != boot_id() {
            return Liveness::Dead("made before this machine last booted".into());
        }
        if self.pid_ns != 0 && pid_ns() != 0 && self.pid_ns != pid_ns() {
            return Liveness::Unknown(format!("made by pid {} in another pid namespace", self.pid));
        }
        match process_start(self.pid) {
            None => Liveness::Dead(format!(
                "its deskvm process (instance {}, pid {}) is gone",
                self.instance, self.pid
            )),
            Some(start) if self.pid_start != 0 && start != self.pid_start => {
                Liveness::Dead(format!(
                    "its deskvm process (instance {}, pid {}) is gone; the pid now belongs to another process",
                    self.instance, self.pid
                ))
            }
            // A marker without a start time: alive only if the pid is still a deskvm.
            Some(_) if self.pid_start == 0 && !is_deskvm(self.pid) => Liveness::Dead(format!(
                "its deskvm process (pid {}) is gone; the pid now belongs to another process",
                self.pid
            )),
            Some(_) => Liveness::Alive,
        }
    }

    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        self.save(&dir.join(MARKER))
    }

    /// Writes the owner to `path` (a temp file renamed over it: readers never see half).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, path)
    }

    pub fn load(path: &Path) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// The marker in `dir`, or None when it has none (then it is not deskvm's to touch).
    /// Markers of older deskvm versions (`pid N`) read as an owner without a start time.
    pub fn read(dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(dir.join(MARKER)).ok()?;
        if let Ok(owner) = serde_json::from_str(&text) {
            return Some(owner);
        }
        let pid = text.trim().strip_prefix("pid ")?.parse().ok()?;
        Some(Owner {
            instance: "unknown".into(),
            pid,
            pid_start: 0,
            boot_id: String::new(),
            machine_id: String::new(),
            kind: "unknown".into(),
            session: None,
            created_at: 0,
            uses: Vec::new(),
            images: Vec::new(),
            helper: None,
            pid_ns: 0,
            serving: None,
        })
    }

    pub fn labels(&self) -> HashMap<String, String> {
        let mut l = HashMap::from([
            (LABEL_INSTANCE.to_string(), self.instance.clone()),
            (LABEL_PID.to_string(), self.pid.to_string()),
            (LABEL_PID_START.to_string(), self.pid_start.to_string()),
            (LABEL_BOOT.to_string(), self.boot_id.clone()),
            (LABEL_MACHINE.to_string(), self.machine_id.clone()),
            (LABEL_KIND.to_string(), self.kind.clone()),
            (LABEL_CREATED.to_string(), self.created_at.to_string()),
            (LABEL_PID_NS.to_string(), self.pid_ns.to_string()),
        ]);
        if let Some(s) = &self.session {
            l.insert(LABEL_SESSION.to_string(), s.clone());
        }
        l
    }

    /// The owner recorded in a container's labels; None without deskvm's pid label.
    pub fn from_labels(l: &HashMap<String, String>) -> Option<Self> {
        let get = |k: &str| l.get(k).cloned().unwrap_or_default();
        Some(Owner {
            instance: l
                .get(LABEL_INSTANCE)
                .cloned()
                .unwrap_or_else(|| "unknown".into()),
            pid: l.get(LABEL_PID)?.parse().ok()?,
            pid_start: get(LABEL_PID_START).parse().unwrap_or(0),
            boot_id: get(LABEL_BOOT),
            machine_id: get(LABEL_MACHINE),
            kind: l
                .get(LABEL_KIND)
                .cloned()
                .unwrap_or_else(|| "session".into()),
            session: l.get(LABEL_SESSION).cloned(),
            created_at: get(LABEL_CREATED).parse().unwrap_or(0),
            uses: Vec::new(),
            images: Vec::new(),
            helper: None,
            pid_ns: get(LABEL_PID_NS).parse().unwrap_or(0),
            serving: None,
        })
    }
}

/// Whether `pid` runs a deskvm binary (for markers that predate start times).
fn is_deskvm(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("deskvm"))
        .unwrap_or(false)
}

/// A process deskvm started (QEMU on the local backend), recorded in its session's runtime dir
/// so that cleanup after a crash can find it and know it is still the same process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessRef {
    pub pid: u32,
    pub start: u64,
}

impl ProcessRef {
    pub fn of(pid: u32) -> Option<Self> {
        Some(ProcessRef {
            pid,
            start: process_start(pid)?,
        })
    }

    pub fn alive(&self) -> bool {
        process_start(self.pid) == Some(self.start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_reused_pid_is_not() {
        let me = Owner::me("session", Some("abc"));
        assert_eq!(me.liveness(), Liveness::Alive);
        let mut reused = me.clone();
        reused.pid_start += 1;
        assert!(matches!(reused.liveness(), Liveness::Dead(w) if w.contains("another process")));
        let mut rebooted = me.clone();
        rebooted.boot_id = "not-this-boot".into();
        assert!(matches!(rebooted.liveness(), Liveness::Dead(_)));
        let mut elsewhere = me.clone();
        elsewhere.machine_id = "another-machine".into();
        assert!(matches!(elsewhere.liveness(), Liveness::Unknown(_)));
    }

    #[test]
    fn a_running_helper_keeps_a_dead_owner_s_work_alive() {
        let mut owner = Owner::me("image_build", None);
        owner.pid_start += 1;
        assert!(matches!(owner.liveness(), Liveness::Dead(_)));
        owner.helper = ProcessRef::of(std::process::id());
        assert_eq!(owner.liveness(), Liveness::Alive);
    }

    #[test]
    fn a_finished_process_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let start = process_start(pid);
        child.wait().unwrap();
        let mut owner = Owner::me("session", None);
        owner.pid = pid;
        owner.pid_start = start.unwrap_or(1);
        assert!(matches!(owner.liveness(), Liveness::Dead(_)));
    }

    #[test]
    fn markers_and_labels_round_trip() {
        let dir = std::env::temp_dir().join(format!("deskvm-owner-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let me = Owner::me("ledger", Some("s1")).uses([PathBuf::from("/c/img")]);
        me.write(&dir).unwrap();
        assert_eq!(Owner::read(&dir), Some(me.clone()));
        std::fs::write(dir.join(MARKER), "pid 1\n").unwrap();
        assert_eq!(Owner::read(&dir).map(|o| o.pid), Some(1));
        std::fs::remove_dir_all(&dir).unwrap();
        let back = Owner::from_labels(&me.labels()).unwrap();
        assert_eq!((back.pid, back.pid_start), (me.pid, me.pid_start));
        assert_eq!(back.session, me.session);
        assert_eq!(back.liveness(), Liveness::Alive);
    }
}
