//! Several Docker engines behind one server (`--engine`, repeatable): a session goes to the
//! engine with the most free memory among those that can run it, or to the one it names. An
//! engine that goes away fails only its own sessions.

use std::sync::Arc;

use bollard::query_parameters::ListContainersOptionsBuilder;

use super::docker::{DockerBackend, EngineSpec};
use super::{Backend, BackendError};
use crate::storage::owner::LABEL_SESSION;

/// Set on every session container: its memory limit in MiB, so free memory is one list call.
pub const LABEL_MEMORY_MB: &str = "deskvm.memory-mb";

pub struct Engines {
    members: Vec<Member>,
    /// MiB placed on each engine (by index) by starts whose container is not labelled yet:
    /// concurrent starts see each other's choices.
    pending: Arc<std::sync::Mutex<Vec<u64>>>,
}

enum Member {
    Up(Arc<DockerBackend>),
    /// Did not answer when the server started; listed, never chosen.
    Down {
        spec: EngineSpec,
        error: String,
    },
}

/// What `doctor` and `session_list` say about an engine.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct EngineStatus {
    pub name: String,
    /// `local` or the URL deskvm reaches it at.
    pub url: String,
    /// `bind_mounts` (this host's engine) or `exec` (everything through the Engine API).
    pub channel: String,
    pub healthy: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub memory_total_mib: u64,
    /// Memory limits of the deskvm session containers running there (any deskvm instance).
    pub memory_reserved_mib: u64,
    pub memory_free_mib: u64,
    pub deskvm_containers: usize,
    /// Whether it can start a session: the runtime image here, a guest image elsewhere.
    pub has_image: bool,
    pub qemu_version: String,
}

/// Where a session goes and why (the reason is in `session_start`'s result). Holds its
/// memory on the engine against other placements until the start is done.
pub struct Placement {
    pub backend: Arc<dyn Backend>,
    pub engine: String,
    pub reason: String,
    _held: Held,
}

struct Held {
    pending: Arc<std::sync::Mutex<Vec<u64>>>,
    index: usize,
    mib: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut p = self.pending.lock().expect("poisoned");
        p[self.index] = p[self.index].saturating_sub(self.mib);
    }
}

impl Engines {
    /// Connects every engine; those that do not answer are kept as down (the server serves
    /// with the others), but at least one must answer.
    pub async fn connect(
        specs: Vec<EngineSpec>,
        insecure: bool,
        cache: &std::path::Path,
        accel: crate::vm::spec::Accel,
    ) -> Result<Self, BackendError> {
        let mut names = std::collections::HashSet::new();
        let mut members = Vec::new();
        for spec in specs {
            if !names.insert(spec.name.clone()) {
                return Err(BackendError::Setup(format!(
                    "two engines are named {:?}: name them apart with NAME=URL",
                    spec.name
                )));
            }
            match DockerBackend::on(spec.clone(), insecure, cache, accel).await {
                Ok(b) => members.push(Member::Up(Arc::new(b))),
                Err(e) => {
                    tracing::warn!(engine = %spec.name, error = %e, "engine not available");
                    members.push(Member::Down {
                        spec,
                        error: e.to_string(),
                    })
                }
            }
        }
        if !members.iter().any(|m| matches!(m, Member::Up(_))) {
            let errors: Vec<String> = members
                .iter()
                .filter_map(|m| match m {
                    Member::Down { error, .. } => Some(error.clone()),
                    Member::Up(_) => None,
                })
                .collect();
            return Err(BackendError::Setup(format!(
                "no engine answered: {}",
                errors.join("; ")
            )));
        }
        let pending = Arc::new(std::sync::Mutex::new(vec![0; members.len()]));
        Ok(Engines { members, pending })
    }

    fn hold(&self, index: usize, mib: u64) -> Held {
        self.pending.lock().expect("poisoned")[index] += mib;
        Held {
            pending: self.pending.clone(),
            index,
            mib,
        }
    }

    /// The first engine that answered: image builds and templates use it.
    pub fn first(&self) -> Arc<DockerBackend> {
        self.up()
            .into_iter()
            .next()
            .expect("connect keeps at least one")
    }

    /// The engines that answered.
    pub fn up(&self) -> Vec<Arc<DockerBackend>> {
        self.members
            .iter()
            .filter_map(|m| match m {
                Member::Up(b) => Some(b.clone()),
                Member::Down { .. } => None,
            })
            .collect()
    }

    /// The engines that answered and share no filesystem with this host.
    pub fn remote(&self) -> Vec<Arc<DockerBackend>> {
        self.up()
            .into_iter()
            .filter(|b| !b.files_on_host())
            .collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.members.iter().map(|m| m.spec().name.clone()).collect()
    }

    pub async fn status(&self) -> Vec<EngineStatus> {
        let all = self.members.iter().map(|m| m.status());
        futures::future::join_all(all).await
    }

    /// The engine for a new session: `pin` if given, else the one with the most free memory
    /// among the healthy ones that have the image (ties go to the one named first) and, for
    /// `host_files` (a fork of a checkpoint), whose QEMU sees this host's files.
    pub async fn place(
        &self,
        pin: Option<&str>,
        host_files: bool,
        need_mib: u64,
    ) -> Result<Placement, BackendError> {
        let mut status = self.status().await;
        let pending = self.pending.lock().expect("poisoned").clone();
        for (s, held) in status.iter_mut().zip(pending) {
            s.memory_free_mib = s.memory_free_mib.saturating_sub(held);
        }
        if host_files && pin.is_none() {
            for (s, m) in status.iter_mut().zip(&self.members) {
                if !matches!(m, Member::Up(b) if b.files_on_host()) {
                    s.has_image = false;
                    s.error.get_or_insert_with(|| {
                        "its QEMU does not see this host's checkpoints".into()
                    });
                }
            }
        }
        if let Some(name) = pin {
            let i = self
                .members
                .iter()
                .position(|m| m.spec().name == name)
                .ok_or_else(|| {
                    BackendError::Setup(format!(
                        "no engine named {name:?}; valid: {}",
                        self.names().join(", ")
                    ))
                })?;
            let s = &status[i];
            return match (&self.members[i], s.healthy) {
                (Member::Up(b), true) => Ok(Placement {
                    backend: b.clone(),
                    engine: s.name.clone(),
                    reason: format!(
                        "pinned by session_start; {} MiB free there",
                        s.memory_free_mib
                    ),
                    _held: self.hold(i, need_mib),
                }),
                _ => Err(BackendError::Setup(format!(
                    "engine {name} is not available: {}",
                    s.error.clone().unwrap_or_default()
                ))),
            };
        }
        // An engine that cannot fit the session is not a choice, however it compares.
        for s in status.iter_mut() {
            if s.healthy && s.has_image && s.memory_free_mib < need_mib {
                s.has_image = false;
                s.error = Some(format!(
                    "{} MiB free, the session needs {need_mib}",
                    s.memory_free_mib
                ));
            }
        }
        let best = choose(&status).ok_or_else(|| {
            let why: Vec<String> = status
                .iter()
                .map(|s| match (&s.error, s.has_image) {
                    (Some(e), _) => format!("{}: {e}", s.name),
                    (None, false) => format!(
                        "{}: no guest image (run `deskvm image push --engine ...`)",
                        s.name
                    ),
                    (None, true) => format!("{}: ok", s.name),
                })
                .collect();
            BackendError::Setup(format!("no engine can start a session: {}", why.join("; ")))
        })?;
        let n_usable = status.iter().filter(|s| usable(s)).count();
        let s = &status[best];
        let Member::Up(b) = &self.members[best] else {
            unreachable!("usable engines are up")
        };
        Ok(Placement {
            backend: b.clone(),
            engine: s.name.clone(),
            reason: format!(
                "most free memory: {} MiB of {} MiB ({} deskvm containers there), among {} usable engine(s) of {}",
                s.memory_free_mib,
                s.memory_total_mib,
                s.deskvm_containers,
                n_usable,
                status.len()
            ),
            _held: self.hold(best, need_mib),
        })
    }
}

fn usable(s: &EngineStatus) -> bool {
    s.healthy && s.has_image
}

/// The usable engine with the most free memory; on equal memory the one named first.
fn choose(status: &[EngineStatus]) -> Option<usize> {
    (0..status.len())
        .filter(|&i| usable(&status[i]))
        // max_by keeps the last of equal maxima: compare indices reversed so the first wins.
        .max_by(|&a, &b| {
            let (x, y) = (&status[a], &status[b]);
            x.memory_free_mib.cmp(&y.memory_free_mib).then(b.cmp(&a))
        })
}

impl Member {
    fn spec(&self) -> &EngineSpec {
        match self {
            Member::Up(b) => b.engine(),
            Member::Down { spec, .. } => spec,
        }
    }

    async fn status(&self) -> EngineStatus {
        let spec = self.spec();
        let mut s = EngineStatus {
            name: spec.name.clone(),
            url: spec.url.clone().unwrap_or_else(|| "local".into()),
            channel: if spec.is_local() {
                "bind_mounts"
            } else {
                "exec"
            }
            .into(),
            healthy: false,
            error: None,
            memory_total_mib: 0,
            memory_reserved_mib: 0,
            memory_free_mib: 0,
            deskvm_containers: 0,
            has_image: false,
            qemu_version: String::new(),
        };
        let b = match self {
            Member::Down { error, .. } => {
                s.error = Some(format!("did not answer when the server started: {error}"));
                return s;
            }
            Member::Up(b) => b,
        };
        s.channel = if b.files_on_host() {
            "bind_mounts"
        } else {
            "exec"
        }
        .into();
        if !b.answering() {
            s.error = Some("stopped answering (no reply to its last pings)".into());
            return s;
        }
        let docker = b.docker();
        let probe = async {
            b.refresh_version().await;
            let total = b.memory_total().await?;
            let filters = std::collections::HashMap::from([(
                "label".to_string(),
                vec![LABEL_SESSION.to_string()],
            )]);
            let opts = ListContainersOptionsBuilder::new()
                .filters(&filters)
                .build();
            let containers = docker.list_containers(Some(opts)).await?;
            Ok::<_, bollard::errors::Error>((total, containers))
        };
        let probed = tokio::time::timeout(std::time::Duration::from_secs(3), probe).await;
        s.qemu_version = b.qemu_version().to_string();
        match probed {
            Ok(Ok((total, containers))) => {
                s.healthy = true;
                s.memory_total_mib = total >> 20;
                s.deskvm_containers = containers.len();
                s.memory_reserved_mib = containers
                    .iter()
                    .filter_map(|c| c.labels.as_ref()?.get(LABEL_MEMORY_MB)?.parse::<u64>().ok())
                    .sum();
                s.memory_free_mib = s.memory_total_mib.saturating_sub(s.memory_reserved_mib);
                s.has_image = !s.qemu_version.is_empty();
            }
            Ok(Err(e)) => s.error = Some(format!("engine error: {e}")),
            Err(_) => s.error = Some("did not answer within 3 s".into()),
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(name: &str, free: u64, healthy: bool, has_image: bool) -> EngineStatus {
        EngineStatus {
            name: name.into(),
            url: "tcp://x".into(),
            channel: "exec".into(),
            healthy,
            error: None,
            memory_total_mib: 16384,
            memory_reserved_mib: 16384 - free,
            memory_free_mib: free,
            deskvm_containers: 0,
            has_image,
            qemu_version: "q".into(),
        }
    }

    #[test]
    fn the_engine_with_most_free_memory_that_can_run_it_wins() {
        let s = [engine("a", 4000, true, true), engine("b", 9000, true, true)];
        assert_eq!(choose(&s), Some(1));
        // Equal: the one named first.
        let s = [engine("a", 9000, true, true), engine("b", 9000, true, true)];
        assert_eq!(choose(&s), Some(0));
        // More memory does not help an engine that is down or has no guest image.
        let s = [
            engine("a", 1000, true, true),
            engine("b", 9000, false, true),
            engine("c", 9000, true, false),
        ];
        assert_eq!(choose(&s), Some(0));
        let s = [engine("b", 9000, false, true)];
        assert_eq!(choose(&s), None);
    }
}
