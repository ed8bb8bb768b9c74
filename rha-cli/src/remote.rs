//! The commands that run or talk to engines: `rha engine`, `rha scenario
//! new|validate|run|stop|status|bookmark|points|switchover`, `rha vm start`,
//! `rha cert`.
//!
//! Exit codes scripts can rely on:
//! 0 success; 1 the operation failed; 2 invalid input (scenario, arguments);
//! 3 an engine could not be reached or authenticated; 4 the scenario is not
//! in a state that allows the request (or does not exist).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rha_core::cloud::local::Qemu;
use rha_core::scenario::{Replica, Scenario, Template};
use rha_transport::cert::{self, LeafKind};
use rha_transport::connect::Security;
use rha_transport::engine::{
    Client, ClientError, ControlRequest, Engine, EngineConfig, NbdListen, Targets,
};
use rha_transport::tls::{Tls, TlsSettings, Trust};

/// Exit status: the operation failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit status: invalid input.
pub const EXIT_INVALID: u8 = 2;
/// Exit status: an engine is unreachable or refused authentication.
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit status: wrong state or unknown scenario.
pub const EXIT_STATE: u8 = 4;

/// How this process authenticates to engines (or engines to each other).
#[derive(Debug, Clone, clap::Args)]
pub struct Auth {
    /// Directory made by `rha cert`: ca.pem, <name>.pem, <name>.key.
    #[arg(long, env = "RHA_CERTS", global = true)]
    certs: Option<PathBuf>,
    /// The certificate name to use from --certs (default: `operator` for
    /// commands, the engine's --name for `rha engine`).
    #[arg(long = "as", global = true)]
    as_name: Option<String>,
    /// Trust exactly these peer certificates instead of a CA (pinning; repeatable).
    #[arg(long, global = true)]
    pin: Vec<PathBuf>,
    /// DANGEROUS: no TLS at all — no encryption, no authentication. Only for
    /// isolated test networks; both sides must use it.
    #[arg(long, global = true)]
    insecure_plaintext: bool,
}

impl Auth {
    /// Whether certificates were given (`--certs` or `RHA_CERTS`).
    pub(crate) fn has_certs(&self) -> bool {
        self.certs.is_some()
    }

    /// TLS with the certificate `--as` (default `default_name`), or plaintext when asked for.
    pub(crate) fn security(&self, default_name: &str) -> Result<Security, ExitError> {
        if self.insecure_plaintext {
            eprintln!("rha: WARNING: --insecure-plaintext: traffic is neither encrypted nor authenticated");
            return Ok(Security::InsecurePlaintext);
        }
        let Some(dir) = &self.certs else {
            return Err(ExitError::new(
                EXIT_INVALID,
                "no certificates: pass --certs DIR (made with `rha cert`), or set RHA_CERTS; \
                 --insecure-plaintext exists for isolated test networks only",
            ));
        };
        let name = self.as_name.as_deref().unwrap_or(default_name);
        let mut settings = TlsSettings::in_dir(dir, name);
        if !self.pin.is_empty() {
            settings.trust = Trust::Pinned {
                peers: self.pin.clone(),
            };
        }
        let tls = Tls::load(&settings).map_err(|e| ExitError::new(EXIT_INVALID, e.to_string()))?;
        Ok(Security::Tls(Arc::new(tls)))
    }
}

/// An error with the exit status it maps to.
#[derive(Debug)]
pub struct ExitError {
    /// The exit status.
    pub code: u8,
    /// The message.
    pub message: String,
}

impl ExitError {
    /// An error with its exit status.
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Self {
        ExitError {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ExitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExitError {}

impl From<ClientError> for ExitError {
    fn from(e: ClientError) -> Self {
        let code = match e.exit_code() {
            2 => EXIT_INVALID,
            3 => EXIT_UNREACHABLE,
            4 => EXIT_STATE,
            _ => EXIT_FAILED,
        };
        ExitError::new(code, e.to_string())
    }
}

/// `rha engine`.
#[derive(Debug, clap::Args)]
pub struct EngineArgs {
    /// Directory for scenarios, journals, replica disks and VMs.
    #[arg(long)]
    data: PathBuf,
    /// This engine's name (its certificate's name in --certs).
    #[arg(long, default_value = "engine")]
    name: String,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:25000", conflicts_with = "no_listen")]
    listen: String,
    /// Listen on no port (a NAT-mode master that only calls out with --dial).
    #[arg(long)]
    no_listen: bool,
    /// NAT mode: call this appliance (host:port) and keep a session offered to it (repeatable).
    #[arg(long)]
    dial: Vec<String>,
    /// Never start QEMU at switchover (only write the launch definition).
    #[arg(long)]
    no_qemu: bool,
    /// Print the listening address on stdout once ready (for scripts and tests).
    #[arg(long)]
    print_addr: bool,
    /// Serve the volumes of scenarios with `[capture] method = "nbd"` as NBD
    /// exports `<scenario>/<file stem>` on this address (port 0: any free
    /// port, written to DATA/nbd.addr). TLS with the engine's certificate
    /// unless --nbd-plaintext.
    #[arg(long, value_name = "ADDR")]
    nbd_listen: Option<String>,
    /// Serve the NBD exports without TLS (for a loopback listener, where
    /// the VM runs on the master itself).
    #[arg(long, requires = "nbd_listen")]
    nbd_plaintext: bool,
    /// The cloud accounts file Azure scenarios name their account in
    /// (default `$XDG_CONFIG_HOME/rha/accounts.json`, or `~/.config/rha/accounts.json`).
    #[arg(long, env = "RHA_ACCOUNTS", value_name = "PATH")]
    accounts: Option<PathBuf>,
}

/// `rha scenario ...`.
#[derive(Debug, clap::Subcommand)]
pub enum ScenarioCommand {
    /// Print a commented scenario to start from.
    New {
        /// `local` (QEMU appliance) or `azure`.
        #[arg(long, default_value = "local")]
        template: String,
        /// Write it here instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Check a scenario file; then contact the engines (reachability, protocol,
    /// the master's volumes, free space on the appliance) unless --offline.
    Validate {
        /// The scenario file (TOML).
        file: PathBuf,
        /// Only check the file; do not contact the engines.
        #[arg(long)]
        offline: bool,
        /// The appliance engine (default: the scenario's appliance and port).
        #[arg(long)]
        engine: Option<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a scenario on its appliance engine and follow the synchronisation.
    Run {
        /// The scenario file (TOML).
        file: PathBuf,
        /// The appliance engine (default: the scenario's appliance and port).
        #[arg(long)]
        engine: Option<String>,
        /// Return at once instead of following until the replica is consistent.
        #[arg(long)]
        detach: bool,
        /// Give up following after this many seconds (the scenario keeps running).
        #[arg(long, default_value_t = 86400)]
        timeout_secs: u64,
    },
    /// Stop a scenario (the master keeps its change log: restarting resynchronises only what changed).
    Stop {
        /// The scenario's name.
        name: String,
        /// The engine (host:port).
        #[arg(long)]
        engine: String,
    },
    /// State and statistics of one scenario or all.
    Status {
        /// The scenario's name (all when absent).
        name: Option<String>,
        /// The engine (host:port).
        #[arg(long)]
        engine: String,
        /// Print JSON (state, changed and sent bytes, sync progress, lag, last event).
        #[arg(long)]
        json: bool,
    },
    /// Switch over: stop replication, apply the journal, run the master-side step, start the VM.
    Switchover {
        /// The scenario's name.
        name: String,
        /// The appliance engine (host:port).
        #[arg(long)]
        engine: String,
        /// Do not wait for the changes still on their way (faster; loses them).
        #[arg(long)]
        skip_journal: bool,
        /// Start the VM even if the replica is not consistent.
        #[arg(long)]
        force: bool,
        /// The recovery point the VM is made from: `latest` (the replica
        /// once the journal is applied), a bookmark's name or id, `seq:N`, or
        /// a bare sequence number.
        #[arg(long, default_value = "latest")]
        point: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Take a recovery point of a running scenario's replica (Azure: a blob
    /// snapshot of every disk) holding every write the master made before
    /// this command.
    Bookmark {
        /// The scenario's name.
        name: String,
        /// The bookmark's name (letters, digits, `-`, `_`, `.`).
        bookmark: String,
        /// The appliance engine (host:port).
        #[arg(long)]
        engine: String,
        /// Mark the replica as it is now (its applied sequence) instead of
        /// what the master holds.
        #[arg(long)]
        replica: bool,
        /// Wait this long for the replica to catch up to the master's
        /// sequence before answering that the point is pending.
        #[arg(long, default_value_t = 60)]
        wait_secs: u64,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the recovery points of a scenario's replica.
    Points {
        /// The scenario's name.
        name: String,
        /// The appliance engine (host:port).
        #[arg(long)]
        engine: String,
        /// Print JSON (`points`: id, name, seq, created_ms, consistent, disks).
        #[arg(long)]
        json: bool,
    },
}

/// `rha vm ...`.
#[derive(Debug, clap::Subcommand)]
pub enum VmCommand {
    /// Start the replica VM of a stopped scenario from the appliance.
    Start {
        /// The scenario's name.
        name: String,
        /// The recovery point: `latest`, a bookmark's name or id, `seq:N`, or a bare sequence.
        #[arg(long, default_value = "latest")]
        point: String,
        /// The appliance engine (host:port).
        #[arg(long)]
        engine: String,
        /// Start it even if the replica is not consistent.
        #[arg(long)]
        force: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `rha cert ...`.
#[derive(Debug, clap::Subcommand)]
pub enum CertCommand {
    /// Make a scenario CA (ca.pem, ca.key) in DIR.
    Ca {
        /// The directory.
        #[arg(long)]
        dir: PathBuf,
        /// The CA's name.
        #[arg(long, default_value = "rha scenario CA")]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Make an engine certificate (server and client) signed by the CA in DIR.
    Engine {
        /// The directory holding the CA; the certificate is written there too.
        #[arg(long)]
        dir: PathBuf,
        /// The engine's name (CN, and a SAN when it is a host name or address).
        #[arg(long)]
        name: String,
        /// More host names or IP addresses the engine is reached at (repeatable).
        #[arg(long)]
        san: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 825)]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Make an operator (client-only) certificate signed by the CA in DIR.
    Operator {
        /// The directory holding the CA.
        #[arg(long)]
        dir: PathBuf,
        /// The operator's name.
        #[arg(long, default_value = "operator")]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 825)]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

/// The multi-threaded tokio runtime of the commands.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// `rha engine`: runs until interrupted.
pub fn engine(args: EngineArgs, auth: &Auth) -> Result<ExitCode> {
    let security = auth.security(&args.name)?;
    let rt = runtime()?;
    rt.block_on(async move {
        let mut config = EngineConfig::new(&args.name, &args.data, security);
        config.listen = (!args.no_listen).then(|| args.listen.clone());
        config.dial = args.dial.clone();
        if args.no_qemu {
            config.qemu = Qemu::Never;
        }
        config.targets = targets(args.accounts.as_deref());
        config.nbd = args.nbd_listen.clone().map(|addr| NbdListen {
            addr,
            plaintext: args.nbd_plaintext,
        });
        let engine = Engine::start(config).await?;
        if args.print_addr {
            match engine.local_addr() {
                Some(a) => println!("listening {a}"),
                None => println!("listening nowhere"),
            }
        }
        if let Some(a) = engine.nbd_addr() {
            eprintln!("rha engine `{}`: NBD exports on {a}", engine.name());
        }
        eprintln!(
            "rha engine `{}` running (data {}); Ctrl-C stops it",
            engine.name(),
            args.data.display()
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        engine.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// The replica targets of `rha engine`: local disks, and Azure with the
/// accounts file (read when a scenario is opened).
fn targets(accounts: Option<&std::path::Path>) -> Targets {
    match rha_azure::AccountStore::locate(accounts) {
        Ok(store) => Targets::new().with(Arc::new(rha_azure::AzureTargets::new(store))),
        Err(e) => {
            eprintln!("rha: warning: Azure scenarios cannot run on this engine: {e}");
            Targets::new()
        }
    }
}

fn appliance_addr(s: &Scenario) -> Option<String> {
    match &s.replica {
        Replica::Local(l) => Some(format!("{}:{}", l.appliance, l.port)),
        Replica::Azure(a) => Some(format!("{}:{}", a.appliance, a.port)),
    }
}

async fn client(engine: &str, auth: &Auth) -> Result<Client, ExitError> {
    let security = auth.security("operator")?;
    Ok(Client::connect(
        engine,
        &security,
        auth.as_name.as_deref().unwrap_or("operator"),
    )
    .await?)
}

const LONG: Duration = Duration::from_secs(7200);

/// `rha scenario ...`.
pub fn scenario(cmd: ScenarioCommand, auth: &Auth) -> Result<ExitCode> {
    match cmd {
        ScenarioCommand::New { template, output } => {
            let t = match template.as_str() {
                "local" => Template::Local,
                "azure" => Template::Azure,
                other => {
                    return Err(ExitError::new(
                        EXIT_INVALID,
                        format!("unknown template `{other}`: use `local` or `azure`"),
                    )
                    .into())
                }
            };
            let text = Scenario::template(t).to_toml_string()?;
            match output {
                Some(p) => {
                    if p.exists() {
                        return Err(ExitError::new(
                            EXIT_INVALID,
                            format!("{} exists: choose another file", p.display()),
                        )
                        .into());
                    }
                    std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
                    eprintln!(
                        "wrote {}: edit it, then `rha scenario validate {}`",
                        p.display(),
                        p.display()
                    );
                }
                None => print!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        ScenarioCommand::Validate {
            file,
            offline,
            engine,
            json,
        } => {
            let scenario =
                Scenario::load(&file).map_err(|e| ExitError::new(EXIT_INVALID, e.to_string()))?;
            let validation = scenario.validate();
            if offline || !validation.is_ok() {
                if json {
                    let findings: Vec<String> =
                        validation.to_string().lines().map(str::to_owned).collect();
                    println!(
                        "{}",
                        serde_json::json!({"valid": validation.is_ok(), "findings": findings})
                    );
                } else {
                    println!("{}", validation.to_string().trim_end());
                }
                return Ok(if validation.is_ok() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(EXIT_INVALID)
                });
            }
            let addr = engine
                .or_else(|| appliance_addr(&scenario))
                .unwrap_or_default();
            let text = std::fs::read_to_string(&file)?;
            let rt = runtime()?;
            let v = rt.block_on(async {
                let c = client(&addr, auth).await?;
                let v = c
                    .call(
                        &ControlRequest::Verify { scenario: text },
                        Duration::from_secs(120),
                    )
                    .await?;
                c.close().await;
                Ok::<_, ExitError>(v)
            })?;
            if json {
                println!("{v}");
            } else {
                println!("{}", validation.to_string().trim_end());
                println!(
                    "appliance `{}`: free {} bytes in {}",
                    v["appliance"]["name"].as_str().unwrap_or("?"),
                    v["appliance"]["free_bytes"],
                    v["appliance"]["disks_dir"].as_str().unwrap_or("?")
                );
                let m = &v["master"];
                if m["reachable"].as_bool() == Some(true) {
                    println!(
                        "master `{}`: reachable, protocol {}, {}",
                        m["name"].as_str().unwrap_or("?"),
                        m["protocol_version"],
                        m["software"].as_str().unwrap_or("")
                    );
                    for vol in m["volumes"].as_array().cloned().unwrap_or_default() {
                        println!(
                            "  volume {:<12} {:>14} bytes  {}{}{}",
                            vol["id"].as_str().unwrap_or("?"),
                            vol["size"]
                                .as_u64()
                                .map(|s| s.to_string())
                                .unwrap_or_else(|| "?".into()),
                            vol["path"].as_str().unwrap_or(""),
                            if vol["system"].as_bool() == Some(true) {
                                "  (system)"
                            } else {
                                ""
                            },
                            if vol["exclude"].as_bool() == Some(true) {
                                "  (excluded)"
                            } else {
                                ""
                            },
                        );
                    }
                }
                for w in v["warnings"].as_array().cloned().unwrap_or_default() {
                    println!("warning: {}", w.as_str().unwrap_or(""));
                }
                for e in v["errors"].as_array().cloned().unwrap_or_default() {
                    println!("error: {}", e.as_str().unwrap_or(""));
                }
            }
            Ok(if v["valid"].as_bool() == Some(true) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_INVALID)
            })
        }
        ScenarioCommand::Run {
            file,
            engine,
            detach,
            timeout_secs,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let scenario = Scenario::from_toml_str(&text)
                .map_err(|e| ExitError::new(EXIT_INVALID, e.to_string()))?;
            let validation = scenario.validate();
            if !validation.is_ok() {
                println!("{}", validation.to_string().trim_end());
                return Ok(ExitCode::from(EXIT_INVALID));
            }
            let addr = engine
                .or_else(|| appliance_addr(&scenario))
                .unwrap_or_default();
            let name = scenario.name.clone();
            let rt = runtime()?;
            rt.block_on(async {
                let c = client(&addr, auth).await?;
                c.call(&ControlRequest::Run { scenario: text }, LONG)
                    .await?;
                eprintln!("scenario `{name}` running on `{}`", c.engine_name());
                if !detach {
                    follow(&c, &name, Duration::from_secs(timeout_secs)).await?;
                }
                c.close().await;
                Ok::<_, ExitError>(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        ScenarioCommand::Stop { name, engine } => {
            let rt = runtime()?;
            rt.block_on(async {
                let c = client(&engine, auth).await?;
                c.call(&ControlRequest::Stop { name: name.clone() }, LONG)
                    .await?;
                c.close().await;
                eprintln!("scenario `{name}` stopped");
                Ok::<_, ExitError>(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        ScenarioCommand::Status { name, engine, json } => {
            let rt = runtime()?;
            let v = rt.block_on(async {
                let c = client(&engine, auth).await?;
                let v = c
                    .call(&ControlRequest::Status { name }, Duration::from_secs(60))
                    .await?;
                c.close().await;
                Ok::<_, ExitError>(v)
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for s in v["scenarios"].as_array().cloned().unwrap_or_default() {
                    println!(
                        "{} ({}): {}  changed {} B, sent {} B, sync {:.1}%, lag {:.2} s / {} B{}",
                        s["name"].as_str().unwrap_or("?"),
                        s["role"].as_str().unwrap_or("?"),
                        s["state"].as_str().unwrap_or("?"),
                        s["changed_bytes"],
                        s["sent_bytes"],
                        s["sync"]["percent"].as_f64().unwrap_or(0.0),
                        s["lag"]["seconds"].as_f64().unwrap_or(0.0),
                        s["lag"]["bytes"],
                        s["last_event"]["text"]
                            .as_str()
                            .or(s["last_event"].as_str())
                            .map(|e| format!("\n  last event: {e}"))
                            .unwrap_or_default(),
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ScenarioCommand::Switchover {
            name,
            engine,
            skip_journal,
            force,
            point,
            json,
        } => {
            let v = call(
                &engine,
                auth,
                ControlRequest::Switchover {
                    name,
                    skip_journal,
                    force,
                    point,
                },
                LONG,
            )?;
            print_vm(&v["switchover"], json);
            Ok(ExitCode::SUCCESS)
        }
        ScenarioCommand::Bookmark {
            name,
            bookmark,
            engine,
            replica,
            wait_secs,
            json,
        } => {
            let v = call(
                &engine,
                auth,
                ControlRequest::Bookmark {
                    name,
                    bookmark,
                    replica,
                    wait_secs,
                },
                Duration::from_secs(wait_secs + 120),
            )?;
            if json {
                println!("{v}");
            } else {
                let p = &v["point"];
                if v["taken"].as_bool() == Some(true) {
                    println!(
                        "recovery point `{}` ({}) at seq {} ({} the {})",
                        v["bookmark"].as_str().unwrap_or("?"),
                        p["id"].as_str().unwrap_or("?"),
                        v["seq"],
                        if p["consistent"].as_bool() == Some(true) {
                            "consistent, holding"
                        } else {
                            "NOT consistent, from"
                        },
                        v["at"].as_str().unwrap_or("?"),
                    );
                } else {
                    println!(
                        "bookmark `{}` at seq {} recorded",
                        v["bookmark"].as_str().unwrap_or("?"),
                        v["seq"]
                    );
                }
                if let Some(n) = v["note"].as_str() {
                    println!("  {n}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ScenarioCommand::Points { name, engine, json } => {
            let v = call(
                &engine,
                auth,
                ControlRequest::Points { name },
                Duration::from_secs(120),
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            let points = v["points"].as_array().cloned().unwrap_or_default();
            println!(
                "{:<24} {:<28} {:>10}  {:<24} CONSISTENT",
                "NAME", "ID", "SEQ", "TAKEN (UTC)"
            );
            for p in &points {
                println!(
                    "{:<24} {:<28} {:>10}  {:<24} {}",
                    p["name"].as_str().unwrap_or("?"),
                    p["id"].as_str().unwrap_or("?"),
                    p["seq"],
                    match p["created_ms"].as_u64() {
                        Some(ms) if ms > 0 => rha_azure::provider::utc_stamp(
                            std::time::UNIX_EPOCH + Duration::from_millis(ms)
                        ),
                        _ => "-".into(),
                    },
                    if p["consistent"].as_bool() == Some(true) {
                        "yes"
                    } else {
                        "no"
                    },
                );
            }
            if v["keeps_points"].as_bool() != Some(true) {
                println!(
                    "(a {} replica keeps only `latest`, the disks as they are)",
                    v["target"].as_str().unwrap_or("local")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Sends one control request to `engine` and returns the reply.
fn call(
    engine: &str,
    auth: &Auth,
    req: ControlRequest,
    timeout: Duration,
) -> Result<serde_json::Value, ExitError> {
    let rt = runtime().map_err(|e| ExitError::new(EXIT_FAILED, format!("{e:#}")))?;
    rt.block_on(async {
        let c = client(engine, auth).await?;
        let v = c.call(&req, timeout).await?;
        c.close().await;
        Ok::<_, ExitError>(v)
    })
}

fn print_vm(r: &serde_json::Value, json: bool) {
    if json {
        println!("{r}");
        return;
    }
    println!(
        "VM `{}` ({}) {}; recovery point seq {}{}; master step: {}",
        r["vm_name"].as_str().unwrap_or("?"),
        r["vm_id"].as_str().unwrap_or("?"),
        r["vm_state"].as_str().unwrap_or("?"),
        r["recovery_point_seq"],
        if r["consistent"].as_bool() == Some(true) {
            " (consistent)"
        } else {
            " (NOT consistent)"
        },
        r["master_step"].as_str().unwrap_or("?"),
    );
    let p = &r["recovery_point"];
    if p.is_object() {
        println!(
            "  from recovery point `{}` ({})",
            p["name"].as_str().unwrap_or("?"),
            p["id"].as_str().unwrap_or("?")
        );
    }
    for d in r["disks"].as_array().cloned().unwrap_or_default() {
        println!("  disk {}", d.as_str().unwrap_or("?"));
    }
    if let Some(l) = r["details"]["launch"].as_str() {
        println!("  launch definition {l}");
    }
}

/// Follows a scenario until its replica is consistent, with a progress bar on a terminal.
async fn follow(c: &Client, name: &str, timeout: Duration) -> Result<(), ExitError> {
    use std::io::IsTerminal;
    let bar = if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:20} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Some(b)
    } else {
        None
    };
    let started = std::time::Instant::now();
    let mut last_state = String::new();
    loop {
        let v = c
            .call(
                &ControlRequest::Status {
                    name: Some(name.to_owned()),
                },
                Duration::from_secs(60),
            )
            .await?;
        let s = &v["scenarios"][0];
        let state = s["state"].as_str().unwrap_or("?").to_owned();
        let consistent = s["replica"]["consistent"].as_bool() == Some(true);
        if let Some(b) = &bar {
            b.set_length(s["sync"]["bytes_total"].as_u64().unwrap_or(0));
            b.set_position(s["sync"]["bytes_done"].as_u64().unwrap_or(0));
            b.set_message(state.clone());
        } else if state != last_state {
            eprintln!("{name}: {state}");
        }
        last_state = state.clone();
        if consistent && state == "replicating" {
            if let Some(b) = &bar {
                b.finish_with_message("consistent");
            }
            eprintln!("{name}: the replica is consistent; replication continues in the engines");
            return Ok(());
        }
        if matches!(state.as_str(), "stopped" | "switched_over") {
            return Err(ExitError::new(EXIT_STATE, format!("{name}: {state}")));
        }
        if started.elapsed() > timeout {
            return Err(ExitError::new(
                EXIT_FAILED,
                format!(
                    "{name}: not consistent after {} s (state {state}); it keeps running",
                    timeout.as_secs()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `rha vm ...`.
pub fn vm(cmd: VmCommand, auth: &Auth) -> Result<ExitCode> {
    let VmCommand::Start {
        name,
        point,
        engine,
        force,
        json,
    } = cmd;
    let rt = runtime()?;
    let v = rt.block_on(async {
        let c = client(&engine, auth).await?;
        let v = c
            .call(&ControlRequest::VmStart { name, point, force }, LONG)
            .await?;
        c.close().await;
        Ok::<_, ExitError>(v)
    })?;
    print_vm(&v["vm"], json);
    Ok(ExitCode::SUCCESS)
}

/// `rha cert ...`.
pub fn cert(cmd: CertCommand) -> Result<ExitCode> {
    let files = match cmd {
        CertCommand::Ca {
            dir,
            name,
            days,
            force,
        } => cert::make_ca(&dir, &name, days, force)?,
        CertCommand::Engine {
            dir,
            name,
            san,
            days,
            force,
        } => cert::make_leaf(&dir, &dir, &name, &san, LeafKind::Engine, days, force)?,
        CertCommand::Operator {
            dir,
            name,
            days,
            force,
        } => cert::make_leaf(&dir, &dir, &name, &[], LeafKind::Operator, days, force)?,
    };
    println!("{}\n{}", files.cert.display(), files.key.display());
    Ok(ExitCode::SUCCESS)
}
