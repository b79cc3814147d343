//! The QEMU machine a session runs: one place builds its command line, so the ready state can be
//! keyed by exactly the device configuration that restores it.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The marker file in every directory deskvm creates (`storage::owner` writes and reads it; it is
/// here because this room, the lowest, checks it too).
pub const MARKER: &str = ".deskvm-owned";

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

/// The screen sizes and guest memory a machine may have (session starts and recipes check them).
pub const WIDTH_RANGE: (u32, u32) = (640, 1920);
pub const HEIGHT_RANGE: (u32, u32) = (480, 1200);
pub const MEMORY_RANGE: (u32, u32) = (512, 8192);

/// The guest NIC's MAC address: fixed, so a saved state's guest finds its NIC unchanged.
const GUEST_MAC: &str = "52:54:00:12:34:56";

/// A guest address (`addr:port`, on QEMU's user-mode network) whose TCP connections QEMU hands,
/// one `socat` each, to the unix socket `socket` (a path as QEMU sees it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFwd {
    pub addr: std::net::Ipv4Addr,
    pub port: u16,
    pub socket: PathBuf,
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
    /// QEMU's VNC server: a unix socket only deskvm (the live view's bridge) connects to.
    pub fn vnc(&self) -> PathBuf {
        self.dir.join("vnc.sock")
    }
    pub fn serial(&self) -> PathBuf {
        self.dir.join("serial.log")
    }
    pub fn qemu_log(&self) -> PathBuf {
        self.dir.join("qemu.log")
    }
    /// The session's companion dir on tmpfs (see [`shm_root`]), if the host has one.
    pub fn shm_dir(&self) -> Option<PathBuf> {
        Some(shm_root()?.join(self.dir.file_name()?))
    }
    /// The companion dir exists and is deskvm's (carries its owner marker).
    pub fn shm_in_use(&self) -> bool {
        self.shm_dir().is_some_and(|d| d.join(MARKER).is_file())
    }
    /// Where screendumps go: the tmpfs companion dir when it was made, else the runtime dir.
    pub fn screen(&self) -> PathBuf {
        match self.shm_dir() {
            Some(d) if self.shm_in_use() => d,
            _ => self.dir.clone(),
        }
        .join("screen.ppm")
    }
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.qcow2")
    }
}

/// `/dev/shm/deskvm-<uid>` when `/dev/shm` is a tmpfs with room (256 MiB free), where each
/// session keeps its screendumps: QEMU writes a 3 MB PPM per screenshot, and on tmpfs instead
/// of a disk-backed runtime dir a screenshot took ~3 ms less (p50 8.5 vs 11.5 ms, BENCHMARKS.md).
/// Only screendumps: the disk overlay, which grows with what the guest writes, stays on disk.
pub fn shm_root() -> Option<&'static Path> {
    static ROOT: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let c = std::ffi::CString::new("/dev/shm").ok()?;
        // SAFETY: `c` is a valid NUL-terminated path and `st` a zeroed statfs the call fills.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above; both pointers are valid for the duration of the call.
        if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
            return None;
        }
        const TMPFS_MAGIC: i64 = 0x0102_1994;
        let free = st.f_bavail as u64 * st.f_bsize as u64;
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        (st.f_type as i64 == TMPFS_MAGIC && free >= 256 << 20)
            .then(|| shm.join(format!("deskvm-{uid}")))
    })
    .as_deref()
}

/// The generation of the virtual hardware `machine_args` builds. Saved states load only into
/// the same devices: bump it whenever a device is added, removed or moved, so checkpoints of an
/// older generation are refused by name (and reclaimed) instead of failing to load. 2: the
/// virtio keyboard (`kbd0`) typing goes to.
pub const MACHINE_GENERATION: u32 = 2;

pub const KERNEL_CMDLINE: &str =
    "root=/dev/vda rw console=ttyS0 quiet loglevel=3 systemd.show_status=0 mitigations=off init_on_free=1";

/// The firmware an imported disk boots through (a recipe's image boots its kernel directly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// SeaBIOS, QEMU's default.
    Bios,
    /// OVMF (Debian's `ovmf`), for disks with an EFI system partition.
    Uefi,
}

/// Where OVMF lives, on the host and in the runtime image alike (Debian's `ovmf`).
pub const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

/// How the disk is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskBus {
    /// virtio-blk: fastest; every recipe image.
    Virtio,
    /// SATA (AHCI): any guest boots from it without drivers (Windows without virtio ones).
    Sata,
}

/// Where guest RAM lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Memory {
    /// Anonymous memory of the QEMU process; a saved state carries every page.
    Private,
    /// A RAM file (QEMU's VM templating): `writable` maps it shared, so the guest's memory is
    /// the file (how a template is made); otherwise it is mapped private and read-only, so
    /// sessions share every page they have not written and a saved state carries none of them.
    Template { ram: PathBuf, writable: bool },
}

#[derive(Debug, Clone)]
pub struct VmSpec {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Boot through this firmware from the disk instead of `kernel` and `initrd`.
    pub firmware: Option<Firmware>,
    pub disk_bus: DiskBus,
    pub memory_mb: u32,
    pub cpus: u32,
    pub width: u32,
    pub height: u32,
    pub accel: Accel,
    /// Open NAT (QEMU's user-mode network unrestricted). Otherwise the guest reaches nothing
    /// but the `guestfwd` addresses. Not part of the machine: one ready state serves every mode.
    pub network: bool,
    /// Guest addresses whose TCP connections QEMU hands to this host's unix sockets.
    pub guestfwd: Vec<GuestFwd>,
    pub memory: Memory,
    /// Load this saved state instead of booting.
    pub incoming: Option<PathBuf>,
    /// Do not start the guest (`-S`): a template builder loads a state only to save it again.
    pub paused: bool,
    /// The image the session's disk overlay is made over, for a backend whose QEMU does not see
    /// this host's files and makes the overlay itself (`Backend::files_on_host`).
    pub backing: Option<PathBuf>,
}

impl VmSpec {
    /// Everything that must be identical between saving and restoring a state. No paths.
    fn machine_args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["-nodefaults".into(), "-no-user-config".into()];
        // A RAM file is the machine's memory backend (`pc.ram` keeps the RAM block's name, so a
        // private state loads into a template builder). Shared or not, and the file's path, are
        // not part of the machine: a template saved shared loads into private clones.
        let machine = match self.memory {
            Memory::Private => "pc",
            Memory::Template { .. } => "pc,memory-backend=pc.ram",
        };
        a.extend(["-machine".into(), machine.into()]);
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
            "virtio-keyboard-pci,id=kbd0".into(),
            "-device".into(),
            "virtio-serial-pci".into(),
            "-device".into(),
            "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0".into(),
            "-display".into(),
            "none".into(),
        ]);
        match self.firmware {
            None => a.extend(["-append".into(), KERNEL_CMDLINE.into()]),
            Some(Firmware::Bios) => {}
            Some(Firmware::Uefi) => a.extend(["-bios".into(), OVMF.into()]),
        }
        if self.disk_bus == DiskBus::Sata {
            a.extend(["-device".into(), "ahci,id=ahci0".into()]);
        }
        // Every machine has the NIC, whatever its network: the device is part of a saved
        // state, the backend behind it (`netdev_arg`) is not, so one ready state resumes into
        // every network mode.
        a.extend([
            "-device".into(),
            format!("virtio-net-pci,netdev=net0,mac={GUEST_MAC}"),
        ]);
        a
    }

    /// QEMU's user-mode network for this session. `restrict=on` drops every packet the guest
    /// sends anywhere but the `guestfwd` addresses (DNS included); the policy is QEMU's, on the
    /// host, where the guest cannot change it.
    fn netdev_arg(&self) -> String {
        let mut n = String::from("user,id=net0,ipv6=off");
        if !self.network {
            n.push_str(",restrict=on");
        }
        for f in &self.guestfwd {
            // One `socat` per guest connection: a chardev would carry every connection to
            // the address over one stream. QEMU's option parser takes `,,` as a comma.
            let cmd = format!("socat STDIO UNIX-CONNECT:{}", path(&f.socket)).replace(',', ",,");
            n.push_str(&format!(",guestfwd=tcp:{}:{}-cmd:{cmd}", f.addr, f.port));
        }
        n
    }

    pub fn argv(&self, files: &RuntimeFiles) -> Vec<String> {
        let mut a = self.machine_args();
        a.extend(["-netdev".into(), self.netdev_arg()]);
        if self.firmware.is_none() {
            a.extend([
                "-kernel".into(),
                path(&self.kernel),
                "-initrd".into(),
                path(&self.initrd),
            ]);
        }
        let disk = path(&files.disk());
        match self.disk_bus {
            DiskBus::Virtio => a.extend([
                "-drive".into(),
                format!("file={disk},if=virtio,format=qcow2,cache=unsafe,discard=unmap"),
            ]),
            DiskBus::Sata => a.extend([
                "-drive".into(),
                format!("file={disk},if=none,id=disk0,format=qcow2,cache=unsafe,discard=unmap"),
                "-device".into(),
                "ide-hd,drive=disk0,bus=ahci0.0".into(),
            ]),
        }
        a.extend([
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
            // The live view. A display, not a device: no part of a saved state, so it stays out
            // of `machine_args` (ready states and checkpoints keep loading). Lossless (no JPEG)
            // and always shared, whatever a client asks.
            "-vnc".into(),
            format!("unix:{},share=force-shared", path(&files.vnc())),
        ]);
        if let Memory::Template { ram, writable } = &self.memory {
            let mapping = if *writable {
                "share=on"
            } else {
                "share=off,readonly=on,rom=off"
            };
            a.extend([
                "-object".into(),
                format!(
                    "memory-backend-file,id=pc.ram,size={}M,mem-path={},{mapping}",
                    self.memory_mb,
                    path(ram)
                ),
            ]);
        }
        if let Some(state) = &self.incoming {
            // A template clone's state is loaded once QMP has set `x-ignore-shared` (no
            // command-line switch sets it): see [`VmSpec::deferred_incoming`].
            let from = match self.deferred_incoming() {
                Some(_) => "defer".to_string(),
                None => format!("file:{}", path(state)),
            };
            a.extend(["-incoming".into(), from]);
        }
        if self.paused {
            a.push("-S".into());
        }
        a
    }

    /// The state to load over QMP with `x-ignore-shared` on: a template clone's (its RAM is
    /// the template file; the state holds devices only, or every page for a checkpoint).
    pub fn deferred_incoming(&self) -> Option<&Path> {
        match &self.memory {
            Memory::Template {
                writable: false, ..
            } => self.incoming.as_deref(),
            _ => None,
        }
    }

    /// The same machine with its RAM in `ram` (see [`Memory::Template`]).
    pub fn with_template(mut self, ram: PathBuf, writable: bool) -> Self {
        self.memory = Memory::Template { ram, writable };
        self
    }

    pub fn shares_memory(&self) -> bool {
        matches!(
            self.memory,
            Memory::Template {
                writable: false,
                ..
            }
        )
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
        VmSpec::for_tests()
    }

    impl VmSpec {
        /// The default machine with made-up paths.
        pub(crate) fn for_tests() -> VmSpec {
            VmSpec {
                kernel: "/k".into(),
                initrd: "/i".into(),
                firmware: None,
                disk_bus: DiskBus::Virtio,
                memory_mb: 1024,
                cpus: 2,
                width: 1280,
                height: 800,
                accel: Accel::Tcg,
                network: false,
                guestfwd: Vec::new(),
                memory: Memory::Private,
                incoming: None,
                paused: false,
                backing: None,
            }
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
    fn a_template_is_one_machine_whether_saved_shared_or_cloned_private() {
        let saving = spec().with_template("/c/ram.bin".into(), true);
        let mut clone = spec().with_template("/elsewhere/ram.bin".into(), false);
        assert_eq!(saving.fingerprint(), clone.fingerprint());
        assert_ne!(saving.fingerprint(), spec().fingerprint());
        let files = RuntimeFiles { dir: "/rt".into() };
        assert!(saving
            .argv(&files)
            .join(" ")
            .contains("mem-path=/c/ram.bin,share=on"));
        clone.incoming = Some("/s".into());
        let argv = clone.argv(&files).join(" ");
        assert!(argv.contains("share=off,readonly=on,rom=off"), "{argv}");
        assert!(argv.contains("-incoming defer"), "{argv}");
        assert_eq!(clone.deferred_incoming(), Some(Path::new("/s")));
    }

    #[test]
    fn no_network_unless_asked_and_one_machine_for_every_mode() {
        let files = RuntimeFiles { dir: "/rt".into() };
        let argv = spec().argv(&files).join(" ");
        assert!(
            argv.contains("-netdev user,id=net0,ipv6=off,restrict=on"),
            "{argv}"
        );
        assert!(argv.contains("path=/rt/qmp.sock"));
        let mut s = spec();
        s.network = true;
        s.guestfwd.push(GuestFwd {
            addr: [10, 0, 2, 100].into(),
            port: 3000,
            socket: "/rt/a,b.sock".into(),
        });
        let argv = s.argv(&files).join(" ");
        assert!(!argv.contains("restrict"), "{argv}");
        assert!(
            argv.contains(
                "guestfwd=tcp:10.0.2.100:3000-cmd:socat STDIO UNIX-CONNECT:/rt/a,,b.sock"
            ),
            "{argv}"
        );
        assert_eq!(s.fingerprint(), spec().fingerprint());
    }

    #[test]
    fn an_imported_disk_boots_through_firmware_from_sata() {
        let files = RuntimeFiles { dir: "/rt".into() };
        let mut s = spec();
        (s.firmware, s.disk_bus) = (Some(Firmware::Bios), DiskBus::Sata);
        let argv = s.argv(&files).join(" ");
        assert!(
            !argv.contains("-kernel") && !argv.contains("-append"),
            "{argv}"
        );
        assert!(argv.contains("-device ahci,id=ahci0"), "{argv}");
        assert!(argv.contains("bus=ahci0.0"), "{argv}");
        assert_ne!(s.fingerprint(), spec().fingerprint());
        s.firmware = Some(Firmware::Uefi);
        assert!(s.argv(&files).join(" ").contains(OVMF));
    }
}
