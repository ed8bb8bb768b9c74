//! `rha cloud`: cloud accounts, the VMs of a region, and switchover VMs in Azure.
//!
//! ```text
//! rha cloud account add NAME --subscription ID --tenant ID --app-id ID   secret on stdin or --secret-env VAR
//! rha cloud account list | test NAME | remove NAME
//! rha cloud appliances --account NAME --region REGION
//! rha cloud vm create SCENARIO.toml [--point latest|NAME|SEQ] [--disk VOLUME=BLOB-URL ...] [--keep-on-failure]
//! rha cloud vm status|stop|start|delete (--scenario FILE | --account NAME --id VM-ID)
//! ```
//!
//! Secrets are never taken from the command line (it shows in `ps`), never
//! printed, and live in the accounts file (mode 0600): `--store PATH` or
//! `RHA_ACCOUNTS`, by default `~/.config/rha/accounts.json`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use rha_azure::account::{test_account, AccountError, AccountStore, AzureAccount, ClientSecret};
use rha_azure::arm::{ArmOptions, AzureApi, PowerAction, SdkArm, TAG_CREATED_BY, TAG_ROLE};
use rha_azure::provider::{list_region_vms, state_of, AzureProvider, AzureTarget};
use rha_core::cloud::{CloudProvider, DiskRef, VmId, VmSpec};
use rha_core::scenario::{Replica, Scenario};

use crate::remote::{ExitError, EXIT_FAILED, EXIT_INVALID, EXIT_STATE, EXIT_UNREACHABLE};

/// `rha cloud`.
#[derive(Debug, Args)]
pub struct CloudArgs {
    /// The accounts file (default `$XDG_CONFIG_HOME/rha/accounts.json`, or
    /// `~/.config/rha/accounts.json`).
    #[arg(long, env = "RHA_ACCOUNTS", global = true, value_name = "PATH")]
    store: Option<PathBuf>,
    #[command(subcommand)]
    command: CloudCommand,
}

#[derive(Debug, Subcommand)]
enum CloudCommand {
    /// Add, list, test and remove cloud accounts (Azure service principals).
    #[command(subcommand)]
    Account(AccountCommand),
    /// List the VMs of a region: the appliances a scenario can replicate to
    /// (tagged `rha-role=appliance`, listed first) and switchover VMs.
    Appliances {
        /// The account to list with.
        #[arg(long)]
        account: String,
        /// The region's programmatic name (`westeurope`).
        #[arg(long)]
        region: String,
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Switchover VMs in Azure.
    #[command(subcommand)]
    Vm(VmCommand),
}

#[derive(Debug, Subcommand)]
enum AccountCommand {
    /// Add an Azure account. The client secret is read from standard input
    /// (hidden when typed) or from the environment variable --secret-env
    /// names; never from the command line.
    Add {
        /// The name scenarios use (`replica.azure.account`).
        name: String,
        /// The subscription id.
        #[arg(long)]
        subscription: String,
        /// The directory (tenant) id, or its domain.
        #[arg(long)]
        tenant: String,
        /// The application (client) id of the service principal.
        #[arg(long = "app-id")]
        app_id: String,
        /// Read the secret from this environment variable instead of standard input.
        #[arg(long, value_name = "VAR")]
        secret_env: Option<String>,
        /// Azure AD's authority host (another cloud, or a test server).
        #[arg(long, value_name = "URL")]
        authority_host: Option<String>,
        /// Resource Manager's endpoint (another cloud, or a test server).
        #[arg(long, value_name = "URL")]
        arm_endpoint: Option<String>,
        /// The blob service of the scenarios' storage accounts (another
        /// cloud; an Azurite address such as
        /// `http://127.0.0.1:10000/devstoreaccount1` uses Azurite's
        /// development account).
        #[arg(long, value_name = "URL")]
        blob_endpoint: Option<String>,
        /// Replace an account of the same name.
        #[arg(long)]
        replace: bool,
        /// Get a token first and add the account only if that works.
        #[arg(long)]
        test: bool,
    },
    /// List the accounts (never their secrets).
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Prove an account: get a Resource Manager token with its service principal.
    Test {
        /// The account.
        name: String,
        /// One JSON line.
        #[arg(long)]
        json: bool,
    },
    /// Remove an account.
    Remove {
        /// The account.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum VmCommand {
    /// Create (switch over to) the VM of an Azure scenario from a recovery
    /// point of its replica page blobs: managed disks, NIC, VM. Without an
    /// engine: stop the scenario first (or use `rha scenario switchover`).
    Create {
        /// The scenario file.
        scenario: PathBuf,
        /// The recovery point: `latest` (the replica as it is; a snapshot is
        /// taken), a bookmark's name or id, `seq:N`, or a bare sequence.
        #[arg(long, default_value = "latest", conflicts_with = "disks")]
        point: String,
        /// Override: a replica disk as `VOLUME=URL`, such as
        /// `C:=https://acct.blob.core.windows.net/sql01/disk-0.vhd`; one per
        /// replicated volume, instead of a recovery point.
        #[arg(long = "disk", value_name = "VOLUME=URL")]
        disks: Vec<String>,
        /// Text for the report and the VM's tags: which point in time the disks hold.
        #[arg(long, value_name = "TEXT")]
        recovery_point: Option<String>,
        /// Leave what a failed attempt created in place instead of deleting it.
        #[arg(long)]
        keep_on_failure: bool,
        /// One JSON document.
        #[arg(long)]
        json: bool,
    },
    /// The VM's state.
    Status {
        #[command(flatten)]
        target: VmTarget,
        /// One JSON line.
        #[arg(long)]
        json: bool,
    },
    /// Stop the VM (deallocated: no compute billing).
    Stop {
        #[command(flatten)]
        target: VmTarget,
        /// Power off only, keeping the VM allocated (and billed).
        #[arg(long)]
        power_off_only: bool,
    },
    /// Start a stopped VM.
    Start {
        #[command(flatten)]
        target: VmTarget,
    },
    /// Delete the VM and the NIC and public IP rha made for it. The replica
    /// page blobs are never deleted; the managed disks are kept unless
    /// --delete-disks.
    Delete {
        #[command(flatten)]
        target: VmTarget,
        /// Also delete the VM's managed disks (what the VM wrote since the switchover).
        #[arg(long)]
        delete_disks: bool,
    },
}

/// Which VM: a scenario's, or an account and a resource id.
#[derive(Debug, Args)]
struct VmTarget {
    /// The scenario whose VM it is.
    #[arg(long, conflicts_with_all = ["account", "id"], required_unless_present = "id")]
    scenario: Option<PathBuf>,
    /// The account (with --id).
    #[arg(long, requires = "id")]
    account: Option<String>,
    /// The VM's resource id (with --account).
    #[arg(long, requires = "account")]
    id: Option<String>,
}

fn exit(code: u8, message: impl Into<String>) -> anyhow::Error {
    ExitError {
        code,
        message: message.into(),
    }
    .into()
}

/// The exit code of an account error.
fn account_exit(e: AccountError) -> anyhow::Error {
    let code = match &e {
        AccountError::Auth(a) if a.is_credentials() => EXIT_UNREACHABLE,
        AccountError::Auth(_) => EXIT_UNREACHABLE,
        AccountError::Io { .. } => EXIT_FAILED,
        _ => EXIT_INVALID,
    };
    exit(code, e.to_string())
}

fn cloud_exit(e: rha_core::cloud::CloudError) -> anyhow::Error {
    use rha_core::cloud::CloudError as C;
    let code = match &e {
        C::NotFound { .. } | C::AlreadyExists { .. } => EXIT_STATE,
        C::Invalid(_) | C::Disk { .. } => EXIT_INVALID,
        _ => EXIT_FAILED,
    };
    exit(code, e.to_string())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// `rha cloud ...`.
pub fn run(args: CloudArgs) -> Result<ExitCode> {
    let store = AccountStore::locate(args.store.as_deref()).map_err(account_exit)?;
    match args.command {
        CloudCommand::Account(cmd) => account(cmd, &store),
        CloudCommand::Appliances {
            account,
            region,
            json,
        } => {
            let account = store.get(&account).map_err(account_exit)?;
            let api = arm(&account)?;
            let vms = runtime()?
                .block_on(list_region_vms(api.as_ref(), &region))
                .map_err(|e| exit(EXIT_FAILED, e.to_string()))?;
            if json {
                let rows: Vec<serde_json::Value> = vms
                    .iter()
                    .map(|v| {
                        serde_json::json!({
                            "name": v.name, "id": v.id, "resource_group": v.resource_group,
                            "location": v.location, "size": v.size, "os": v.os_type,
                            "power_state": v.power_state, "tags": v.tags,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if vms.is_empty() {
                println!(
                    "no VMs in {region} of subscription {}",
                    account.subscription_id
                );
            } else {
                println!(
                    "{:<24} {:<20} {:<18} {:<12} ROLE",
                    "NAME", "RESOURCE GROUP", "SIZE", "POWER"
                );
                for v in &vms {
                    let role = match (
                        v.tags.get(TAG_ROLE).map(String::as_str),
                        v.tags.get(TAG_CREATED_BY).map(String::as_str),
                    ) {
                        (Some("appliance"), _) => "appliance",
                        (_, Some("rha")) => "switchover VM",
                        _ => "-",
                    };
                    println!(
                        "{:<24} {:<20} {:<18} {:<12} {role}",
                        v.name,
                        v.resource_group,
                        v.size.as_deref().unwrap_or("-"),
                        v.power_state.as_deref().unwrap_or("unknown"),
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        CloudCommand::Vm(cmd) => vm(cmd, &store),
    }
}

fn arm(account: &AzureAccount) -> Result<Arc<dyn AzureApi>> {
    let api = SdkArm::new(account, ArmOptions::default()).map_err(account_exit)?;
    Ok(Arc::new(api))
}

fn account(cmd: AccountCommand, store: &AccountStore) -> Result<ExitCode> {
    match cmd {
        AccountCommand::Add {
            name,
            subscription,
            tenant,
            app_id,
            secret_env,
            authority_host,
            arm_endpoint,
            blob_endpoint,
            replace,
            test,
        } => {
            let secret = read_secret(&name, secret_env.as_deref())?;
            let account = AzureAccount {
                name,
                subscription_id: subscription,
                tenant_id: tenant,
                client_id: app_id,
                secret,
                authority_host,
                arm_endpoint,
                blob_endpoint,
            };
            account.check().map_err(account_exit)?;
            if test {
                let check = runtime()?
                    .block_on(test_account(&account))
                    .map_err(account_exit)?;
                eprintln!(
                    "account `{}`: Azure AD issued a token for {}",
                    account.name, check.scope
                );
            }
            store.add(&account, replace).map_err(account_exit)?;
            println!(
                "added cloud account `{}` (subscription {}) to {}",
                account.name,
                account.subscription_id,
                store.path().display()
            );
            if !test {
                println!("prove it with `rha cloud account test {}`", account.name);
            }
            Ok(ExitCode::SUCCESS)
        }
        AccountCommand::List { json } => {
            let accounts = store.list().map_err(account_exit)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&accounts)?);
            } else if accounts.is_empty() {
                println!(
                    "no cloud accounts in {}; add one with `rha cloud account add NAME --subscription ID --tenant ID --app-id ID`",
                    store.path().display()
                );
            } else {
                println!(
                    "{:<16} {:<38} {:<38} APPLICATION",
                    "NAME", "SUBSCRIPTION", "TENANT"
                );
                for a in &accounts {
                    println!(
                        "{:<16} {:<38} {:<38} {}",
                        a.name, a.subscription_id, a.tenant_id, a.client_id
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AccountCommand::Test { name, json } => {
            let account = store.get(&name).map_err(account_exit)?;
            let check = runtime()?
                .block_on(test_account(&account))
                .map_err(account_exit)?;
            if json {
                println!("{}", serde_json::to_string(&check)?);
            } else {
                println!(
                    "account `{}` works: Azure AD issued a token for {} (valid {} more minutes)",
                    check.account,
                    check.scope,
                    check.expires_in_secs.max(0) / 60
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        AccountCommand::Remove { name } => {
            let removed = store.remove(&name).map_err(account_exit)?;
            println!(
                "removed cloud account `{}` (subscription {}) from {}",
                removed.name,
                removed.subscription_id,
                store.path().display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The client secret, from the environment variable `var` or standard input.
fn read_secret(name: &str, var: Option<&str>) -> Result<ClientSecret> {
    if let Some(var) = var {
        let value = std::env::var(var).map_err(|_| {
            exit(
                EXIT_INVALID,
                format!(
                    "--secret-env {var}: the environment variable {var} is not set (or not UTF-8)"
                ),
            )
        })?;
        let secret = ClientSecret::new(value);
        if secret.is_empty() {
            return Err(exit(
                EXIT_INVALID,
                format!("--secret-env {var}: the environment variable {var} is empty"),
            ));
        }
        return Ok(secret);
    }
    let stdin = std::io::stdin();
    let mut line = String::new();
    if stdin.is_terminal() {
        eprint!("client secret of account `{name}` (input hidden): ");
        let _ = std::io::stderr().flush();
        let _echo = NoEcho::new();
        stdin
            .lock()
            .read_line(&mut line)
            .context("reading the secret from standard input")?;
        eprintln!();
    } else {
        stdin
            .lock()
            .read_line(&mut line)
            .context("reading the secret from standard input")?;
    }
    let secret = ClientSecret::new(line);
    if secret.is_empty() {
        return Err(exit(
            EXIT_INVALID,
            "no client secret on standard input; pipe it in (`rha cloud account add ... < secret.txt`) or name an environment variable with --secret-env",
        ));
    }
    Ok(secret)
}

/// Turns terminal echo off for as long as it lives.
struct NoEcho(Option<libc::termios>);

impl NoEcho {
    fn new() -> NoEcho {
        // SAFETY: tcgetattr/tcsetattr on standard input with a zeroed termios
        // they fill in; failure (not a terminal) leaves echo as it was.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return NoEcho(None);
            }
            let saved = t;
            t.c_lflag &= !libc::ECHO;
            t.c_lflag |= libc::ECHONL;
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return NoEcho(None);
            }
            NoEcho(Some(saved))
        }
    }
}

impl Drop for NoEcho {
    fn drop(&mut self) {
        if let Some(t) = self.0 {
            // SAFETY: restores the attributes tcgetattr returned.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, &t);
            }
        }
    }
}

/// The disks of recovery point `point` of an Azure scenario's replica,
/// read from its container (no engine, no lease).
fn point_disks(
    s: &Scenario,
    account: &AzureAccount,
    point: &str,
) -> Result<(rha_transport::engine::PointInfo, Vec<DiskRef>)> {
    use rha_azure::target::{point_info, scenario_prefix, scenario_store};
    use rha_transport::engine::target::{select_point, unknown_point};
    use rha_transport::engine::PointChoice;
    let store = scenario_store(account, s).map_err(|e| exit(EXIT_INVALID, e))?;
    let prefix = scenario_prefix(s);
    let choice: PointChoice = point.parse().unwrap_or(PointChoice::Latest);
    let storage = |e: rha_azure::AzureError| exit(EXIT_FAILED, e.to_string());
    let p = if choice == PointChoice::Latest {
        let p =
            rha_azure::resolve_recovery_point(&store, &prefix, &rha_azure::PointSelector::Latest)
                .map_err(storage)?;
        point_info(&p)
    } else {
        let points: Vec<_> = rha_azure::list_recovery_points(&store, &prefix)
            .map_err(storage)?
            .iter()
            .map(point_info)
            .collect();
        select_point(&points, &choice)
            .cloned()
            .ok_or_else(|| exit(EXIT_INVALID, unknown_point(&choice, &points).to_string()))?
    };
    let replicated: Vec<_> = s.volumes.iter().filter(|v| !v.exclude).collect();
    let refs = p
        .disks
        .iter()
        .zip(&replicated)
        .map(|(url, v)| DiskRef {
            name: v.id.clone(),
            location: url.clone(),
            size: v.size_bytes.unwrap_or(0),
            system: v.system,
        })
        .collect();
    Ok((p, refs))
}

/// A scenario file that must be valid and replicate to Azure.
fn load_azure_scenario(path: &Path) -> Result<Scenario> {
    let s = Scenario::load(path).map_err(|e| exit(EXIT_INVALID, e.to_string()))?;
    let v = s.validate();
    if !v.is_ok() {
        return Err(exit(
            EXIT_INVALID,
            format!("{} has errors:\n{v}", path.display()),
        ));
    }
    if !matches!(s.replica, Replica::Azure(_)) {
        return Err(exit(
            EXIT_INVALID,
            format!(
                "{} replicates to a local appliance; `rha cloud vm` is for Azure scenarios (use `rha vm start`)",
                path.display()
            ),
        ));
    }
    Ok(s)
}

fn scenario_account(s: &Scenario, store: &AccountStore) -> Result<AzureAccount> {
    let Replica::Azure(r) = &s.replica else {
        return Err(exit(EXIT_INVALID, "not an Azure scenario"));
    };
    store.get(&r.account).map_err(account_exit)
}

/// The provider and the VM id a target names.
fn target_provider(t: &VmTarget, store: &AccountStore) -> Result<(AzureProvider, VmId)> {
    if let Some(path) = &t.scenario {
        let s = load_azure_scenario(path)?;
        let account = scenario_account(&s, store)?;
        let target =
            AzureTarget::from_scenario(&s, &account.subscription_id).map_err(cloud_exit)?;
        let id = rha_azure::arm::ResourceId::new(
            &account.subscription_id,
            &target.resource_group,
            rha_azure::arm::ResourceKind::VirtualMachine,
            &s.vm.name,
        );
        return Ok((
            AzureProvider::new(arm(&account)?, target),
            VmId(id.to_string()),
        ));
    }
    let (Some(name), Some(id)) = (&t.account, &t.id) else {
        return Err(exit(
            EXIT_INVALID,
            "name the VM with --scenario FILE, or --account NAME --id VM-ID",
        ));
    };
    let account = store.get(name).map_err(account_exit)?;
    let r = rha_azure::arm::ResourceId::parse(id)
        .filter(|r| r.is(rha_azure::arm::ResourceKind::VirtualMachine))
        .ok_or_else(|| {
            exit(
                EXIT_INVALID,
                format!("--id `{id}` is not a VM resource id (/subscriptions/.../resourceGroups/.../providers/Microsoft.Compute/virtualMachines/NAME)"),
            )
        })?;
    let target = AzureTarget {
        location: String::new(),
        resource_group: r.resource_group.clone(),
        storage_account_id: String::new(),
        disk_sku: rha_azure::provider::DEFAULT_DISK_SKU.to_owned(),
        scenario: None,
    };
    Ok((AzureProvider::new(arm(&account)?, target), VmId(id.clone())))
}

fn vm(cmd: VmCommand, store: &AccountStore) -> Result<ExitCode> {
    let rt = runtime()?;
    match cmd {
        VmCommand::Create {
            scenario,
            point,
            disks,
            recovery_point,
            keep_on_failure,
            json,
        } => {
            let s = load_azure_scenario(&scenario)?;
            let account = scenario_account(&s, store)?;
            let target =
                AzureTarget::from_scenario(&s, &account.subscription_id).map_err(cloud_exit)?;
            let (mut refs, mut recovery_point) = (Vec::new(), recovery_point);
            if disks.is_empty() {
                let (p, point_refs) = point_disks(&s, &account, &point)?;
                eprintln!(
                    "recovery point `{}` ({}) at seq {}{}",
                    p.name,
                    p.id,
                    p.seq,
                    if p.consistent {
                        ""
                    } else {
                        " (NOT consistent)"
                    }
                );
                recovery_point.get_or_insert(format!("{} seq {}", p.name, p.seq));
                refs = point_refs;
            }
            for d in &disks {
                let Some((volume, url)) = d.split_once('=') else {
                    return Err(exit(
                        EXIT_INVALID,
                        format!("--disk `{d}`: write VOLUME=URL"),
                    ));
                };
                let Some(v) = s.volumes.iter().find(|v| v.id == volume) else {
                    return Err(exit(
                        EXIT_INVALID,
                        format!(
                            "--disk `{d}`: the scenario has no volume `{volume}` (it has {})",
                            s.volumes
                                .iter()
                                .map(|v| format!("`{}`", v.id))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                };
                refs.push(DiskRef {
                    name: volume.to_owned(),
                    location: url.to_owned(),
                    size: v.size_bytes.unwrap_or(0),
                    system: false,
                });
            }
            if !refs
                .iter()
                .any(|r| s.volumes.iter().any(|v| v.system && v.id == r.name))
            {
                return Err(exit(
                    EXIT_INVALID,
                    "no --disk for the system volume: the VM could not boot",
                ));
            }
            let mut spec = VmSpec::from_scenario(&s, refs);
            spec.recovery_point = recovery_point;
            let provider =
                AzureProvider::new(arm(&account)?, target).keep_on_failure(keep_on_failure);
            let report = rt
                .block_on(provider.switchover(&spec))
                .map_err(|e| match e.cause {
                    rha_azure::provider::StepCause::Check(c) => cloud_exit(c),
                    rha_azure::provider::StepCause::Arm(_) => exit(EXIT_FAILED, e.to_string()),
                })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for w in &report.warnings {
                    eprintln!("warning: {w}");
                }
                println!("VM `{}` is {}: {}", report.name, report.state, report.vm_id);
                println!("  OS disk    {}", report.os_disk_id);
                for d in &report.data_disk_ids {
                    println!("  data disk  {d}");
                }
                println!("  NIC        {}", report.nic_id);
                if let Some(ip) = &report.private_ip {
                    println!("  private IP {ip}");
                }
                if let Some(ip) = &report.public_ip {
                    println!("  public IP  {ip}");
                }
                println!(
                    "  {} Resource Manager calls, {:.1} s",
                    report.arm_calls,
                    report.millis as f64 / 1000.0
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        VmCommand::Status { target, json } => {
            let (p, id) = target_provider(&target, store)?;
            let r = rha_azure::arm::ResourceId::parse(&id.0);
            let vm = rt.block_on(async {
                match &r {
                    Some(r) => p.api().get_vm(&r.resource_group, &r.name, true).await,
                    None => Ok(None),
                }
            });
            let vm = vm.map_err(|e| exit(EXIT_FAILED, e.to_string()))?;
            let Some(vm) = vm else {
                return Err(exit(EXIT_STATE, format!("no VM with id `{id}` exists")));
            };
            let state = state_of(&vm);
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "id": vm.id, "name": vm.name, "state": state,
                        "power_state": vm.power_state, "size": vm.size,
                        "os_disk": vm.os_disk_id, "data_disks": vm.data_disk_ids,
                        "nics": vm.nic_ids, "tags": vm.tags,
                    })
                );
            } else {
                println!("VM `{}` is {state} ({})", vm.name, vm.id);
            }
            Ok(ExitCode::SUCCESS)
        }
        VmCommand::Stop {
            target,
            power_off_only,
        } => {
            let (p, id) = target_provider(&target, store)?;
            let p = p.stop_action(if power_off_only {
                PowerAction::PowerOff
            } else {
                PowerAction::Deallocate
            });
            rt.block_on(p.stop_vm(&id)).map_err(cloud_exit)?;
            println!(
                "VM {id} {}",
                if power_off_only {
                    "is powered off (still allocated and billed)"
                } else {
                    "is stopped and deallocated"
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        VmCommand::Start { target } => {
            let (p, id) = target_provider(&target, store)?;
            rt.block_on(p.start_vm(&id)).map_err(cloud_exit)?;
            println!("VM {id} is started");
            Ok(ExitCode::SUCCESS)
        }
        VmCommand::Delete {
            target,
            delete_disks,
        } => {
            let (p, id) = target_provider(&target, store)?;
            let p = p.delete_disks_with_vm(delete_disks);
            rt.block_on(p.delete_vm(&id)).map_err(cloud_exit)?;
            println!(
                "VM {id} is deleted{}; the replica page blobs are untouched",
                if delete_disks {
                    " with its managed disks"
                } else {
                    " (its managed disks are kept)"
                }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
