//! The QEMU machine a session runs: one place builds its command line, so the ready state can be
//! keyed by exactly the device configuration that restores it.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl std::str::FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => Err(format!(
                "unknown accelerator {other:?}; valid: kvm, tcg, auto"
            )),
        }
    }
}

/// Files of a running VM, all inside its private runtime directory.
#[derive(Debug, Clone)]
pub struct RuntimeFiles {
    pub dir: PathBuf,
}

impl RuntimeFiles {
    pub fn qmp(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    pub fn qga(&self) -> PathBuf {
        self.dir.join("qga.sock")
    }
    pub fn serial(&self) -> PathBuf {
        self.dir.join("serial.log")
    }
    pub fn qemu_log(&self) -> PathBuf {
        self.dir.join("qemu.log")
    }
    pub fn screen(&self) -> PathBuf {
        self.dir.join("screen.ppm")
    }
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.qcow2")
    }
}

pub const KERNEL_CMDLINE: &str =
    "root=/dev/vda rw console=ttyS0 quiet loglevel=3 systemd.show_status=0 mitigations=off init_on_free=1";

#[derive(Debug, Clone)]
pub struct VmSpec {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub memory_mb: u32,
    pub cpus: u32,
    pub width: u32,
    pub height: u32,
    pub accel: Accel,
    pub network: bool,
    /// Load this saved state instead of booting.
    pub incoming: Option<PathBuf>,
}

impl VmSpec {
    /// Everything that must be identical between saving and restoring a state. No paths.
    fn machine_args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["-nodefaults".into(), "-no-user-config".into()];
        a.extend(["-machine".into(), "pc".into()]);
        match self.accel {
            Accel::Kvm => a.extend(["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()]),
            Accel::Tcg => a.extend(["-accel".into(), "tcg,thread=multi".into()]),
        }
        a.extend([
            "-smp".into(),
            self.cpus.to_string(),
            "-m".into(),
            self.memory_mb.to_string(),
        ]);
        // The VGA EDID advertises the session's size as the preferred mode, which Xorg picks.
        a.extend([
            "-device".into(),
            format!("VGA,xres={},yres={},edid=on", self.width, self.height),
            // An absolute pointer on virtio-input: a 64-entry ring the guest refills on interrupt,
            // where usb-tablet queues 16 reports behind an emulated xHCI controller.
            "-device".into(),
            "virtio-tablet-pci".into(),
            "-device".into(),
            "virtio-serial-pci".into(),
            "-device".into(),
            "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0".into(),
            "-display".into(),
            "none".into(),
            "-append".into(),
            KERNEL_CMDLINE.into(),
        ]);
        if self.network {
            a.extend(["-nic".into(), "user,model=virtio-net-pci".into()]);
        } else {
            a.extend(["-nic".into(), "none".into()]);
        }
        a
    }

    pub fn argv(&self, files: &RuntimeFiles) -> Vec<String> {
        let mut a = self.machine_args();
        a.extend([
            "-kernel".into(),
            path(&self.kernel),
            "-initrd".into(),
            path(&self.initrd),
            "-drive".into(),
            format!(
                "file={},if=virtio,format=qcow2,cache=unsafe,discard=unmap",
                path(&files.disk())
            ),
            "-chardev".into(),
            format!(
                "socket,id=qmp0,path={},server=on,wait=off",
                path(&files.qmp())
            ),
            "-mon".into(),
            "chardev=qmp0,mode=control".into(),
            "-chardev".into(),
            format!(
                "socket,id=qga0,path={},server=on,wait=off",
                path(&files.qga())
            ),
            "-serial".into(),
            format!("file:{}", path(&files.serial())),
        ]);
        if let Some(state) = &self.incoming {
            a.extend(["-incoming".into(), format!("file:{}", path(state))]);
        }
        a
    }

    /// A short hash of the device configuration (for ready-state keys).
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for arg in self.machine_args() {
            h.update(arg.as_bytes());
            h.update([0]);
        }
        hex(&h.finalize()[..8])
    }
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            kernel: "/k".into(),
            initrd: "/i".into(),
            memory_mb: 1024,
            cpus: 2,
            width: 1280,
            height: 800,
            accel: Accel::Tcg,
            network: false,
            incoming: None,
        }
    }

    #[test]
    fn fingerprint_ignores_paths_but_not_devices() {
        let a = spec();
        let mut b = spec();
        b.kernel = "/elsewhere/k".into();
        b.incoming = Some("/state".into());
        assert_eq!(a.fingerprint(), b.fingerprint());
        b.width = 1024;
        assert_ne!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn no_network_unless_asked() {
        let files = RuntimeFiles { dir: "/rt".into() };
        let argv = spec().argv(&files).join(" ");
        assert!(argv.contains("-nic none"));
        assert!(argv.contains("path=/rt/qmp.sock"));
        let mut s = spec();
        s.network = true;
        assert!(s.argv(&files).join(" ").contains("-nic user"));
    }
}
