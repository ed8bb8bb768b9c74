//! Clearing the dirty bitmap once the replica holds its regions: an explicit
//! step that needs the proof that a synchronisation landed.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long `qemu-img` is retried while the image is still locked (a
/// `qemu-nbd` that exits when its last client disconnects needs a moment).
const LOCK_RETRY: Duration = Duration::from_secs(10);
/// How long one QMP read or write may block.
const QMP_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes of one QMP message accepted.
const MAX_QMP_LINE: u64 = 1 << 20;
/// Most messages (events) skipped while waiting for a command's answer.
const MAX_QMP_MESSAGES: usize = 1000;

/// Proof that a synchronisation of a bitmap's dirty ranges landed durably on
/// the replica: made only by
/// [`DirtyBitmapSource::finish`](super::DirtyBitmapSource::finish), consumed by
/// [`BitmapReset::reset`]. So a bitmap is never cleared before the replica
/// holds what it marked.
#[derive(Debug)]
pub struct Synchronised {
    pub(super) bitmap: String,
    pub(super) dirty_bytes: u64,
}

impl Synchronised {
    /// The bitmap that was synchronised.
    pub fn bitmap(&self) -> &str {
        &self.bitmap
    }

    /// Bytes the bitmap marked dirty when it was last walked.
    pub fn dirty_bytes(&self) -> u64 {
        self.dirty_bytes
    }
}

/// How to clear the bitmap after a successful synchronisation.
///
/// Call [`BitmapReset::begin`] before the bitmap is walked and
/// [`BitmapReset::reset`] after the synchronisation. On a running VM
/// ([`BitmapReset::Qmp`]) writes go on meanwhile: `begin` starts a second
/// bitmap, `NAME` + [`DURING_SUFFIX`], and `reset` clears `NAME` and merges
/// that one into it in one QMP transaction, so a write made after `begin`
/// stays marked for the next synchronisation. An image
/// ([`BitmapReset::Image`]) must not be written by anyone from `begin` to
/// `reset` (it is exported read-only by `qemu-nbd`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BitmapReset {
    /// `qemu-img bitmap --clear IMAGE NAME`: for an image no process holds
    /// open (the `qemu-nbd` export must have exited; the reset waits a few
    /// seconds for that).
    Image {
        /// The qcow2 image.
        image: PathBuf,
    },
    /// QMP on a running QEMU: `block-dirty-bitmap-add` of the bitmap that
    /// records writes during the synchronisation, then a transaction of
    /// `block-dirty-bitmap-clear` and `block-dirty-bitmap-merge`.
    Qmp {
        /// The VM's QMP unix socket (`-qmp unix:PATH,server=on,wait=off`).
        socket: PathBuf,
        /// The block node that holds the bitmap (its node name or device id).
        node: String,
        /// The id of the NBD export (`block-export-add`) that serves the
        /// bitmap to the synchronisation, if QEMU's own NBD server does: QEMU
        /// keeps an exported bitmap busy, so the reset removes the export
        /// (`block-export-del`) first and waits until the bitmap is free.
        export: Option<String>,
    },
}

/// Appended to a bitmap's name to name the bitmap that
/// [`BitmapReset::begin`] adds on a running QEMU.
pub const DURING_SUFFIX: &str = "-rha-during-sync";

/// The name of the bitmap that [`BitmapReset::begin`] adds beside `bitmap`.
fn during_name(bitmap: &str) -> String {
    format!("{bitmap}{DURING_SUFFIX}")
}

/// The entry of `bitmaps` (as `query-named-block-nodes` lists a node's) named `name`.
fn named<'a>(bitmaps: &'a [Value], name: &str) -> Option<&'a Value> {
    bitmaps
        .iter()
        .find(|b| b.get("name").and_then(Value::as_str) == Some(name))
}

impl BitmapReset {
    /// Prepares the reset, before the bitmap `bitmap` is walked. On a
    /// running QEMU this adds the persistent bitmap `bitmap` +
    /// [`DURING_SUFFIX`], with the same granularity, to record the writes
    /// made from now on; one left by an earlier synchronisation that did not
    /// finish is kept (it has recorded at least as much). Nothing to do for
    /// an image.
    pub fn begin(&self, bitmap: &str) -> Result<(), ResetError> {
        let BitmapReset::Qmp { socket, node, .. } = self else {
            return Ok(());
        };
        let mut qmp = Qmp::connect(socket)?;
        let bitmaps = qmp.bitmaps(node)?;
        let during = during_name(bitmap);
        let granularity = named(&bitmaps, bitmap)
            .and_then(|b| b.get("granularity").and_then(Value::as_u64))
            .ok_or_else(|| ResetError::NoSuchBitmap {
                socket: socket.clone(),
                node: node.clone(),
                bitmap: bitmap.to_string(),
            })?;
        if named(&bitmaps, &during).is_some() {
            return Ok(());
        }
        qmp.execute(
            "block-dirty-bitmap-add",
            json!({ "node": node, "name": during, "granularity": granularity, "persistent": true }),
        )?;
        Ok(())
    }

    /// Clears the bitmap that `proof` names (a failed reset may be retried
    /// with the same proof). On a running QEMU the writes recorded since
    /// [`BitmapReset::begin`] are merged back into it in the same
    /// transaction, and the bitmap `begin` added is removed; without that
    /// bitmap nothing is cleared ([`ResetError::NotBegun`]).
    pub fn reset(&self, proof: &Synchronised) -> Result<(), ResetError> {
        match self {
            BitmapReset::Image { image } => clear_with_qemu_img(image, &proof.bitmap),
            BitmapReset::Qmp {
                socket,
                node,
                export,
            } => {
                let mut qmp = Qmp::connect(socket)?;
                if let Some(id) = export {
                    qmp.remove_export(id, node, &proof.bitmap)?;
                }
                let during = during_name(&proof.bitmap);
                if named(&qmp.bitmaps(node)?, &during).is_none() {
                    return Err(ResetError::NotBegun {
                        bitmap: proof.bitmap.clone(),
                        during,
                    });
                }
                let transaction = qmp.execute(
                    "transaction",
                    json!({ "actions": [
                        { "type": "block-dirty-bitmap-clear",
                          "data": { "node": node, "name": proof.bitmap } },
                        { "type": "block-dirty-bitmap-merge",
                          "data": { "node": node, "target": proof.bitmap, "bitmaps": [during] } },
                    ]}),
                );
                if let Err(ResetError::QmpRefused { desc, .. }) = &transaction {
                    if desc.contains("in use") {
                        return Err(ResetError::BitmapBusy {
                            socket: socket.clone(),
                            bitmap: proof.bitmap.clone(),
                            desc: desc.clone(),
                        });
                    }
                }
                transaction?;
                qmp.execute(
                    "block-dirty-bitmap-remove",
                    json!({ "node": node, "name": during }),
                )?;
                Ok(())
            }
        }
    }
}

fn clear_with_qemu_img(image: &Path, bitmap: &str) -> Result<(), ResetError> {
    let started = Instant::now();
    loop {
        let out = Command::new("qemu-img")
            .args(["bitmap", "--clear", "-f", "qcow2"])
            .arg(image)
            .arg(bitmap)
            .output()
            .map_err(|source| ResetError::Spawn {
                program: "qemu-img",
                source,
            })?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let locked = stderr.contains("lock");
        if !locked || started.elapsed() >= LOCK_RETRY {
            return Err(ResetError::QemuImg {
                image: image.to_path_buf(),
                bitmap: bitmap.to_string(),
                status: out.status.to_string(),
                stderr: if locked {
                    format!("{stderr} (the image is still in use: stop the qemu-nbd export, or start it without --persistent so it exits when rha disconnects)")
                } else {
                    stderr
                },
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A minimal QMP client: greeting, `qmp_capabilities`, then commands.
struct Qmp {
    socket: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    fn connect(socket: &Path) -> Result<Self, ResetError> {
        let io = |op: &'static str| {
            move |source| ResetError::QmpIo {
                socket: socket.to_path_buf(),
                op,
                source,
            }
        };
        let stream = UnixStream::connect(socket).map_err(io("connect to"))?;
        stream
            .set_read_timeout(Some(QMP_TIMEOUT))
            .map_err(io("configure"))?;
        stream
            .set_write_timeout(Some(QMP_TIMEOUT))
            .map_err(io("configure"))?;
        let writer = stream.try_clone().map_err(io("configure"))?;
        let mut qmp = Qmp {
            socket: socket.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.message()?;
        if greeting.get("QMP").is_none() {
            return Err(qmp.protocol(format!("the greeting has no \"QMP\" member: {greeting}")));
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    /// Sends a command and waits for its `return` (events are skipped).
    fn execute(&mut self, command: &'static str, arguments: Value) -> Result<Value, ResetError> {
        let mut line = json!({ "execute": command, "arguments": arguments }).to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|source| ResetError::QmpIo {
                socket: self.socket.clone(),
                op: "send a command to",
                source,
            })?;
        for _ in 0..MAX_QMP_MESSAGES {
            let msg = self.message()?;
            if let Some(r) = msg.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = msg.get("error") {
                let field = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                return Err(ResetError::QmpRefused {
                    socket: self.socket.clone(),
                    command,
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            if msg.get("event").is_none() {
                return Err(self.protocol(format!(
                    "an answer that is neither return, error nor event: {msg}"
                )));
            }
        }
        Err(self.protocol(format!(
            "no answer to {command} after {MAX_QMP_MESSAGES} events"
        )))
    }

    /// `block-export-del` of export `id` (one already gone is fine), then
    /// waits until QEMU no longer holds `bitmap` of `node` busy (the export
    /// goes once its last client has disconnected).
    fn remove_export(&mut self, id: &str, node: &str, bitmap: &str) -> Result<(), ResetError> {
        match self.execute("block-export-del", json!({ "id": id })) {
            Err(ResetError::QmpRefused { desc, .. }) if desc.contains("not found") => {}
            other => {
                other?;
            }
        }
        let started = Instant::now();
        loop {
            let busy = named(&self.bitmaps(node)?, bitmap)
                .is_some_and(|b| b.get("busy").and_then(Value::as_bool) == Some(true));
            if !busy {
                return Ok(());
            }
            if started.elapsed() >= LOCK_RETRY {
                return Err(ResetError::BitmapBusy {
                    socket: self.socket.clone(),
                    bitmap: bitmap.to_string(),
                    desc: format!("still busy {} s after block-export-del of export {id:?} (does another client still use it?)", LOCK_RETRY.as_secs()),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The dirty bitmaps of block node `node` (its node name), as
    /// `query-named-block-nodes` lists them.
    fn bitmaps(&mut self, node: &str) -> Result<Vec<Value>, ResetError> {
        let nodes = self.execute("query-named-block-nodes", json!({ "flat": true }))?;
        let Some(nodes) = nodes.as_array() else {
            return Err(self.protocol(format!(
                "query-named-block-nodes returned {nodes}, not a list"
            )));
        };
        let Some(found) = nodes
            .iter()
            .find(|n| n.get("node-name").and_then(Value::as_str) == Some(node))
        else {
            let names: Vec<&str> = nodes
                .iter()
                .filter_map(|n| n.get("node-name").and_then(Value::as_str))
                .collect();
            return Err(ResetError::NoSuchNode {
                socket: self.socket.clone(),
                node: node.to_string(),
                known: names.join(", "),
            });
        };
        Ok(found
            .get("dirty-bitmaps")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    /// Reads one message (one JSON object per line, at most [`MAX_QMP_LINE`] bytes).
    fn message(&mut self) -> Result<Value, ResetError> {
        let mut line = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_QMP_LINE)
            .read_until(b'\n', &mut line)
            .map_err(|source| ResetError::QmpIo {
                socket: self.socket.clone(),
                op: "read from",
                source,
            })?;
        if n == 0 {
            return Err(self.protocol("QEMU closed the connection".into()));
        }
        if !line.ends_with(b"\n") {
            return Err(self.protocol(format!("a message longer than {MAX_QMP_LINE} bytes")));
        }
        serde_json::from_slice::<Value>(&line)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| {
                self.protocol(format!(
                    "not a JSON object: {}",
                    String::from_utf8_lossy(&line[..line.len().min(200)]).trim()
                ))
            })
    }

    fn protocol(&self, detail: String) -> ResetError {
        ResetError::QmpProtocol {
            socket: self.socket.clone(),
            detail,
        }
    }
}

/// What went wrong while clearing a dirty bitmap.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResetError {
    /// No synchronisation of the bitmap's ranges landed, so it is not cleared.
    #[error(
        "dirty bitmap {bitmap:?} is not cleared: no synchronisation of its dirty ranges completed"
    )]
    NotSynchronised {
        /// The bitmap.
        bitmap: String,
    },
    /// A program could not be started.
    #[error("run {program}: {source} (is qemu-utils installed?)")]
    Spawn {
        /// The program.
        program: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// `qemu-img bitmap --clear` failed.
    #[error("qemu-img bitmap --clear {} {bitmap} failed ({status}): {stderr}", image.display())]
    QemuImg {
        /// The image.
        image: PathBuf,
        /// The bitmap.
        bitmap: String,
        /// How qemu-img exited.
        status: String,
        /// What it said.
        stderr: String,
    },
    /// The QMP socket failed.
    #[error("QMP {op} {}: {source}", socket.display())]
    QmpIo {
        /// The socket.
        socket: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// QEMU answered something that is not QMP.
    #[error("QMP {}: {detail}", socket.display())]
    QmpProtocol {
        /// The socket.
        socket: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The QEMU has no block node of that name.
    #[error("QMP {}: no block node named {node:?} (the node names are: {known}); pass the node name of the disk that holds the bitmap", socket.display())]
    NoSuchNode {
        /// The socket.
        socket: PathBuf,
        /// The node asked for.
        node: String,
        /// The node names QEMU listed.
        known: String,
    },
    /// The block node has no bitmap of that name.
    #[error("QMP {}: block node {node:?} has no dirty bitmap {bitmap:?} (add it with block-dirty-bitmap-add, persistent, before the replica's baseline copy)", socket.display())]
    NoSuchBitmap {
        /// The socket.
        socket: PathBuf,
        /// The node.
        node: String,
        /// The bitmap asked for.
        bitmap: String,
    },
    /// QEMU holds the bitmap busy, as it does while an NBD export
    /// (`block-export-add ... bitmaps`) serves it.
    #[error("QMP {}: dirty bitmap {bitmap:?} is not cleared: {desc}; an NBD export that serves the bitmap keeps it busy: name the export (BitmapReset::Qmp's export, rha sync --qmp-export ID) so that the reset removes it first, or remove it yourself (block-export-del ID), then retry the reset (nothing was changed)", socket.display())]
    BitmapBusy {
        /// The socket.
        socket: PathBuf,
        /// The bitmap.
        bitmap: String,
        /// QEMU's description.
        desc: String,
    },
    /// [`BitmapReset::reset`] on a running QEMU found no bitmap recording
    /// the writes made during the synchronisation, so it clears nothing.
    #[error("dirty bitmap {bitmap:?} is not cleared: bitmap {during:?}, which records the writes made during the synchronisation, does not exist (BitmapReset::begin was not called before the sync, or it was removed); the next synchronisation sends the same regions again")]
    NotBegun {
        /// The bitmap.
        bitmap: String,
        /// The bitmap that `begin` adds.
        during: String,
    },
    /// QEMU refused the command.
    #[error("QMP {}: {command} failed: {class}: {desc}", socket.display())]
    QmpRefused {
        /// The socket.
        socket: PathBuf,
        /// The command.
        command: &'static str,
        /// QEMU's error class.
        class: String,
        /// QEMU's description.
        desc: String,
    },
}
