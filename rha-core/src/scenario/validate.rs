//! Checking a scenario: every error and warning at once.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use super::model::{
    AzureReplica, BandwidthWindow, CaptureMethod, Check, FsyncPolicy, LocalReplica, Os, Product,
    Replica, Scenario, SwitchoverMode, Weekday, BLOCK_SIZE,
};

/// How serious a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The scenario cannot run as written.
    Error,
    /// The scenario runs, but probably not as intended.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem found in a scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Error or warning.
    pub severity: Severity,
    /// Key path of the setting concerned, such as `volumes[1].exclude`.
    pub path: String,
    /// A sentence saying what is wrong and what to do about it.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.severity, self.path, self.message)
    }
}

/// The result of [`Scenario::validate`]: every finding, errors first.
#[must_use]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Validation {
    findings: Vec<Finding>,
}

impl Validation {
    /// True when there are no errors (warnings allowed).
    pub fn is_ok(&self) -> bool {
        self.errors().next().is_none()
    }

    /// True when there are neither errors nor warnings.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }

    /// Every finding, errors first, each group in the order of the file.
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    /// The errors.
    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
    }

    /// The warnings.
    pub fn warnings(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Warning)
    }

    /// The finding about `path`, if any (the first, when there are several).
    pub fn find(&self, path: &str) -> Option<&Finding> {
        self.findings.iter().find(|f| f.path == path)
    }
}

impl fmt::Display for Validation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.findings.is_empty() {
            return f.write_str("no problems found");
        }
        for (i, finding) in self.findings.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{finding}")?;
        }
        Ok(())
    }
}

/// Journals smaller than this many MiB draw a warning.
pub const SMALL_JOURNAL_MB: u64 = 256;

/// Collects findings.
struct Checker {
    findings: Vec<Finding>,
}

impl Checker {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Error, path, message);
    }
    fn warning(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Warning, path, message);
    }
    fn push(&mut self, severity: Severity, path: impl Into<String>, message: impl Into<String>) {
        self.findings.push(Finding {
            severity,
            path: path.into(),
            message: message.into(),
        });
    }
    fn port(&mut self, path: &str, port: u16) {
        if port == 0 {
            self.error(
                path,
                "Port 0 is not a usable port; use a port from 1 to 65535 (rha's default is 25000).",
            );
        }
    }
    /// An error unless `value` has non-blank text; `what` names the setting
    /// and `hint` says what to put there.
    fn required(&mut self, path: &str, value: &str, what: &str, hint: &str) -> bool {
        if value.trim().is_empty() {
            self.error(path, format!("{what} is empty; {hint}."));
            false
        } else {
            true
        }
    }
}

pub(crate) fn validate(s: &Scenario) -> Validation {
    let mut c = Checker {
        findings: Vec::new(),
    };
    check_name(&mut c, &s.name);
    check_master(&mut c, s);
    match &s.replica {
        Replica::Local(r) => check_local(&mut c, s, r),
        Replica::Azure(r) => check_azure(&mut c, s, r),
    }
    if let Some(os) = s.vm.os_type {
        if os != s.master.os {
            c.warning(
                "vm.os_type",
                format!(
                    "The VM is declared as {os} but the master runs {}; the VM boots the master's own disks, so remove `os_type` or correct `master.os`.",
                    s.master.os
                ),
            );
        }
    }
    check_volumes(&mut c, s);
    check_nbd_capture(&mut c, s);
    check_sync(&mut c, s);
    check_journal(&mut c, s);
    check_is_alive(&mut c, s);
    check_switchover(&mut c, s);
    // Stable sort: errors first, file order kept within each severity.
    c.findings.sort_by_key(|f| f.severity);
    Validation {
        findings: c.findings,
    }
}

fn check_name(c: &mut Checker, name: &str) {
    if name.is_empty() {
        c.error(
            "name",
            "The scenario name is empty; give the scenario a name such as `web01-ha`.",
        );
    } else if name.len() > 64
        || !name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
        || name.starts_with(['.', '-'])
    {
        c.error(
            "name",
            format!(
                "The scenario name `{name}` is not allowed; use up to 64 letters, digits, `.`, `_` \
                 and `-`, not starting with `.` or `-`."
            ),
        );
    }
}

fn check_master(c: &mut Checker, s: &Scenario) {
    c.required(
        "master.host",
        &s.master.host,
        "The master's host",
        "set it to the host name or IP address the replica connects to",
    );
    c.port("master.port", s.master.port);
}

fn check_local(c: &mut Checker, s: &Scenario, r: &LocalReplica) {
    c.required(
        "replica.local.appliance",
        &r.appliance,
        "The appliance address",
        "set it to the host name or IP address of the appliance that holds the replica",
    );
    c.port("replica.local.port", r.port);
    if r.data_dir.as_os_str().is_empty() {
        c.error(
            "replica.local.data_dir",
            "The data directory for the replica disks is empty; set it to a directory on the appliance with room for every replicated volume.",
        );
    }
    let vm = &s.vm;
    if vm.name.trim().is_empty() {
        c.error(
            "vm.name",
            "The VM name is empty; name the VM that is started at switchover.",
        );
    } else if !vm
        .name
        .chars()
        .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
    {
        c.error(
            "vm.name",
            format!("The VM name `{}` contains characters QEMU does not accept; use letters, digits, `.`, `_` and `-`.", vm.name),
        );
    }
    match vm.cpus {
        None => c.error(
            "vm.cpus",
            "A local replica's VM needs a CPU count; set `cpus`, for example `cpus = 2`.",
        ),
        Some(0) => c.error(
            "vm.cpus",
            "A VM needs at least one CPU; set `cpus` to 1 or more.",
        ),
        Some(_) => {}
    }
    match vm.memory_mb {
        None => c.error(
            "vm.memory_mb",
            "A local replica's VM needs memory; set `memory_mb`, for example `memory_mb = 4096`.",
        ),
        Some(m) if m < 512 => c.error(
            "vm.memory_mb",
            format!(
                "{m} MiB is too little memory to boot a server; set `memory_mb` to at least 512."
            ),
        ),
        Some(_) => {}
    }
    for (field, set) in [
        ("vm.size", vm.size.is_some()),
        ("vm.resource_group", vm.resource_group.is_some()),
        ("vm.storage_account_type", vm.storage_account_type.is_some()),
    ] {
        if set {
            c.warning(
                field,
                "This Azure setting is ignored for a local replica; remove it.",
            );
        }
    }
    if let Some(ip) = &s.network.private_ip {
        check_ip(c, ip);
    }
}

fn check_azure(c: &mut Checker, s: &Scenario, r: &AzureReplica) {
    c.required(
        "replica.azure.appliance",
        &r.appliance,
        "The appliance address",
        "set it to the host name or IP address of the appliance that writes the blobs",
    );
    c.port("replica.azure.port", r.port);
    c.required(
        "replica.azure.account",
        &r.account,
        "The cloud account name",
        "add the account with `rha cloud account add` and put its name here",
    );
    if c.required(
        "replica.azure.region",
        &r.region,
        "The Azure region",
        "set it to a region's programmatic name such as `westeurope`",
    ) && !r
        .region
        .chars()
        .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit())
    {
        c.error(
            "replica.azure.region",
            format!(
                "`{}` is not an Azure region's programmatic name; use lower-case letters and digits only, such as `westeurope`.",
                r.region
            ),
        );
    }
    check_resource_group(c, "replica.azure.resource_group", &r.resource_group);
    let sa = &r.storage_account;
    if !(3..=24).contains(&sa.len())
        || !sa
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit())
    {
        c.error(
            "replica.azure.storage_account",
            format!("`{sa}` is not a valid storage account name; use 3 to 24 lower-case letters and digits."),
        );
    }
    let ct = &r.container;
    if !(3..=63).contains(&ct.len())
        || !ct
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')
        || ct.starts_with('-')
        || ct.ends_with('-')
        || ct.contains("--")
    {
        c.error(
            "replica.azure.container",
            format!("`{ct}` is not a valid blob container name; use 3 to 63 lower-case letters, digits and single hyphens, starting and ending with a letter or digit."),
        );
    }

    let vm = &s.vm;
    let os = vm.os_type.unwrap_or(s.master.os);
    check_azure_vm_name(c, &vm.name, os);
    match &vm.size {
        None => c.error(
            "vm.size",
            "An Azure VM needs a size; set `size`, for example `size = \"Standard_D2s_v3\"`.",
        ),
        Some(size) => {
            let rest = size.strip_prefix("Standard_").unwrap_or("");
            if rest.is_empty()
                || !rest
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
            {
                c.error(
                    "vm.size",
                    format!("`{size}` does not look like an Azure VM size; use a name such as `Standard_D2s_v3` (see `az vm list-sizes`)."),
                );
            }
        }
    }
    if let Some(rg) = &vm.resource_group {
        check_resource_group(c, "vm.resource_group", rg);
    }
    if let Some(t) = &vm.storage_account_type {
        if !t.is_known() {
            c.error(
                "vm.storage_account_type",
                format!(
                    "`{t}` is not a managed-disk type rha knows; use one of {}.",
                    super::model::StorageAccountType::KNOWN
                        .map(|k| format!("`{k}`"))
                        .join(", ")
                ),
            );
        }
    }
    for (field, set) in [
        ("vm.cpus", vm.cpus.is_some()),
        ("vm.memory_mb", vm.memory_mb.is_some()),
    ] {
        if set {
            c.warning(field, "This setting is ignored for an Azure replica, where the VM size decides; remove it.");
        }
    }
    let net = &s.network;
    match &net.virtual_network {
        Some(v) if !v.trim().is_empty() => check_azure_vnet(c, v),
        _ => c.error("network.virtual_network", "An Azure VM needs a virtual network; set `virtual_network` to an existing virtual network in the region."),
    }
    match &net.subnet {
        Some(v) if !v.trim().is_empty() => check_azure_subnet(c, v),
        _ => c.error(
            "network.subnet",
            "An Azure VM needs a subnet; set `subnet` to a subnet of the virtual network.",
        ),
    }
    if let Some(ip) = &net.private_ip {
        check_ip(c, ip);
        if ip.parse::<IpAddr>().is_ok_and(|a| a.is_ipv6()) {
            c.error("network.private_ip", format!("`{ip}` is an IPv6 address; the switchover VM's primary address is IPv4, such as `10.0.1.10`."));
        }
    }
    if let Some(size) = &vm.size {
        check_azure_size_features(c, s, size);
    }
    check_azure_is_alive_routes(c, s);
}

/// A virtual network: a name (in the VM's resource group) or a full resource id.
fn check_azure_vnet(c: &mut Checker, v: &str) {
    if v.starts_with('/') {
        let parts: Vec<&str> = v.trim_start_matches('/').split('/').collect();
        let ok = parts.len() == 8
            && parts[0].eq_ignore_ascii_case("subscriptions")
            && parts[2].eq_ignore_ascii_case("resourceGroups")
            && parts[4].eq_ignore_ascii_case("providers")
            && parts[5].eq_ignore_ascii_case("Microsoft.Network")
            && parts[6].eq_ignore_ascii_case("virtualNetworks")
            && parts.iter().all(|p| !p.is_empty());
        if !ok {
            c.error(
                "network.virtual_network",
                format!("`{v}` is not a virtual network resource id; write `/subscriptions/SUB/resourceGroups/RG/providers/Microsoft.Network/virtualNetworks/NAME`, or just the name of a virtual network in the VM's resource group."),
            );
        }
        return;
    }
    if !azure_network_name(v, 2, 64) {
        c.error(
            "network.virtual_network",
            format!("`{v}` is not a valid virtual network name; use 2 to 64 letters, digits, `_`, `.` and `-`, starting with a letter or digit and ending with a letter, digit or `_` (or give the virtual network's resource id)."),
        );
    }
}

fn check_azure_subnet(c: &mut Checker, v: &str) {
    if !azure_network_name(v, 1, 80) {
        c.error(
            "network.subnet",
            format!("`{v}` is not a valid subnet name; use 1 to 80 letters, digits, `_`, `.` and `-`, starting with a letter or digit and ending with a letter, digit or `_`."),
        );
    }
}

fn azure_network_name(v: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&v.chars().count())
        && v.chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-'))
        && v.starts_with(|ch: char| ch.is_ascii_alphanumeric())
        && v.ends_with(|ch: char| ch.is_ascii_alphanumeric() || ch == '_')
}

/// Premium disks and generation 2 need VM sizes that support them.
fn check_azure_size_features(c: &mut Checker, s: &Scenario, size: &str) {
    let Some(rest) = size.strip_prefix("Standard_") else {
        return;
    };
    let name = rest.split('_').next().unwrap_or("");
    if !name.chars().any(|ch| ch.is_ascii_digit()) {
        // Not a size name (reported by the format rule): nothing to say.
        return;
    }
    let family: String = name
        .chars()
        .take_while(|ch| ch.is_ascii_alphabetic())
        .collect();
    let features: String = name
        .chars()
        .skip_while(|ch| ch.is_ascii_alphabetic())
        .skip_while(|ch| ch.is_ascii_digit() || *ch == '-')
        .collect();
    let premium_capable = features.contains('s') || family.ends_with('S');
    let premium = s.vm.storage_account_type.as_ref().is_some_and(|t| {
        matches!(
            t.as_str(),
            "Premium_LRS" | "Premium_ZRS" | "PremiumV2_LRS" | "UltraSSD_LRS"
        )
    });
    if premium && !premium_capable {
        c.warning(
            "vm.storage_account_type",
            format!("`{size}` has no `s` in its name, so it probably cannot attach {} disks and the switchover would fail; choose a premium-capable size such as `Standard_D2s_v3`, or `StandardSSD_LRS` disks.", s.vm.storage_account_type.as_ref().map(|t| t.as_str()).unwrap_or("premium")),
        );
    }
    if s.vm.generation == super::model::HyperVGeneration::V2
        && (family == "A" || family.starts_with("Basic"))
    {
        c.warning(
            "vm.generation",
            format!("The A-series size `{size}` does not run generation 2 VMs; choose another size (such as `Standard_D2s_v3`), or `generation = 1` if the master boots with BIOS."),
        );
    }
}

/// The appliance of an Azure scenario runs in Azure: it reaches the master
/// only over a VPN or ExpressRoute, never through NAT.
fn check_azure_is_alive_routes(c: &mut Checker, s: &Scenario) {
    if !s.is_alive.enabled || s.master.nat || s.product == Product::Replication {
        // NAT and replication-only scenarios have their own warnings.
        return;
    }
    for (i, check) in s.is_alive.checks.iter().enumerate() {
        if let Check::Tcp { host, .. } = check {
            if is_private_host(host) {
                c.warning(
                    format!("is_alive.checks[{i}]"),
                    format!("The appliance runs in Azure and reaches `{host}`, a private address, only if its virtual network has a route to the master's network (site-to-site VPN or ExpressRoute); without one this check always fails and the master looks dead. Keep only the `heartbeat` check, which travels over the master's own connection, unless that route exists."),
                );
            }
        }
    }
}

fn is_private_host(host: &str) -> bool {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => a.is_private() || a.is_link_local() || a.is_loopback(),
        Ok(IpAddr::V6(a)) => a.is_loopback() || (a.segments()[0] & 0xfe00) == 0xfc00,
        Err(_) => {
            let h = host.to_ascii_lowercase();
            [".local", ".internal", ".lan", ".corp", ".home"]
                .iter()
                .any(|suffix| h.ends_with(suffix))
                || !h.contains('.')
        }
    }
}

fn check_ip(c: &mut Checker, ip: &str) {
    if ip.parse::<IpAddr>().is_err() {
        c.error(
            "network.private_ip",
            format!("`{ip}` is not an IP address; write it like `10.0.1.10`, or remove it for a dynamic address."),
        );
    }
}

fn check_resource_group(c: &mut Checker, path: &str, rg: &str) {
    let ok = (1..=90).contains(&rg.chars().count())
        && rg
            .chars()
            .all(|ch| ch.is_alphanumeric() || matches!(ch, '.' | '_' | '-' | '(' | ')'))
        && !rg.ends_with('.');
    if !ok {
        c.error(
            path,
            format!("`{rg}` is not a valid resource group name; use 1 to 90 letters, digits, `.`, `_`, `-`, `(` and `)`, not ending with `.`."),
        );
    }
}

fn check_azure_vm_name(c: &mut Checker, name: &str, os: Os) {
    let (max, dots, os_name) = match os {
        Os::Windows => (15, false, "Windows"),
        Os::Linux => (64, true, "Linux"),
    };
    let len = name.chars().count();
    if len == 0 {
        c.error(
            "vm.name",
            "The VM name is empty; name the VM that is created at switchover.",
        );
        return;
    }
    let mut problems = Vec::new();
    if len > max {
        problems.push(format!(
            "it is {len} characters long and {os_name} VM names are limited to {max}"
        ));
    }
    if !name
        .chars()
        .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || (dots && ch == '.'))
    {
        problems.push(if dots {
            "only letters, digits, `-` and `.` are allowed".to_owned()
        } else {
            "only letters, digits and `-` are allowed".to_owned()
        });
    }
    if name.ends_with(['-', '.']) {
        problems.push("it must not end with `-` or `.`".to_owned());
    }
    if os == Os::Windows && name.chars().all(|ch| ch.is_ascii_digit()) {
        problems.push("a Windows name cannot be only digits".to_owned());
    }
    if !problems.is_empty() {
        c.error(
            "vm.name",
            format!(
                "The VM name `{name}` is not valid in Azure: {}; choose another name.",
                problems.join(", ")
            ),
        );
    }
}

fn check_volumes(c: &mut Checker, s: &Scenario) {
    if s.volumes.is_empty() {
        c.error("volumes", "The scenario has no volumes; add a `[[volumes]]` entry for each of the master's volumes, with `system = true` on the one it boots from.");
        return;
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut systems = Vec::new();
    for (i, v) in s.volumes.iter().enumerate() {
        let base = format!("volumes[{i}]");
        if v.id.trim().is_empty() {
            c.error(format!("{base}.id"), "The volume id is empty; set it to the volume as the master names it, such as `C:` or `/`.");
        } else if let Some(first) = seen.insert(v.id.as_str(), i) {
            c.error(
                format!("{base}.id"),
                format!("Volume `{}` is listed twice (also as volumes[{first}]); remove one of the entries.", v.id),
            );
        }
        if v.system {
            systems.push(i);
            if v.exclude {
                c.error(
                    format!("{base}.exclude"),
                    format!("The system volume `{}` can never be excluded: without it the replica cannot boot; remove `exclude = true`.", v.id),
                );
            }
        }
        if v.size_bytes == Some(0) {
            c.error(
                format!("{base}.size_bytes"),
                "A volume cannot be 0 bytes; give its real size or remove `size_bytes`.",
            );
        }
    }
    match systems.as_slice() {
        [] => c.error("volumes", "No volume is marked as the system volume; add `system = true` to the volume the master boots from."),
        [_] => {}
        [_, rest @ ..] => {
            for i in rest {
                c.error(
                    format!("volumes[{i}].system"),
                    format!("More than one volume is marked `system = true` (volumes[{}] already is); keep it only on the volume the master boots from.", systems[0]),
                );
            }
        }
    }
    if s.volumes.iter().all(|v| v.exclude) {
        c.error("volumes", "Every volume is excluded, so nothing would be replicated; include at least the system volume.");
    }
}

/// `[capture] method = "nbd"`: the master engine serves every replicated
/// volume over NBD, so each needs an image or device `path` (a volume found
/// by its mount point is in use by the master's own filesystem, and a second
/// writer would corrupt it) with a distinct export name.
fn check_nbd_capture(c: &mut Checker, s: &Scenario) {
    if s.capture.method != CaptureMethod::Nbd {
        return;
    }
    let mut names: HashMap<String, usize> = HashMap::new();
    for (i, v) in s.volumes.iter().enumerate().filter(|(_, v)| !v.exclude) {
        let base = format!("volumes[{i}].path");
        if v.path.is_none() {
            c.error(
                base,
                format!("With `capture.method = \"nbd\"` the master engine serves volume `{}` over NBD, so it needs `path` = the image file or block device the VM or the NBD client uses (not a mounted filesystem: nothing else may write to it).", v.id),
            );
            continue;
        }
        match v.nbd_export_name(&s.name) {
            None => c.error(
                base,
                format!("The NBD export of volume `{}` is named after its file stem, but its path has none in UTF-8; rename the image.", v.id),
            ),
            Some(name) => {
                if let Some(first) = names.insert(name.clone(), i) {
                    c.error(
                        base,
                        format!("Volumes[{first}] and volumes[{i}] would both be NBD export `{name}` (exports are named `<scenario>/<file stem>`); give the images different file names."),
                    );
                }
            }
        }
    }
    if s.journal.fsync == FsyncPolicy::Always {
        c.warning(
            "journal.fsync",
            "With `capture.method = \"nbd\"` and `fsync = \"always\"` every guest write waits for a journal fdatasync; `interval` keeps NBD's own guarantee (a guest's flush and FUA writes still reach the disk's stable storage; after a crash and a reboot the change log's dirty regions are resynchronised) and is much faster.",
        );
    }
}

fn check_sync(c: &mut Checker, s: &Scenario) {
    let sync = &s.sync;
    if sync.block_size != BLOCK_SIZE {
        c.error(
            "sync.block_size",
            format!(
                "Block size {} is not supported: rha always replicates in {BLOCK_SIZE}-byte blocks, the sector-aligned unit of its journal, hash tree and VHD writes; remove `block_size` or set it to {BLOCK_SIZE}.",
                sync.block_size
            ),
        );
    }
    if sync.bandwidth_limit_kbps == Some(0) {
        c.error("sync.bandwidth_limit_kbps", "A bandwidth limit of 0 would stop replication; remove `bandwidth_limit_kbps` for no limit, or set a positive value.");
    }
    check_bandwidth_schedule(c, &sync.bandwidth_schedule);
}

fn check_bandwidth_schedule(c: &mut Checker, windows: &[BandwidthWindow]) {
    for (i, w) in windows.iter().enumerate() {
        let base = format!("sync.bandwidth_schedule[{i}]");
        let mut hours_ok = true;
        if w.from_hour > 23 {
            hours_ok = false;
            c.error(
                format!("{base}.from_hour"),
                format!("Hour {} does not exist; `from_hour` is the first hour of the window, from 0 to 23.", w.from_hour),
            );
        }
        if w.to_hour > 24 {
            hours_ok = false;
            c.error(
                format!("{base}.to_hour"),
                format!("Hour {} does not exist; `to_hour` is the hour the window ends, from 1 to 24 (24 is midnight at the end of the day).", w.to_hour),
            );
        }
        if hours_ok && w.from_hour >= w.to_hour {
            c.error(
                format!("{base}.to_hour"),
                format!(
                    "The window ends (hour {}) before it starts (hour {}); `to_hour` must be after `from_hour`. For a window across midnight write two windows, such as 22 to 24 and 0 to 6.",
                    w.to_hour, w.from_hour
                ),
            );
        }
        if w.limit_kbps == Some(0) {
            c.error(
                format!("{base}.limit_kbps"),
                "A bandwidth limit of 0 would stop replication inside this window; remove `limit_kbps` for no limit, or set a positive value.",
            );
        }
        let mut seen_days = std::collections::HashSet::new();
        for (j, day) in w.days.iter().enumerate() {
            if !seen_days.insert(*day) {
                c.warning(
                    format!("{base}.days[{j}]"),
                    format!("`{day}` is listed twice; remove one."),
                );
            }
        }
    }
    // Overlaps: the first matching window wins, so a later window that
    // overlaps an earlier one on the same day is partly ignored.
    for (j, later) in windows.iter().enumerate() {
        for (i, earlier) in windows.iter().enumerate().take(j) {
            let overlap = Weekday::ALL.into_iter().find(|&day| {
                (0..24u8).any(|hour| earlier.covers(day, hour) && later.covers(day, hour))
            });
            if let Some(day) = overlap {
                c.warning(
                    format!("sync.bandwidth_schedule[{j}]"),
                    format!(
                        "This window overlaps sync.bandwidth_schedule[{i}] on `{day}` (and maybe other days); the first matching window wins, so this one is ignored where they overlap. Make the windows disjoint, or list the one that should win first."
                    ),
                );
                break;
            }
        }
    }
}

fn check_journal(c: &mut Checker, s: &Scenario) {
    let j = &s.journal;
    if j.directory.as_os_str().is_empty() {
        c.error("journal.directory", "The journal directory is empty; set it to a directory on the master outside every replicated volume's hot path, such as a dedicated disk.");
    }
    if j.max_size_mb == 0 {
        c.error(
            "journal.max_size_mb",
            "A journal of 0 MiB cannot hold any change; set `max_size_mb` to at least 256.",
        );
    } else if j.max_size_mb < SMALL_JOURNAL_MB {
        c.warning(
            "journal.max_size_mb",
            format!("A {} MiB journal fills quickly when the link is slow or down, forcing a full resynchronisation; consider at least {SMALL_JOURNAL_MB} MiB.", j.max_size_mb),
        );
    }
    if j.fsync == FsyncPolicy::Interval && j.fsync_interval_ms == 0 {
        c.error("journal.fsync_interval_ms", "An fsync interval of 0 ms means every write; use `fsync = \"always\"` instead, or set a positive interval.");
    }
    if j.fsync != FsyncPolicy::Always && j.max_size_mb > 0 && j.memory_mb >= j.max_size_mb {
        c.warning(
            "journal.memory_mb",
            format!("`memory_mb` ({}) is not below `max_size_mb` ({}): the journal overflows (and resynchronises) before a single change reaches its files; keep `memory_mb` well below `max_size_mb`.", j.memory_mb, j.max_size_mb),
        );
    }
    if j.fsync == FsyncPolicy::Never {
        c.warning("journal.fsync", "With `fsync = \"never\"` a power failure on the master can lose journalled changes and force a full resynchronisation; prefer `always` or `interval`.");
    }
}

fn check_is_alive(c: &mut Checker, s: &Scenario) {
    let ia = &s.is_alive;
    if !ia.enabled {
        if s.product == Product::Ha {
            c.warning("is_alive.enabled", "Is-alive monitoring is disabled on an HA scenario, so a failed master is never detected; enable it or switch over manually.");
        }
        return;
    }
    if s.product == Product::Replication {
        c.warning("is_alive.enabled", "Is-alive monitoring has no effect in a replication-only scenario, which never switches over; set `enabled = false` or use `product = \"ha\"`.");
    }
    if ia.interval_secs < 1 {
        c.error(
            "is_alive.interval_secs",
            "The is-alive interval must be at least 1 second; set `interval_secs` to 1 or more.",
        );
    }
    if ia.timeout_secs <= ia.interval_secs {
        c.error(
            "is_alive.timeout_secs",
            format!(
                "The timeout ({} s) must be longer than the interval ({} s), or a single late check declares the master dead; raise `timeout_secs` above `interval_secs`, for example to {}.",
                ia.timeout_secs,
                ia.interval_secs,
                ia.interval_secs.max(1).saturating_mul(10)
            ),
        );
    }
    if ia.checks.is_empty() {
        c.error("is_alive.checks", "Is-alive is enabled but has no checks; add `[[is_alive.checks]]` with `type = \"heartbeat\"`.");
    }
    for (i, check) in ia.checks.iter().enumerate() {
        let base = format!("is_alive.checks[{i}]");
        match check {
            Check::Heartbeat => {}
            Check::Tcp { host, port } => {
                c.required(
                    &format!("{base}.host"),
                    host,
                    "The TCP check's host",
                    "set the host to connect to",
                );
                c.port(&format!("{base}.port"), *port);
            }
            Check::Command { program, .. } => {
                c.required(&format!("{base}.program"), program, "The command check's program", "set the program to run, which must exit with status 0 while the master is alive");
            }
        }
        if s.master.nat && !matches!(check, Check::Heartbeat) {
            c.warning(
                base,
                "The master is behind NAT (`master.nat = true`), so the replica cannot reach it and this check will always fail; use a `heartbeat` check instead.",
            );
        }
    }
}

fn check_switchover(c: &mut Checker, s: &Scenario) {
    let sw = &s.switchover;
    if sw.mode == SwitchoverMode::Automatic {
        if s.replica.is_cloud() {
            c.error("switchover.mode", "Automatic switchover is not available: cloud switchover is manual, because starting a cloud VM is billed and must be confirmed; set `mode = \"manual\"`.");
        } else if s.product == Product::Replication {
            c.error("switchover.mode", "A replication-only scenario never switches over; set `mode = \"manual\"` or use `product = \"ha\"`.");
        } else if !s.is_alive.enabled {
            c.error("switchover.mode", "Automatic switchover needs is-alive monitoring to detect a failed master; enable `is_alive` or set `mode = \"manual\"`.");
        }
    }
    if !sw.wait_for_journal {
        c.warning("switchover.wait_for_journal", "With `wait_for_journal = false` the VM starts before the journal is applied, and every change not yet applied is lost; set it to true unless a faster start is worth that data loss.");
    }
    if let Some(cmd) = &sw.disable_master_network {
        c.required(
            "switchover.disable_master_network.program",
            &cmd.program,
            "The program that disables the master's network",
            "set it, or remove `[switchover.disable_master_network]`",
        );
    }
}
