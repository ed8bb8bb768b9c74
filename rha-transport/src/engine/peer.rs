//! [`RemotePeer`]: the core's [`SyncPeer`] over a [`Link`], used by the
//! master's replication thread (outside the async runtime).

use std::time::Duration;

use bytes::BytesMut;

use rha_core::hash::{Hash, Node};
use rha_core::journal::Record;
use rha_core::sink::ReplicaState;
use rha_core::sync::{PendingApply, SyncError, SyncPeer, Traffic};
use rha_core::{Seq, VolumeId};

use crate::link::{Link, LinkError, PendingAnswer};
use crate::wire::{Codec, Message};

/// How long the replica may take to answer one request (an end-of-sync
/// barrier flushes whole disks, so it is generous; a dead link fails sooner).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

/// Largest piece of synchronisation data per `Write` message.
pub const WRITE_CHUNK: usize = 1 << 20;

/// The replica at the other end of a link, as the sync algorithms see it.
#[derive(Debug)]
pub struct RemotePeer {
    link: Link,
    /// Encodes synchronisation data straight from the caller's buffer.
    encoder: Codec,
    /// `Apply` requests sent by [`SyncPeer::send_apply`], by request id.
    applying: std::collections::HashMap<u64, PendingAnswer>,
}

impl RemotePeer {
    /// A peer over `link`.
    pub fn new(link: Link) -> Self {
        let encoder = link.encoder();
        RemotePeer {
            link,
            encoder,
            applying: std::collections::HashMap::new(),
        }
    }

    fn call(
        &self,
        what: &'static str,
        build: impl FnOnce(u64) -> Message,
    ) -> Result<Message, SyncError> {
        self.link
            .request_blocking(what, ANSWER_TIMEOUT, build)
            .map_err(link_error)
    }

    fn expect_ok(&self, what: &'static str, m: Message) -> Result<(), SyncError> {
        match m {
            Message::Ok { .. } => Ok(()),
            other => Err(link_error(self.link.unexpected(what, &other))),
        }
    }
}

/// A link failure as the sync algorithms report it.
pub fn link_error(e: LinkError) -> SyncError {
    SyncError::Link(e.to_string())
}

impl SyncPeer for RemotePeer {
    fn state(&mut self) -> Result<ReplicaState, SyncError> {
        match self.call("State", |req| Message::State { req })? {
            Message::StateReply {
                applied,
                consistent,
                synced,
                ..
            } => Ok(ReplicaState {
                applied,
                consistent,
                synced,
            }),
            other => Err(link_error(self.link.unexpected("State", &other))),
        }
    }

    fn begin_sync(&mut self, sizes: &[u64]) -> Result<(), SyncError> {
        let sizes = sizes.to_vec();
        let m = self.call("BeginSync", |req| Message::BeginSync { req, sizes })?;
        self.expect_ok("BeginSync", m)
    }

    fn hashes(&mut self, volume: VolumeId, nodes: &[Node]) -> Result<Vec<Hash>, SyncError> {
        let nodes = nodes.to_vec();
        let asked = nodes.len();
        match self.call("Hashes", |req| Message::Hashes { req, volume, nodes })? {
            Message::HashesReply { hashes, .. } if hashes.len() == asked => Ok(hashes),
            Message::HashesReply { hashes, .. } => Err(SyncError::BadReply {
                asked,
                got: hashes.len(),
            }),
            other => Err(link_error(self.link.unexpected("Hashes", &other))),
        }
    }

    /// Sends `data` as `Write` frames encoded on this thread straight from
    /// the caller's buffer (one copy of the data, and the CRC, here rather
    /// than on the link's writer task).
    fn write(&mut self, volume: VolumeId, offset: u64, data: &[u8]) -> Result<(), SyncError> {
        self.encoder.set_compression(self.link.compression());
        for (i, chunk) in data.chunks(WRITE_CHUNK).enumerate() {
            let at = offset + (i * WRITE_CHUNK) as u64;
            let mut frame = BytesMut::with_capacity(chunk.len() + 64);
            self.encoder
                .encode_write(volume, at, chunk, &mut frame)
                .map_err(|e| SyncError::Link(format!("cannot encode a Write at {at}: {e}")))?;
            self.link.send_frame_blocking(frame).map_err(link_error)?;
        }
        Ok(())
    }

    fn zero(&mut self, volume: VolumeId, offset: u64, len: u64) -> Result<(), SyncError> {
        self.link
            .send_blocking(Message::Zero {
                volume,
                offset,
                len,
            })
            .map_err(link_error)
    }

    fn end_sync(&mut self, base: Seq) -> Result<(), SyncError> {
        let m = self.call("EndSync", |req| Message::EndSync { req, base })?;
        self.expect_ok("EndSync", m)
    }

    fn apply(&mut self, records: &[Record]) -> Result<Seq, SyncError> {
        let pending = self.send_apply(records)?;
        self.wait_applied(pending)
    }

    /// Sends the `Apply` request and returns at once: the records' data is
    /// shared, not copied, and the replica answers requests in order.
    fn send_apply(&mut self, records: &[Record]) -> Result<PendingApply, SyncError> {
        let records = records.to_vec();
        let answer = self
            .link
            .send_request_blocking(|req| Message::Apply { req, records })
            .map_err(link_error)?;
        let req = answer.req();
        self.applying.insert(req, answer);
        Ok(PendingApply::InFlight(req))
    }

    fn wait_applied(&mut self, pending: PendingApply) -> Result<Seq, SyncError> {
        let req = match pending {
            PendingApply::Done(seq) => return Ok(seq),
            PendingApply::InFlight(req) => req,
        };
        let answer = self.applying.remove(&req).ok_or_else(|| {
            SyncError::Link(format!("no Apply request {req} is in flight on this link"))
        })?;
        match answer.wait("Apply", ANSWER_TIMEOUT).map_err(link_error)? {
            Message::Applied { seq, .. } => Ok(seq),
            other => Err(link_error(self.link.unexpected("Apply", &other))),
        }
    }

    fn mark_consistent(&mut self, seq: Seq) -> Result<(), SyncError> {
        let m = self.call("MarkConsistent", |req| Message::MarkConsistent { req, seq })?;
        self.expect_ok("MarkConsistent", m)
    }

    fn traffic(&self) -> Traffic {
        let (sent, received) = self.link.traffic();
        Traffic { sent, received }
    }
}
