//! `rha nbd serve IMAGE --listen ADDR`: one image file served over NBD as
//! a tracked volume, for scripts and tests.
//!
//! ```text
//!  qemu-io / qemu-img / nbd-client ──NBD──► rha nbd serve ──► TrackedVolume ──► journal (IMAGE.journal/)
//!                                                                          └──► IMAGE
//! ```
//!
//! The export is named after the file's stem (`disk.img` → `disk`); the
//! URL `nbd://HOST:PORT/STEM` is printed on stdout once listening. SIGINT
//! or SIGTERM stop it: requests in flight are answered, the volume is
//! flushed and the journal closed cleanly.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rha_core::events::Events;
use rha_core::journal::{FsyncPolicy, JournalConfig};
use rha_core::source::TrackedSet;
use rha_core::volume::{open_volume, Volume};
use rha_transport::connect::Security;
use rha_transport::nbd::{nbd_url, NbdExport, NbdServer};

use crate::remote::{Auth, ExitError, EXIT_INVALID};

/// `rha nbd ...`.
#[derive(Debug, clap::Subcommand)]
pub enum NbdCommand {
    /// Serve one image file over NBD as a tracked volume: every write is
    /// journalled before it is acknowledged. Prints the URL once listening.
    Serve(ServeArgs),
}

/// When the journal is fsync'ed.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Fsync {
    /// After every write (the client's acknowledgement means durable).
    Always,
    /// Every --fsync-interval-ms, and at each NBD flush or FUA write.
    Interval,
    /// Only at NBD flushes and FUA writes (what NBD itself promises).
    Never,
}

/// `rha nbd serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The image (raw or fixed VHD) to serve; the export is its file stem.
    image: PathBuf,
    /// Address to listen on (port 0: any free port; the URL printed says which).
    #[arg(long, default_value = "127.0.0.1:10809")]
    listen: String,
    /// The journal directory (default: IMAGE.journal beside the image).
    #[arg(long)]
    journal: Option<PathBuf>,
    /// When the journal is fsync'ed.
    #[arg(long, value_enum, default_value_t = Fsync::Interval)]
    fsync: Fsync,
    /// With --fsync interval: milliseconds between journal fsyncs.
    #[arg(long, default_value_t = 100)]
    fsync_interval_ms: u64,
    /// Bound of the journal in MiB (past it, writes are only marked in the change log).
    #[arg(long, default_value_t = 1024)]
    journal_max_mb: u64,
    /// With --fsync interval or never: MiB of the newest unacknowledged
    /// records kept only in memory (0: every record goes to the journal's files).
    #[arg(long, default_value_t = 64)]
    journal_memory_mb: u64,
    /// Serve read-only.
    #[arg(long)]
    read_only: bool,
}

/// The default journal directory of `image`: `IMAGE.journal` beside it.
fn default_journal(image: &Path) -> PathBuf {
    let mut name = image.file_name().unwrap_or_default().to_os_string();
    name.push(".journal");
    image.with_file_name(name)
}

/// Runs `rha nbd ...`.
pub fn run(cmd: NbdCommand, auth: &Auth) -> Result<ExitCode> {
    match cmd {
        NbdCommand::Serve(args) => serve(args, auth),
    }
}

fn serve(args: ServeArgs, auth: &Auth) -> Result<ExitCode> {
    let stem = args
        .image
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ExitError::new(
                EXIT_INVALID,
                format!(
                    "{}: the export is named after the file's stem, which must be UTF-8 and not empty",
                    args.image.display()
                ),
            )
        })?
        .to_owned();
    // TLS when certificates are given (the server certificate is `--as`, default `nbd`).
    let tls = match auth.has_certs() {
        true => match auth.security("nbd")? {
            Security::Tls(t) => Some(t),
            Security::InsecurePlaintext => None,
        },
        false => {
            eprintln!("rha: note: no --certs: the NBD export is served without TLS");
            None
        }
    };
    let volume: Arc<dyn Volume> = Arc::from(
        open_volume(&args.image).with_context(|| format!("opening {}", args.image.display()))?,
    );
    let journal_dir = args
        .journal
        .clone()
        .unwrap_or_else(|| default_journal(&args.image));
    let config = JournalConfig {
        max_bytes: args.journal_max_mb.saturating_mul(1 << 20),
        fsync: match args.fsync {
            Fsync::Always => FsyncPolicy::Always,
            Fsync::Interval => {
                FsyncPolicy::Interval(Duration::from_millis(args.fsync_interval_ms.max(1)))
            }
            Fsync::Never => FsyncPolicy::Never,
        },
        memory_bytes: args.journal_memory_mb.saturating_mul(1 << 20),
        ..JournalConfig::default()
    };
    let (set, recovery) = TrackedSet::open(&journal_dir, config, vec![volume], Events::new())
        .with_context(|| format!("opening the journal in {}", journal_dir.display()))?;
    for w in &recovery.warnings {
        eprintln!("rha: journal: {w}");
    }
    let tracked = set.volume(0).context("the tracked volume")?;
    let export = NbdExport {
        name: stem.clone(),
        description: format!(
            "rha: {} (journal {})",
            args.image.display(),
            journal_dir.display()
        ),
        volume: Arc::new(tracked),
        read_only: args.read_only,
    };
    let server = NbdServer::builder().tls(tls).export(export).build()?;
    let rt = crate::remote::runtime()?;
    rt.block_on(async {
        // The signal handlers first: a script may signal as soon as it has the URL.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let handle = server.listen(&args.listen).await?;
        let addr = handle
            .local_addr()
            .context("the NBD listener has no local address")?;
        println!("{}", nbd_url(&addr, &stem));
        use std::io::Write;
        let _ = std::io::stdout().flush();
        tracing::info!(%addr, export = %stem, journal = %journal_dir.display(), "serving over NBD");
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping: finishing the requests in flight");
        handle.shutdown().await;
        anyhow::Ok(())
    })?;
    drop(server);
    set.close()
        .with_context(|| format!("closing the journal in {}", journal_dir.display()))?;
    eprintln!("rha: NBD export `{stem}` stopped; journal closed cleanly");
    Ok(ExitCode::SUCCESS)
}
