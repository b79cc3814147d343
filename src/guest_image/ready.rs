//! Ready states: a booted, idle desktop saved with QMP `migrate` to a file, plus the disk layer it
//! was saved with. A session resumes one in well under a second instead of booting for ~40 s.
//! A state only loads into the same QEMU build and device configuration, so both are in its key.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::GuestImage;
use crate::storage::{IoContext, IoError};
use crate::vm::spec::{hex, VmSpec};

/// Bumped when the way a ready state is made changes, so old states are not resumed.
const FORMAT: &str = "2";

#[derive(Debug, Clone)]
pub struct ReadyState {
    pub dir: PathBuf,
}

impl ReadyState {
    pub fn state(&self) -> PathBuf {
        self.dir.join("state.bin")
    }
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.qcow2")
    }
    pub fn meta(&self) -> PathBuf {
        self.dir.join("meta.json")
    }
    /// A template's guest RAM (see [`crate::vm::spec::Memory::Template`]).
    pub fn ram(&self) -> PathBuf {
        self.dir.join("ram.bin")
    }
    pub fn is_template(&self) -> bool {
        self.ram().exists()
    }

    /// Makes the disk and state read-only: every overlay started from them is backed by these
    /// exact files.
    pub fn seal(&self) -> Result<(), IoError> {
        use std::os::unix::fs::PermissionsExt;
        for f in [self.disk(), self.state(), self.ram()] {
            if f.exists() || f != self.ram() {
                std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o444))
                    .at("making read-only", &f)?;
            }
        }
        Ok(())
    }

    /// Finishes a state saved in this (partial) directory: writes its metadata last, then
    /// puts the directory where `target` goes, replacing an older save.
    pub fn publish(&self, target: &ReadyState, meta: &serde_json::Value) -> Result<(), IoError> {
        let path = self.meta();
        std::fs::write(&path, serde_json::to_vec_pretty(meta).unwrap_or_default())
            .at("writing", &path)?;
        if target.dir.exists() {
            std::fs::remove_dir_all(&target.dir).at("removing the older save", &target.dir)?;
        }
        std::fs::rename(&self.dir, &target.dir).at("publishing", &target.dir)
    }

    pub fn key(qemu_version: &str, spec: &VmSpec) -> String {
        let mut h = Sha256::new();
        h.update(FORMAT.as_bytes());
        h.update([0]);
        h.update(qemu_version.as_bytes());
        h.update([0]);
        h.update(spec.fingerprint().as_bytes());
        hex(&h.finalize()[..6])
    }

    pub fn path_for(image: &GuestImage, qemu_version: &str, spec: &VmSpec) -> Self {
        ReadyState {
            dir: image
                .dir
                .join(format!("ready-{}", Self::key(qemu_version, spec))),
        }
    }

    /// The state for this QEMU build and machine, if one was saved (meta.json is written last).
    pub fn find(image: &GuestImage, qemu_version: &str, spec: &VmSpec) -> Option<Self> {
        let r = Self::path_for(image, qemu_version, spec);
        (r.meta().exists() && r.state().exists() && r.disk().exists()).then_some(r)
    }

    /// Where the shared-memory template of `spec`'s machine goes (`spec` as a session runs it,
    /// with private memory).
    pub fn template_path(image: &GuestImage, qemu_version: &str, spec: &VmSpec) -> Self {
        Self::path_for(image, qemu_version, &Self::template_spec(spec))
    }

    /// The shared-memory template of `spec`'s machine, if one was made from the ready state
    /// there is now (a rebuilt ready state has another disk: a template of the old one would
    /// pair its memory with the new disk).
    pub fn find_template(image: &GuestImage, qemu_version: &str, spec: &VmSpec) -> Option<Self> {
        let private = Self::find(image, qemu_version, spec)?;
        let t = Self::find(image, qemu_version, &Self::template_spec(spec))
            .filter(Self::is_template)?;
        let made_from = std::fs::read(t.meta())
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|m| m["from_stamp"].as_str().map(str::to_string));
        (made_from.as_deref() == Some(private.stamp().as_str())).then_some(t)
    }

    /// Whether a guest agent answered when it was saved (absent from older saves: yes).
    pub fn has_agent(&self) -> bool {
        std::fs::read(self.meta())
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|m| m["agent"].as_bool())
            .unwrap_or(true)
    }

    /// Which save of this ready state it is: its saving time and state size.
    pub fn stamp(&self) -> String {
        let saved = std::fs::read(self.meta())
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|m| m["saved_at_unix"].as_u64())
            .unwrap_or(0);
        let len = std::fs::metadata(self.state())
            .map(|m| m.len())
            .unwrap_or(0);
        format!("{saved}:{len}")
    }

    fn template_spec(spec: &VmSpec) -> VmSpec {
        spec.clone().with_template(PathBuf::new(), false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::spec::VmSpec;

    fn write(r: &ReadyState, meta: serde_json::Value, template: bool) {
        std::fs::create_dir_all(&r.dir).unwrap();
        std::fs::write(r.state(), b"state").unwrap();
        std::fs::write(r.disk(), b"disk").unwrap();
        if template {
            std::fs::write(r.ram(), b"ram").unwrap();
        }
        std::fs::write(r.meta(), meta.to_string()).unwrap();
    }

    #[test]
    fn a_template_of_an_earlier_save_of_the_ready_state_is_not_used() {
        let root = std::env::temp_dir().join(format!("dv-ready-{}", std::process::id()));
        let recipe = super::super::recipe::Recipe::builtin("minimal").unwrap();
        let image = GuestImage {
            name: "x".into(),
            dir: root.clone(),
            meta: super::super::ImageMeta::of_recipe(&recipe),
        };
        let spec = VmSpec::for_tests();
        let private = ReadyState::path_for(&image, "q", &spec);
        write(&private, serde_json::json!({ "saved_at_unix": 1 }), false);
        let t = ReadyState::template_path(&image, "q", &spec);
        write(
            &t,
            serde_json::json!({ "from_stamp": private.stamp() }),
            true,
        );
        assert!(ReadyState::find_template(&image, "q", &spec).is_some());
        // The ready state is saved again: the template belongs to the old one.
        write(&private, serde_json::json!({ "saved_at_unix": 2 }), false);
        assert!(ReadyState::find_template(&image, "q", &spec).is_none());
        let _ = std::fs::remove_dir_all(&root);
    }
}
