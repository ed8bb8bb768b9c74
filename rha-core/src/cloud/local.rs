//! The local provider: the replica's fixed-VHD files become a QEMU VM on the
//! appliance.
//!
//! ```text
//! <dir>/<vm name>/launch.json     the VM definition (machine, firmware, disks, network, argv)
//! <dir>/<vm name>/launch.sh       `exec qemu-system-x86_64 ...`: a person can read and run it
//! <dir>/<vm name>/qemu.pid        QEMU's pid while it runs (QEMU runs detached, -daemonize)
//! <dir>/<vm name>/console.log     the guest's serial console
//! <dir>/<vm name>/monitor.sock    QEMU's human monitor (stop_vm sends `quit`)
//! <dir>/<vm name>/qemu.log        what QEMU printed while starting
//! <dir>/<vm name>/OVMF_VARS.fd    the UEFI variable store of a generation 2 VM
//! ```
//!
//! The disks must no longer change when `create_vm` is called: stop applying
//! replication to them first (the switchover does), since the VM writes to
//! them and a raw disk gets a footer appended.
//!
//! A VM exists while its `launch.json` does. The disks stay where they are
//! (the replica directory): `launch.json` refers to them and deleting a VM
//! removes only the files above.
//!
//! Devices follow the guest: a Linux guest gets `virtio-blk` disks and a
//! `virtio-net` adapter; a Windows guest (which has no virtio drivers out of
//! the box) gets SATA (AHCI) disks and an `e1000e` adapter. Generation 1
//! boots with BIOS on the `pc` machine, generation 2 with UEFI (OVMF) on
//! `q35`. KVM is used when available, otherwise TCG.
//!
//! The network is QEMU's user-mode network, or with `network.virtual_network`
//! an existing host bridge (`-nic bridge`, through QEMU's bridge helper). The
//! provider itself never creates, changes or removes host network interfaces.
//!
//! The provider works synchronously inside its `async` methods (file work,
//! starting QEMU, and up to [`STOP_TIMEOUT`] plus a few seconds waiting in
//! `stop_vm`/`delete_vm`): call it from a thread that may block, such as
//! `tokio::task::spawn_blocking` or a current-thread runtime.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{CloudError, CloudProvider, DiskRef, VmId, VmInfo, VmSpec, VmState};
use crate::scenario::{HyperVGeneration, Os};
use crate::volume::vhd::{attach_footer, read_footer, AZURE_SIZE_ALIGNMENT, FOOTER_SIZE};

/// The QEMU program [`Qemu::Auto`] looks for on `PATH`.
pub const QEMU_PROGRAM: &str = "qemu-system-x86_64";

/// How long `stop_vm` waits for QEMU to exit before killing it.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The least memory, in MiB, a VM may have.
pub const MIN_MEMORY_MB: u64 = 64;

/// UEFI firmware for generation 2 VMs, in order of preference: a code image
/// and the variable store template copied next to the VM, or one combined
/// image (`-bios`).
const OVMF: [(&str, Option<&str>); 3] = [
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        Some("/usr/share/OVMF/OVMF_VARS.fd"),
    ),
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        Some("/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ),
    ("/usr/share/qemu/OVMF.fd", None),
];

const LAUNCH_JSON: &str = "launch.json";
const LAUNCH_SH: &str = "launch.sh";
const PID_FILE: &str = "qemu.pid";
const CONSOLE: &str = "console.log";
const MONITOR: &str = "monitor.sock";
const QEMU_LOG: &str = "qemu.log";
const VARS: &str = "OVMF_VARS.fd";
/// Every file the provider writes in a VM's directory (and deletes with it).
const VM_FILES: [&str; 7] = [
    LAUNCH_JSON,
    LAUNCH_SH,
    PID_FILE,
    CONSOLE,
    MONITOR,
    QEMU_LOG,
    VARS,
];

/// The longest path a Unix socket address holds (`sun_path` less the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Whether and which QEMU the [`LocalProvider`] starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Qemu {
    /// Start the VM if [`QEMU_PROGRAM`] is on `PATH`; otherwise only write
    /// the launch definition (the VM is then [`VmState::Stopped`]).
    #[default]
    Auto,
    /// Never start anything: only write the launch definition.
    Never,
    /// Start the VM with this program (when it is not an executable file,
    /// only the launch definition is written, as with `Auto`).
    Binary(PathBuf),
}

/// Runs switchover VMs with QEMU on this machine; see the [module docs](self).
#[derive(Debug)]
pub struct LocalProvider {
    dir: PathBuf,
    qemu: Qemu,
    /// Serialises creating and deleting within this process.
    lock: Mutex<()>,
}

impl LocalProvider {
    /// A provider keeping its VM definitions in `dir` (created when needed),
    /// starting VMs with [`Qemu::Auto`].
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LocalProvider {
            dir: dir.into(),
            qemu: Qemu::Auto,
            lock: Mutex::new(()),
        }
    }

    /// Chooses whether and which QEMU to start.
    pub fn with_qemu(mut self, q: Qemu) -> Self {
        self.qemu = q;
        self
    }

    /// The directory holding one sub-directory per VM.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The id of the VM named `name`.
    pub fn id_of(name: &str) -> VmId {
        VmId(format!("local:{name}"))
    }

    /// The QEMU program to start, or why none will be started.
    fn program(&self) -> Result<PathBuf, String> {
        match &self.qemu {
            Qemu::Never => Err("QEMU is disabled for this provider (Qemu::Never)".into()),
            Qemu::Auto => {
                find_on_path(QEMU_PROGRAM).ok_or_else(|| format!("{QEMU_PROGRAM} is not on PATH"))
            }
            Qemu::Binary(p) if is_executable(p) => Ok(p.clone()),
            Qemu::Binary(p) => Err(format!("{} is not an executable file", p.display())),
        }
    }

    /// The VM directory of an id, if the id is one of ours and names a VM
    /// that exists.
    fn existing(&self, id: &VmId) -> Result<(String, PathBuf), CloudError> {
        let not_found = || CloudError::NotFound { id: id.0.clone() };
        let name = id.0.strip_prefix("local:").ok_or_else(not_found)?;
        check_name(name).map_err(|_| not_found())?;
        let vm_dir = self.dir.join(name);
        if !vm_dir.join(LAUNCH_JSON).is_file() {
            return Err(not_found());
        }
        Ok((name.to_owned(), vm_dir))
    }

    /// Every check of `verify`; also returns each disk's absolute path and kind.
    fn check(&self, vm: &VmSpec) -> Result<(Vec<String>, Vec<DiskState>), CloudError> {
        let mut warnings = Vec::new();
        check_name(&vm.name).map_err(CloudError::Invalid)?;
        if vm.cpus == 0 {
            return Err(CloudError::Invalid(
                "0 CPUs: a VM needs at least one".into(),
            ));
        }
        if vm.memory_mb < MIN_MEMORY_MB {
            return Err(CloudError::Invalid(format!(
                "{} MiB of memory is too little; give the VM at least {MIN_MEMORY_MB} MiB",
                vm.memory_mb
            )));
        }
        if vm.disks.is_empty() {
            return Err(CloudError::Invalid("the VM has no disks".into()));
        }
        match vm.disks.iter().filter(|d| d.system).count() {
            1 => {}
            0 => {
                return Err(CloudError::Invalid(
                    "no disk is marked as the system disk; mark the volume the master boots \
                     from with `system = true`"
                        .into(),
                ))
            }
            n => {
                return Err(CloudError::Invalid(format!(
                    "{n} disks are marked as the system disk; exactly one must be"
                )))
            }
        }
        let mut disks = Vec::with_capacity(vm.disks.len());
        for d in &vm.disks {
            let state = inspect_disk(d)?;
            if disks.iter().any(|o: &DiskState| o.path == state.path) {
                return Err(CloudError::Invalid(format!(
                    "the disk file {} is listed twice",
                    state.path.display()
                )));
            }
            if let Some(w) = &state.warning {
                warnings.push(w.clone());
            }
            disks.push(state);
        }
        if let Some(br) = &vm.network.virtual_network {
            check_bridge_name(br).map_err(CloudError::Invalid)?;
            let sys = Path::new("/sys/class/net").join(br);
            if !sys.exists() {
                warnings.push(format!(
                    "the host bridge `{br}` does not exist ({} is missing): QEMU will not \
                     start until an administrator creates it; rha never changes the host's network",
                    sys.display()
                ));
            } else if !sys.join("bridge").exists() {
                warnings.push(format!(
                    "the host interface `{br}` is not a bridge: attach the VM to a bridge"
                ));
            }
        }
        if vm.network.subnet.is_some() || vm.network.private_ip.is_some() || vm.network.public_ip {
            warnings.push(
                "network subnet, private_ip and public_ip are Azure settings: the local VM \
                 ignores them (configure addresses inside the guest or on the bridge's network)"
                    .into(),
            );
        }
        if let Some(size) = &vm.size {
            warnings.push(format!(
                "the VM size `{size}` is an Azure setting: the local VM uses cpus and memory_mb"
            ));
        }
        match self.program() {
            Ok(_) => {
                if !kvm_usable() {
                    warnings.push(
                        "/dev/kvm is missing or not accessible: QEMU falls back to TCG \
                         emulation, which is many times slower"
                            .into(),
                    );
                }
            }
            Err(why) => warnings.push(format!(
                "{why}: the VM will not start, only its launch definition is written"
            )),
        }
        if vm.generation == HyperVGeneration::V2 && find_ovmf().is_none() {
            warnings.push(
                "generation 2 needs UEFI firmware but OVMF is not installed (package `ovmf`): \
                 the VM boots with BIOS instead, which a GPT/UEFI system disk cannot boot from"
                    .into(),
            );
        }
        Ok((warnings, disks))
    }

    fn create(&self, vm: &VmSpec) -> Result<VmInfo, CloudError> {
        let (mut warnings, disks) = self.check(vm)?;
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let dir = absolute(&self.dir)?;
        let vm_dir = dir.join(&vm.name);
        if vm_dir.join(LAUNCH_JSON).exists() {
            return Err(CloudError::AlreadyExists {
                name: vm.name.clone(),
            });
        }
        // A directory without launch.json is what an interrupted creation or
        // a failed start left: start afresh.
        fs::create_dir_all(&vm_dir).map_err(|e| io_err(&vm_dir, e))?;
        for f in VM_FILES {
            remove_if_exists(&vm_dir.join(f))?;
        }

        for d in &disks {
            d.finalise()?;
        }

        let program = self.program();
        let firmware = match vm.generation {
            HyperVGeneration::V1 => Firmware::Bios,
            HyperVGeneration::V2 => match find_ovmf() {
                Some((code, Some(vars))) => {
                    let copy = vm_dir.join(VARS);
                    fs::copy(vars, &copy).map_err(|e| io_err(&copy, e))?;
                    Firmware::Pflash {
                        code: code.into(),
                        vars: copy,
                    }
                }
                Some((image, None)) => Firmware::Combined(image.into()),
                None => Firmware::Bios,
            },
        };
        let def = LaunchDef::new(vm, &vm_dir, &disks, firmware, &program, &mut warnings);

        let script = vm_dir.join(LAUNCH_SH);
        write_file(&script, def.script().as_bytes())?;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755))
            .map_err(|e| io_err(&script, e))?;
        let json = serde_json::to_vec_pretty(&def)
            .map_err(|e| CloudError::Provider(format!("encoding launch.json: {e}")))?;
        // launch.json is written last and atomically: it is what makes the VM exist.
        let tmp = vm_dir.join("launch.json.tmp");
        write_file(&tmp, &json)?;
        let def_path = vm_dir.join(LAUNCH_JSON);
        fs::rename(&tmp, &def_path).map_err(|e| io_err(&def_path, e))?;

        let mut details = BTreeMap::new();
        details.insert("launch".to_owned(), script.display().to_string());
        details.insert("definition".to_owned(), def_path.display().to_string());
        details.insert(
            "console".to_owned(),
            vm_dir.join(CONSOLE).display().to_string(),
        );
        details.insert("firmware".to_owned(), def.firmware.to_owned());
        details.insert("program".to_owned(), def.program.clone());
        if let Some(m) = &def.monitor {
            details.insert("monitor".to_owned(), m.clone());
        }
        if let Some(rp) = &vm.recovery_point {
            details.insert("recovery_point".to_owned(), rp.clone());
        }

        let state = match program {
            Ok(program) => match start(&program, &def.argv, &vm_dir) {
                Ok(pid) => {
                    details.insert("pid".to_owned(), pid.to_string());
                    VmState::Running
                }
                Err(e) => {
                    // No VM: keep launch.sh and qemu.log for diagnosis only.
                    let _ = fs::remove_file(&def_path);
                    return Err(e);
                }
            },
            Err(_) => VmState::Stopped,
        };
        if !warnings.is_empty() {
            details.insert("warnings".to_owned(), warnings.join("\n"));
        }
        tracing::info!(vm = %vm.name, %state, launch = %script.display(), "local VM created");
        Ok(VmInfo {
            id: Self::id_of(&vm.name),
            name: vm.name.clone(),
            state,
            details,
        })
    }

    fn state(&self, id: &VmId) -> Result<VmState, CloudError> {
        let (_, vm_dir) = self.existing(id)?;
        Ok(match process(&vm_dir) {
            Process::Alive(_) => VmState::Running,
            Process::None => VmState::Stopped,
            Process::Gone(pid) => VmState::Failed(format!(
                "QEMU (pid {pid}) ended without removing its pid file: it was killed or \
                 crashed; see {}",
                vm_dir.join(CONSOLE).display()
            )),
        })
    }

    fn stop(&self, id: &VmId) -> Result<(), CloudError> {
        let (name, vm_dir) = self.existing(id)?;
        let pid_file = vm_dir.join(PID_FILE);
        let Process::Alive(pid) = process(&vm_dir) else {
            remove_if_exists(&pid_file)?;
            return Ok(());
        };
        let asked = quit_via_monitor(&vm_dir.join(MONITOR));
        if !asked {
            signal(pid, libc::SIGTERM);
        }
        if !wait_for_exit(&vm_dir, STOP_TIMEOUT) {
            tracing::warn!(vm = %name, pid, "QEMU did not exit in time: killing it");
            signal(pid, libc::SIGKILL);
            if !wait_for_exit(&vm_dir, Duration::from_secs(5)) {
                return Err(CloudError::Provider(format!(
                    "QEMU (pid {pid}) of VM `{name}` did not exit even after SIGKILL"
                )));
            }
        }
        remove_if_exists(&pid_file)?;
        remove_if_exists(&vm_dir.join(MONITOR))?;
        tracing::info!(vm = %name, pid, "local VM stopped");
        Ok(())
    }

    fn delete(&self, id: &VmId) -> Result<(), CloudError> {
        self.stop(id)?;
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let (name, vm_dir) = self.existing(id)?;
        // launch.json first: once it is gone the VM no longer exists.
        for f in VM_FILES {
            remove_if_exists(&vm_dir.join(f))?;
        }
        // Only our own files were removed; anything else (never a disk of
        // ours, but perhaps the operator's) keeps the directory.
        if let Err(e) = fs::remove_dir(&vm_dir) {
            tracing::warn!(vm = %name, dir = %vm_dir.display(), error = %e,
                "the VM's directory holds other files: left in place");
        }
        tracing::info!(vm = %name, "local VM deleted (its disks are kept)");
        Ok(())
    }
}

#[async_trait::async_trait]
impl CloudProvider for LocalProvider {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn verify(&self, vm: &VmSpec) -> Result<Vec<String>, CloudError> {
        self.check(vm).map(|(warnings, _)| warnings)
    }

    /// Finalises the disks as fixed VHDs (a raw image gets a footer, in
    /// place), writes `launch.json` and `launch.sh`, and starts QEMU unless
    /// it is disabled or missing (the VM is then [`VmState::Stopped`] and
    /// `launch.sh` starts it by hand). When QEMU fails to start, the error
    /// carries its complaint and no VM exists.
    async fn create_vm(&self, vm: &VmSpec) -> Result<VmInfo, CloudError> {
        self.create(vm)
    }

    /// Running while the QEMU process of the pid file lives; Stopped when it
    /// exited cleanly or never started; Failed when it died without cleaning up.
    async fn vm_state(&self, id: &VmId) -> Result<VmState, CloudError> {
        self.state(id)
    }

    /// Sends `quit` to QEMU's monitor (SIGTERM without one), waits up to
    /// [`STOP_TIMEOUT`], then kills it.
    async fn stop_vm(&self, id: &VmId) -> Result<(), CloudError> {
        self.stop(id)
    }

    async fn delete_vm(&self, id: &VmId) -> Result<(), CloudError> {
        self.delete(id)
    }
}

/// A disk as [`inspect_disk`] found it.
#[derive(Debug)]
struct DiskState {
    name: String,
    path: PathBuf,
    system: bool,
    /// True for a raw image that needs a footer.
    raw: bool,
    warning: Option<String>,
}

impl DiskState {
    fn finalise(&self) -> Result<(), CloudError> {
        if !self.raw {
            return Ok(());
        }
        let report = attach_footer(&self.path).map_err(|e| CloudError::Disk {
            path: self.path.display().to_string(),
            reason: format!("could not attach a fixed-VHD footer: {e}"),
        })?;
        tracing::info!(disk = %self.path.display(), virtual_size = report.size.virtual_size,
            "raw replica disk made a fixed VHD");
        Ok(())
    }
}

/// Checks that a disk is a local regular file holding a fixed VHD, or a raw
/// image that can become one, at least as large as the volume.
fn inspect_disk(d: &DiskRef) -> Result<DiskState, CloudError> {
    let bad = |reason: String| CloudError::Disk {
        path: d.location.clone(),
        reason,
    };
    if d.location.contains("://") {
        return Err(bad(
            "not a local file: the local provider runs VMs from files on this machine".into(),
        ));
    }
    let path = absolute(Path::new(&d.location))?;
    let meta = match fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(bad(format!(
                "does not exist (the replica disk of volume `{}`)",
                d.name
            )))
        }
        Err(e) => return Err(bad(format!("cannot be read: {e}"))),
    };
    if !meta.is_file() {
        return Err(bad(
            "not a regular file: only raw image and fixed-VHD files can become VM disks".into(),
        ));
    }
    let len = meta.len();
    let footer = read_footer(&path).map_err(|e| bad(format!("not a usable fixed VHD: {e}")))?;
    let (raw, warning) = match footer {
        Some(f) => {
            if f.current_size.checked_add(FOOTER_SIZE as u64) != Some(len) {
                return Err(bad(format!(
                    "the VHD footer says {} bytes of data but the file is {len} bytes long: \
                     the file was truncated or extended after the footer was written",
                    f.current_size
                )));
            }
            if f.current_size < d.size {
                return Err(bad(format!(
                    "the VHD holds {} bytes but volume `{}` has {}: it is not its replica",
                    f.current_size, d.name, d.size
                )));
            }
            let expected = d.size.checked_next_multiple_of(AZURE_SIZE_ALIGNMENT);
            let warning = (expected != Some(f.current_size)).then(|| {
                format!(
                    "disk {}: the VHD holds {} bytes, more than volume `{}` needs ({} bytes)",
                    path.display(),
                    f.current_size,
                    d.name,
                    d.size
                )
            });
            (false, warning)
        }
        None => {
            if len == 0 || len < d.size {
                return Err(bad(format!(
                    "the raw image is {len} bytes long but volume `{}` has {} bytes",
                    d.name, d.size
                )));
            }
            let warning = format!(
                "disk {}: a raw image; creating the VM makes it a fixed VHD in place by \
                 appending a 512-byte footer (the data is unchanged)",
                path.display()
            );
            (true, Some(warning))
        }
    };
    Ok(DiskState {
        name: d.name.clone(),
        path,
        system: d.system,
        raw,
        warning,
    })
}

/// The boot firmware of a VM.
enum Firmware {
    /// SeaBIOS, QEMU's default.
    Bios,
    /// OVMF as a read-only code image and a private copy of the variables.
    Pflash { code: PathBuf, vars: PathBuf },
    /// OVMF as one image (`-bios`).
    Combined(PathBuf),
}

/// `launch.json`: everything needed to understand and re-run the VM.
#[derive(Debug, Serialize)]
struct LaunchDef {
    name: String,
    cpus: u32,
    memory_mb: u64,
    os: Os,
    generation: HyperVGeneration,
    machine: &'static str,
    firmware: &'static str,
    firmware_files: Vec<String>,
    disks: Vec<LaunchDisk>,
    network: LaunchNet,
    recovery_point: Option<String>,
    program: String,
    argv: Vec<String>,
    pidfile: String,
    console: String,
    monitor: Option<String>,
    warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
struct LaunchDisk {
    name: String,
    path: String,
    format: &'static str,
    system: bool,
    bootindex: usize,
    device: &'static str,
}

#[derive(Debug, Serialize)]
struct LaunchNet {
    mode: &'static str,
    bridge: Option<String>,
    model: &'static str,
}

impl LaunchDef {
    fn new(
        vm: &VmSpec,
        vm_dir: &Path,
        disks: &[DiskState],
        firmware: Firmware,
        program: &Result<PathBuf, String>,
        warnings: &mut Vec<String>,
    ) -> LaunchDef {
        let windows = vm.os == Os::Windows;
        let machine = match vm.generation {
            HyperVGeneration::V1 => "pc",
            HyperVGeneration::V2 => "q35",
        };
        let pidfile = vm_dir.join(PID_FILE).display().to_string();
        let console = vm_dir.join(CONSOLE).display().to_string();
        let monitor_path = vm_dir.join(MONITOR).display().to_string();
        let monitor = if monitor_path.len() <= MAX_SOCKET_PATH {
            Some(monitor_path)
        } else {
            warnings.push(format!(
                "{monitor_path} is too long for a Unix socket: no monitor; stopping uses SIGTERM"
            ));
            None
        };

        let mut argv = Argv::default();
        let mut arg = |a: &str, v: String| argv.arg(a, v);
        arg("-name", opt_value(&vm.name));
        arg("-machine", machine.to_owned());
        arg("-accel", "kvm".to_owned());
        arg("-accel", "tcg".to_owned());
        arg("-m", vm.memory_mb.to_string());
        arg("-smp", vm.cpus.to_string());
        arg("-nodefaults", Argv::FLAG.into());
        arg("-vga", "std".to_owned());
        arg("-display", "none".to_owned());
        arg("-daemonize", Argv::FLAG.into());
        arg("-pidfile", pidfile.clone());
        arg("-serial", format!("file:{}", opt_value(&console)));
        if let Some(m) = &monitor {
            arg("-monitor", format!("unix:{},server,nowait", opt_value(m)));
        }
        let (firmware_name, firmware_files) = match &firmware {
            Firmware::Bios => {
                if vm.generation == HyperVGeneration::V2 {
                    warnings.push(
                        "generation 2 without OVMF (install package `ovmf`): booting with BIOS"
                            .into(),
                    );
                }
                ("bios", vec![])
            }
            Firmware::Pflash { code, vars } => {
                arg(
                    "-drive",
                    format!(
                        "if=pflash,format=raw,unit=0,readonly=on,file={}",
                        opt_value(&code.display().to_string())
                    ),
                );
                arg(
                    "-drive",
                    format!(
                        "if=pflash,format=raw,unit=1,file={}",
                        opt_value(&vars.display().to_string())
                    ),
                );
                (
                    "uefi",
                    vec![code.display().to_string(), vars.display().to_string()],
                )
            }
            Firmware::Combined(image) => {
                arg("-bios", image.display().to_string());
                ("uefi", vec![image.display().to_string()])
            }
        };

        // The system disk first, with boot index 0.
        let mut ordered: Vec<&DiskState> = disks.iter().filter(|d| d.system).collect();
        ordered.extend(disks.iter().filter(|d| !d.system));
        let mut launch_disks = Vec::with_capacity(ordered.len());
        for (i, d) in ordered.iter().enumerate() {
            let path = d.path.display().to_string();
            arg(
                "-drive",
                format!("file={},format=vpc,if=none,id=disk{i}", opt_value(&path)),
            );
            let device = if windows {
                // Six ports per AHCI controller.
                if i % 6 == 0 {
                    arg("-device", format!("ahci,id=sata{}", i / 6));
                }
                arg(
                    "-device",
                    format!(
                        "ide-hd,drive=disk{i},bus=sata{}.{},bootindex={i}",
                        i / 6,
                        i % 6
                    ),
                );
                "ide-hd (AHCI)"
            } else {
                arg(
                    "-device",
                    format!("virtio-blk-pci,drive=disk{i},bootindex={i}"),
                );
                "virtio-blk-pci"
            };
            launch_disks.push(LaunchDisk {
                name: d.name.clone(),
                path,
                format: "vpc",
                system: d.system,
                bootindex: i,
                device,
            });
        }

        let model = if windows { "e1000e" } else { "virtio-net-pci" };
        let network = match &vm.network.virtual_network {
            Some(br) => {
                arg("-nic", format!("bridge,br={},model={model}", opt_value(br)));
                LaunchNet {
                    mode: "bridge",
                    bridge: Some(br.clone()),
                    model,
                }
            }
            None => {
                arg("-nic", format!("user,model={model}"));
                LaunchNet {
                    mode: "user",
                    bridge: None,
                    model,
                }
            }
        };
        let argv = argv.0;

        LaunchDef {
            name: vm.name.clone(),
            cpus: vm.cpus,
            memory_mb: vm.memory_mb,
            os: vm.os,
            generation: vm.generation,
            machine,
            firmware: firmware_name,
            firmware_files,
            disks: launch_disks,
            network,
            recovery_point: vm.recovery_point.clone(),
            program: match program {
                Ok(p) => p.display().to_string(),
                Err(_) => QEMU_PROGRAM.to_owned(),
            },
            argv,
            pidfile,
            console,
            monitor,
            warnings: warnings.clone(),
        }
    }

    /// `launch.sh`: the same command line, shell-quoted.
    fn script(&self) -> String {
        let mut s = String::from("#!/bin/sh\n");
        s.push_str(&format!(
            "# Starts the rha switchover VM `{}` (written by rha's local provider).\n\
             # QEMU runs detached; its pid goes to {}, the serial console to {}.\n\
             # The disks are the replica's own files: this VM writes to them.\n",
            self.name, self.pidfile, self.console
        ));
        s.push_str("exec ");
        s.push_str(&shell_quote(&self.program));
        for a in &self.argv {
            s.push_str(" \\\n    ");
            s.push_str(&shell_quote(a));
        }
        s.push('\n');
        s
    }
}

/// A QEMU command line being built.
#[derive(Default)]
struct Argv(Vec<String>);

impl Argv {
    /// The value of an option that takes none (`-daemonize`).
    const FLAG: &'static str = "";

    fn arg(&mut self, option: &str, value: String) {
        self.0.push(option.to_owned());
        if value != Self::FLAG {
            self.0.push(value);
        }
    }
}

/// Escapes a value inside a QEMU option list (a comma is written twice).
fn opt_value(s: &str) -> String {
    s.replace(',', ",,")
}

/// Quotes an argument for a POSIX shell.
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./:=,+@%-".contains(&b));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Starts QEMU detached; returns its pid.
fn start(program: &Path, argv: &[String], vm_dir: &Path) -> Result<i32, CloudError> {
    let log_path = vm_dir.join(QEMU_LOG);
    let log = File::create(&log_path).map_err(|e| io_err(&log_path, e))?;
    let log2 = log.try_clone().map_err(|e| io_err(&log_path, e))?;
    let launch_err = |reason: String| CloudError::Launch {
        program: program.display().to_string(),
        reason,
    };
    // With -daemonize the parent exits once the VM is set up: its status
    // says whether QEMU accepted the configuration.
    let status = Command::new(program)
        .args(argv)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .status()
        .map_err(|e| launch_err(format!("could not run it: {e}")))?;
    if !status.success() {
        let said = fs::read_to_string(&log_path).unwrap_or_default();
        let said = said.trim();
        return Err(launch_err(format!(
            "it exited with {status}: {}(full output in {})",
            if said.is_empty() {
                String::new()
            } else {
                format!("{said} ")
            },
            log_path.display()
        )));
    }
    // The pid file is written before the parent returns; allow a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match process(vm_dir) {
            Process::Alive(pid) => return Ok(pid),
            _ if Instant::now() >= deadline => {
                return Err(launch_err(format!(
                    "it reported success but no live QEMU process is recorded in {}; see {}",
                    vm_dir.join(PID_FILE).display(),
                    vm_dir.join(CONSOLE).display()
                )))
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// What the pid file of a VM directory says about its QEMU.
enum Process {
    /// No pid file: never started, or exited cleanly (QEMU removes it).
    None,
    /// The QEMU process runs.
    Alive(i32),
    /// A pid file whose process is gone (or is no longer this VM's QEMU).
    Gone(i32),
}

fn process(vm_dir: &Path) -> Process {
    let pid_file = vm_dir.join(PID_FILE);
    let Ok(text) = fs::read_to_string(&pid_file) else {
        return Process::None;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return Process::None;
    };
    if pid <= 0 {
        return Process::None;
    }
    // SAFETY: kill with signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) } == 0
        || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return Process::Gone(pid);
    }
    // The pid may have been reused: it must be a QEMU with this pid file.
    // A zombie has an empty command line.
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if cmdline.is_empty() && exiting_threads(pid) {
        // A killed QEMU's main thread is a zombie before its other threads
        // have ended, and they still hold the disks open (with QEMU's
        // write locks): it is not gone until they are.
        return Process::Alive(pid);
    }
    let cmdline = String::from_utf8_lossy(&cmdline);
    if cmdline.contains("qemu") && cmdline.contains(&*pid_file.to_string_lossy()) {
        Process::Alive(pid)
    } else {
        Process::Gone(pid)
    }
}

/// Whether threads of process `pid` besides its main one still exist.
fn exiting_threads(pid: i32) -> bool {
    fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|d| d.count() > 1)
}

fn wait_for_exit(vm_dir: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !matches!(process(vm_dir), Process::Alive(_)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `quit` to a QEMU human monitor socket; false when that failed.
fn quit_via_monitor(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    s.write_all(b"quit\n").is_ok()
}

fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: sends a signal to a process we checked is this VM's QEMU.
    let _ = unsafe { libc::kill(pid, sig) };
}

/// Letters, digits, `.`, `_` and `-` (the name becomes a directory name).
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!(
            "VM name `{name}` must have 1 to 64 characters (letters, digits, `.`, `_`, `-`)"
        ));
    }
    if name == "." || name == ".." || name.starts_with('-') {
        return Err(format!("VM name `{name}` is not allowed"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "VM name `{name}` contains `{c}`; use letters, digits, `.`, `_` and `-` only"
        ));
    }
    Ok(())
}

/// A Linux interface name: 1 to 15 characters, no `/`, `,` or whitespace.
fn check_bridge_name(br: &str) -> Result<(), String> {
    let ok = !br.is_empty()
        && br.len() <= 15
        && br != "."
        && br != ".."
        && br
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{br}` is not a host bridge name (1 to 15 letters, digits, `.`, `_`, `-`)"
        ))
    }
}

fn find_ovmf() -> Option<(&'static str, Option<&'static str>)> {
    OVMF.into_iter().find(|(code, vars)| {
        Path::new(code).is_file() && vars.is_none_or(|v| Path::new(v).is_file())
    })
}

fn kvm_usable() -> bool {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn absolute(p: &Path) -> Result<PathBuf, CloudError> {
    std::path::absolute(p).map_err(|e| io_err(p, e))
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), CloudError> {
    fs::write(path, data).map_err(|e| io_err(path, e))
}

fn remove_if_exists(path: &Path) -> Result<(), CloudError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path, e)),
    }
}

fn io_err(path: &Path, source: io::Error) -> CloudError {
    CloudError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("web-01.example_vm").is_ok());
        for bad in ["", ".", "..", "-x", "a/b", "a b", "a,b", "ü"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_bridge_name("br0").is_ok());
        assert!(check_bridge_name("br0,x").is_err());
        assert!(check_bridge_name("a-very-long-bridge-name").is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("-m"), "-m");
        assert_eq!(shell_quote("file:/a b"), "'file:/a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(opt_value("/x,y"), "/x,,y");
    }

    #[test]
    fn ids() {
        let p = LocalProvider::new("/nonexistent-rha-dir");
        assert_eq!(LocalProvider::id_of("vm").to_string(), "local:vm");
        for id in ["vm", "azure:vm", "local:../x", "local:vm"] {
            assert!(matches!(
                p.existing(&VmId(id.into())),
                Err(CloudError::NotFound { .. })
            ));
        }
    }
}
