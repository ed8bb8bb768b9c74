//! Volume discovery on the master and free space on the appliance, as a
//! scenario wizard shows them before a scenario is saved.

use std::path::{Path, PathBuf};

use rha_core::scenario::{Scenario, VolumeSpec};
use rha_core::volume::open_volume_read_only;
use serde::Serialize;

use super::EngineError;

/// A volume of this machine (a mounted block device).
#[derive(Debug, Clone, Serialize)]
pub struct Mounted {
    /// Where it is mounted.
    pub mount_point: String,
    /// The device.
    pub device: String,
    /// Its size in bytes (0 when unknown).
    pub size: u64,
    /// The filesystem type.
    pub fs_type: String,
    /// Whether it is the system volume (mounted at `/`).
    pub system: bool,
}

/// A scenario volume as found on the master.
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    /// The scenario's id for it.
    pub id: String,
    /// The device or image that holds it.
    pub path: Option<PathBuf>,
    /// Its size in bytes.
    pub size: Option<u64>,
    /// The scenario marks it as the system volume.
    pub system: bool,
    /// Excluded from replication.
    pub exclude: bool,
    /// What is wrong, if anything.
    pub problem: Option<String>,
}

/// Block-device mounts of this machine, from `/proc/self/mounts`.
pub fn mounts() -> Vec<Mounted> {
    let text = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(dev), Some(mp), Some(fs)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if !dev.starts_with("/dev/") {
            continue;
        }
        let mount_point = unescape(mp);
        out.push(Mounted {
            size: device_size(Path::new(dev)).unwrap_or(0),
            system: mount_point == "/",
            mount_point,
            device: dev.to_owned(),
            fs_type: fs.to_owned(),
        });
    }
    out
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\134", "\\")
}

fn device_size(dev: &Path) -> Option<u64> {
    let real = std::fs::canonicalize(dev).ok()?;
    let name = real.file_name()?.to_str()?.to_owned();
    let sectors: u64 = std::fs::read_to_string(format!("/sys/class/block/{name}/size"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(sectors * 512)
}

/// The device or image of a scenario volume: its `path`, or the device mounted at its id.
pub fn volume_path(v: &VolumeSpec) -> Result<PathBuf, EngineError> {
    if let Some(p) = &v.path {
        return Ok(p.clone());
    }
    mounts()
        .into_iter()
        .find(|m| m.mount_point == v.id)
        .map(|m| PathBuf::from(m.device))
        .ok_or_else(|| EngineError::Volume {
            volume: v.id.clone(),
            path: PathBuf::new(),
            reason: "it has no `path` and no block device is mounted there on this master: add `path = \"/dev/...\"` (or an image file) to the volume".into(),
        })
}

/// The scenario's volumes as found on this (master) machine.
pub fn scenario_volumes(s: &Scenario) -> Vec<Found> {
    s.volumes
        .iter()
        .map(|v| {
            let (path, size, problem) = match volume_path(v) {
                Err(e) => (None, None, Some(e.to_string())),
                Ok(p) => match open_volume_read_only(&p) {
                    Ok(vol) => (Some(p), Some(vol.size()), None),
                    Err(e) => (Some(p), None, Some(format!("cannot open it: {e}"))),
                },
            };
            Found {
                id: v.id.clone(),
                path,
                size,
                system: v.system,
                exclude: v.exclude,
                problem,
            }
        })
        .collect()
}

/// Free bytes of the filesystem holding `path` (or its nearest existing parent).
pub fn free_space(path: &Path) -> Option<u64> {
    let mut p = path.to_path_buf();
    while !p.exists() {
        p = p.parent()?.to_path_buf();
    }
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if r != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}
