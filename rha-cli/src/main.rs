//! The `rha` command-line tool: a thin shell over `rha-core`.
//!
//! ```text
//! rha demo       two engines on loopback: protect an ext4 disk, replicate live writes, switch over
//! rha engine     run an engine (master and/or appliance role)
//! rha scenario   new | validate | run | stop | status | bookmark | points | switchover
//! rha vm start   start the replica VM of a stopped scenario (from a recovery point)
//! rha cert       make the scenario CA and engine/operator certificates
//! rha sync       synchronise two images offline (block- or volume-level), or
//!                only what a QEMU dirty bitmap marks (--dirty-bitmap, over NBD)
//! rha vhd        make, check or strip a fixed VHD footer
//! rha cloud      cloud accounts, the VMs of a region, Azure switchover VMs
//! rha nbd serve  serve one image over NBD as a tracked (journalled) volume
//! ```
//!
//! Exit codes: 0 success, 1 failure, 2 invalid input, 3 engine unreachable
//! or authentication refused, 4 wrong scenario state.

mod bitmap;
mod cloud;
mod demo;
mod nbd;
mod remote;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use rha_core::events::Events;
use rha_core::sink::MemSink;
use rha_core::source::StaticSource;
use rha_core::sync::{synchronise, LocalPeer, SyncMethod, SyncOptions};
use rha_core::volume::{open_volume, vhd, FileVolume, Volume};
use rha_transport::qemu_bitmap::BitmapReset;

/// Continuous full-system block-level replication.
#[derive(Debug, Parser)]
#[command(name = "rha", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// A command group that talks to engines: its subcommands take the TLS options.
#[derive(Debug, clap::Args)]
struct Remote<C: Subcommand> {
    #[command(subcommand)]
    command: C,
    #[command(flatten)]
    auth: remote::Auth,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Two engines on loopback over mutual TLS: protect an ext4 system disk
    /// and a data disk, replicate live writes, switch over, and prove the
    /// replica VHDs equal (paths and results in DIR/summary.json).
    Demo(demo::DemoArgs),
    /// Synchronise two images offline; prints one JSON line of statistics.
    Sync {
        /// `block` compares hashes and sends what differs; `volume` copies every used block.
        #[arg(long, value_enum, default_value_t = Method::Block)]
        method: Method,
        /// Compare every block (no shortcut).
        #[arg(long)]
        force_full: bool,
        /// Synchronise only what QEMU dirty bitmap NAME marks: SRC is then its
        /// NBD export (`nbd://HOST:PORT/EXPORT` or `nbd+unix:///EXPORT?socket=PATH`,
        /// from `qemu-nbd -r -B NAME`) and DST must hold the image as it was
        /// when the bitmap was added or last cleared.
        #[arg(long, value_name = "NAME")]
        dirty_bitmap: Option<String>,
        /// After success, clear the bitmap with `qemu-img bitmap --clear QCOW2 NAME`
        /// (the image must not be in use: run qemu-nbd without --persistent).
        #[arg(
            long,
            value_name = "QCOW2",
            requires = "dirty_bitmap",
            conflicts_with = "qmp"
        )]
        clear_image: Option<PathBuf>,
        /// Clear the bitmap of a running QEMU over its QMP socket (with --node): a second
        /// bitmap, NAME-rha-during-sync, records the writes made during the sync, and
        /// after success NAME is cleared and that one merged back into it.
        #[arg(long, value_name = "SOCKET", requires_all = ["dirty_bitmap", "node"])]
        qmp: Option<PathBuf>,
        /// The block node that holds the bitmap (for --qmp).
        #[arg(long, value_name = "NODE", requires = "qmp")]
        node: Option<String>,
        /// The id of QEMU's own NBD export that serves the bitmap (for --qmp): QEMU keeps
        /// an exported bitmap busy, so it is removed (block-export-del) before the reset.
        #[arg(long, value_name = "ID", requires = "qmp")]
        qmp_export: Option<String>,
        /// The source image (raw or fixed VHD), or with --dirty-bitmap an NBD export.
        src: PathBuf,
        /// The destination image; created (raw, sparse) at the source's size when missing.
        dst: PathBuf,
    },
    /// Work with fixed VHD footers (O(1): the data is never copied).
    #[command(subcommand)]
    Vhd(VhdCommand),
    /// Work with scenarios: make, check, run, stop, watch, switch over.
    Scenario(Remote<remote::ScenarioCommand>),
    /// Run an engine: the master role for scenarios it is the master of, the
    /// replica role for those it is the appliance of.
    Engine {
        #[command(flatten)]
        args: remote::EngineArgs,
        #[command(flatten)]
        auth: remote::Auth,
    },
    /// Replica virtual machines.
    Vm(Remote<remote::VmCommand>),
    /// Make the scenario CA and the engine and operator certificates (mutual TLS).
    #[command(subcommand)]
    Cert(remote::CertCommand),
    /// Cloud accounts, the VMs of a region, and switchover VMs in Azure.
    Cloud(cloud::CloudArgs),
    /// Serve an image over NBD as a tracked volume (every write journalled).
    Nbd(Remote<nbd::NbdCommand>),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Method {
    Block,
    Volume,
}

#[derive(Debug, Subcommand)]
enum VhdCommand {
    /// Append a fixed VHD footer to a raw image (rounding it up to a whole MiB, as Azure requires).
    Make {
        /// The raw image.
        image: PathBuf,
    },
    /// Check a fixed VHD's footer and print what it says.
    Check {
        /// The VHD.
        image: PathBuf,
    },
    /// Remove the footer, leaving the raw image.
    Strip {
        /// The VHD.
        image: PathBuf,
    },
}

/// Logs to stderr, filtered by `RHA_LOG` (default `warn`). The debug and
/// trace events of the Azure SDK and the HTTP stack are never let through,
/// whatever `RHA_LOG` says: they print tokens and client secrets
/// (`rha_azure::logging`).
fn init_logging() {
    use tracing_subscriber::filter::{filter_fn, FilterExt};
    use tracing_subscriber::prelude::*;
    let env = tracing_subscriber::EnvFilter::try_from_env("RHA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let safe = filter_fn(|m| !rha_azure::logging::withheld(m.target(), m.level()));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(env.and(safe)),
        )
        .init();
}

fn main() -> ExitCode {
    tune_allocator();
    init_logging();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rha: {e:#}");
            match e.downcast_ref::<remote::ExitError>() {
                Some(x) => ExitCode::from(x.code),
                None => ExitCode::from(remote::EXIT_FAILED),
            }
        }
    }
}

/// Serves buffers up to 64 MiB (an NBD write's payload, a replication
/// batch, a frame) from the heap instead of a fresh mapping each: glibc's
/// default maps each one anew, and every page of it then costs a page
/// fault and a zeroing. Freed memory beyond 128 MiB goes back to the system.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Sync {
            method,
            force_full,
            dirty_bitmap,
            clear_image,
            qmp,
            node,
            qmp_export,
            src,
            dst,
        } => {
            let method = match method {
                Method::Block => SyncMethod::Block,
                Method::Volume => SyncMethod::Volume,
            };
            if let Some(bitmap) = dirty_bitmap {
                let reset = match (clear_image, qmp, node) {
                    (Some(image), _, _) => Some(BitmapReset::Image { image }),
                    (None, Some(socket), Some(node)) => Some(BitmapReset::Qmp {
                        socket,
                        node,
                        export: qmp_export,
                    }),
                    _ => None,
                };
                return bitmap::run(bitmap::BitmapSync {
                    bitmap,
                    src,
                    dst,
                    method,
                    force_full,
                    reset,
                });
            }
            let master: Arc<dyn Volume> =
                Arc::from(open_volume(&src).with_context(|| format!("opening {}", src.display()))?);
            let replica: Arc<dyn Volume> = if dst.exists() {
                Arc::from(open_volume(&dst).with_context(|| format!("opening {}", dst.display()))?)
            } else {
                Arc::new(FileVolume::create(&dst, master.size())?)
            };
            let sink = MemSink::with_volumes(vec![replica]);
            let mut options = SyncOptions::new(method);
            options.force_full_verification = force_full;
            let report = synchronise(
                &StaticSource::new(vec![master]),
                &mut LocalPeer::new(&sink),
                &options,
                &Events::new(),
            )?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Vhd(VhdCommand::Make { image }) => {
            let report = vhd::attach_footer(&image)?;
            if report.size.was_rounded() {
                eprintln!(
                    "note: {} was rounded up by {} bytes to {} bytes, a whole MiB, as Azure requires",
                    image.display(),
                    report.size.rounded_up_by(),
                    report.size.virtual_size
                );
            }
            println!(
                "{}: fixed VHD of {} bytes",
                image.display(),
                report.size.virtual_size
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Vhd(VhdCommand::Check { image }) => match vhd::read_footer(&image)? {
            Some(f) => {
                println!(
                    "{}: fixed VHD, virtual size {} bytes, geometry {:?}",
                    image.display(),
                    f.current_size,
                    f.geometry
                );
                Ok(ExitCode::SUCCESS)
            }
            None => {
                println!("{}: no VHD footer (a raw image)", image.display());
                Ok(ExitCode::from(3))
            }
        },
        Command::Vhd(VhdCommand::Strip { image }) => {
            let size = vhd::strip_footer(&image)?;
            println!("{}: raw image of {size} bytes", image.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Scenario(r) => remote::scenario(r.command, &r.auth),
        Command::Engine { args, auth } => remote::engine(args, &auth),
        Command::Vm(r) => remote::vm(r.command, &r.auth),
        Command::Cert(cmd) => remote::cert(cmd),
        Command::Cloud(args) => cloud::run(args),
        Command::Nbd(r) => nbd::run(r.command, &r.auth),
    }
}
