//! Ready states: a booted, idle desktop saved with QMP `migrate` to a file, plus the disk layer it
//! was saved with. A session resumes one in well under a second instead of booting for ~40 s.
//! A state only loads into the same QEMU build and device configuration, so both are in its key.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::GuestImage;
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
    pub fn seal(&self) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for f in [self.disk(), self.state(), self.ram()] {
            if f.exists() || f != self.ram() {
                std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o444))?;
            }
        }
        Ok(())
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

    /// The shared-memory template of `spec`'s machine, if one was made.
    pub fn find_template(image: &GuestImage, qemu_version: &str, spec: &VmSpec) -> Option<Self> {
        Self::find(image, qemu_version, &Self::template_spec(spec)).filter(Self::is_template)
    }

    fn template_spec(spec: &VmSpec) -> VmSpec {
        spec.clone().with_template(PathBuf::new(), false)
    }
}
