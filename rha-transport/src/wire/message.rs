//! The messages of the rha protocol (see `docs/protocol.md` for the bytes).
//!
//! A session starts with [`Message::Hello`] from the side that opened the
//! TCP connection and [`Message::Welcome`] (or [`Message::Refused`]) from the
//! side that accepted it. After that the protocol is symmetric: either side
//! may send requests, each carrying a request id (`req`) that its answer
//! repeats. Requests without `req` ([`Message::Write`], [`Message::Zero`],
//! [`Message::Heartbeat`], [`Message::Stats`]) are not answered; a failure
//! they cause is reported by the next answered request.

use bytes::Bytes;
use rha_core::hash::{Hash, Node};
use rha_core::journal::Record;
use rha_core::{Seq, VolumeId};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// The oldest protocol version this build still speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// The engine's default TCP port.
pub const DEFAULT_PORT: u16 = 25000;

/// Payload compression, negotiated in the handshake and applied per frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    /// No compression.
    #[default]
    None,
    /// LZ4 block format (fast, modest ratio).
    Lz4,
    /// Zstandard level 1..=19 (slower, better ratio); the level is local to the sender.
    Zstd,
}

impl Compression {
    /// The name scenarios and status reports use: `none`, `lz4` or `zstd`.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// Why the side that opened the connection is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// An operator's tool (the `rha` CLI, bindings): sends [`Message::Control`] requests.
    Operator,
    /// An engine that opens scenario sessions on the engine it called
    /// (the appliance calling the master).
    Engine,
    /// NAT mode: a master engine that called the appliance and offers this
    /// connection for the appliance's requests (the appliance then sends
    /// [`Message::OpenScenario`] over it as if it had called the master).
    NatOffer,
}

/// The first message of the side that opened the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Oldest protocol version the caller speaks.
    pub version_min: u16,
    /// Newest protocol version the caller speaks.
    pub version_max: u16,
    /// The caller's engine (or operator) name, as in its certificate.
    pub name: String,
    /// Why it calls.
    pub intent: Intent,
    /// Compression the caller can use, most preferred first.
    pub compression: Vec<Compression>,
    /// Free text: the software and its version (for logs and status).
    pub software: String,
}

/// The accepting side's answer to a [`Hello`] it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The protocol version both sides use from now on.
    pub version: u16,
    /// The accepting engine's name.
    pub name: String,
    /// The compression both sides use from now on.
    pub compression: Compression,
    /// Free text: the software and its version.
    pub software: String,
}

/// Stable error codes carried by [`Message::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request is malformed or not valid in the session's state.
    BadRequest,
    /// No such scenario on this engine.
    NoSuchScenario,
    /// The scenario is in a state that does not allow the request.
    WrongState,
    /// The replica refused or failed (see the message).
    Replica,
    /// The master refused or failed (see the message).
    Master,
    /// The peer is not the one the scenario names.
    Identity,
    /// Anything else.
    Internal,
    /// A code this build does not know (sent by a newer peer).
    Other(u16),
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    // ── handshake ──────────────────────────────────────────────────────
    /// First message of the caller.
    Hello(Hello),
    /// The accepting side agrees; the session is open.
    Welcome(Welcome),
    /// The accepting side refuses (incompatible version, unknown intent);
    /// the connection closes after it.
    Refused {
        /// Why, for the caller's operator.
        reason: String,
    },

    // ── scenario session (appliance → master) ──────────────────────────
    /// Starts (or resumes) a scenario on the master: the scenario file.
    OpenScenario {
        /// Request id.
        req: u64,
        /// The scenario, as TOML.
        scenario: String,
    },
    /// The master runs the scenario; replication requests follow.
    ScenarioOpened {
        /// Request id of the [`Message::OpenScenario`].
        req: u64,
        /// Identity of the master's journal: changes when the master's
        /// journal is recreated, so the replica knows its state no longer
        /// pairs with the master's change log.
        journal_id: String,
        /// The size of each replicated volume, in scenario order.
        sizes: Vec<u64>,
    },

    // ── replication (master → replica): the SyncPeer calls ─────────────
    /// Asks for the replica's durable state.
    State {
        /// Request id.
        req: u64,
    },
    /// The replica's durable state.
    StateReply {
        /// Request id.
        req: u64,
        /// Newest sequence applied.
        applied: Seq,
        /// Whether the replica is consistent at `applied`.
        consistent: bool,
        /// Whether a synchronisation with this master completed.
        synced: bool,
    },
    /// A synchronisation of volumes of these sizes begins.
    BeginSync {
        /// Request id.
        req: u64,
        /// Master volume sizes.
        sizes: Vec<u64>,
    },
    /// Asks for the replica's hashes of tree nodes of a volume.
    Hashes {
        /// Request id.
        req: u64,
        /// The volume.
        volume: VolumeId,
        /// The nodes.
        nodes: Vec<Node>,
    },
    /// The replica's hashes, in the order asked.
    HashesReply {
        /// Request id.
        req: u64,
        /// One per node asked.
        hashes: Vec<Hash>,
    },
    /// Synchronisation data (not answered).
    Write {
        /// The volume.
        volume: VolumeId,
        /// Byte offset.
        offset: u64,
        /// The bytes (decoded as a slice of the received frame, not a copy).
        data: Bytes,
    },
    /// Zeroes a range during synchronisation (not answered).
    Zero {
        /// The volume.
        volume: VolumeId,
        /// Byte offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Barrier: every write before it is durable; the replica holds all changes up to `base`.
    EndSync {
        /// Request id.
        req: u64,
        /// The sequence the copy covers.
        base: Seq,
    },
    /// An ordered batch of journal records.
    Apply {
        /// Request id.
        req: u64,
        /// The records, in sequence order.
        records: Vec<Record>,
    },
    /// Acknowledgement: the replica durably applied up to `seq`.
    Applied {
        /// Request id.
        req: u64,
        /// The newest sequence durably applied.
        seq: Seq,
    },
    /// The replica is consistent at `seq`.
    MarkConsistent {
        /// Request id.
        req: u64,
        /// The sequence.
        seq: Seq,
    },
    /// Records a named recovery point at `seq` (answered with [`Message::Ok`]).
    Bookmark {
        /// Request id.
        req: u64,
        /// The operator's or the engine's name for the point.
        name: String,
        /// The sequence it marks.
        seq: Seq,
    },

    // ── general answers ────────────────────────────────────────────────
    /// The request succeeded and has nothing else to say.
    Ok {
        /// Request id.
        req: u64,
    },
    /// The request failed.
    Error {
        /// Request id (0 when the error concerns no request: the connection closes).
        req: u64,
        /// Stable code.
        code: ErrorCode,
        /// What failed and what to do, for a person.
        message: String,
    },

    // ── liveness and statistics ────────────────────────────────────────
    /// Sent by both sides every Is Alive interval (not answered).
    Heartbeat {
        /// Sender's clock, milliseconds since the Unix epoch.
        time_ms: u64,
        /// The master's newest captured sequence (0 from the replica).
        last_seq: Seq,
    },
    /// The master's statistics, a JSON object (not answered).
    Stats {
        /// The JSON text.
        json: String,
    },

    // ── appliance → master requests (also over a NAT-mode session) ─────
    /// Reads master blocks (restore, failback, verification).
    ReadBlocks {
        /// Request id.
        req: u64,
        /// The volume.
        volume: VolumeId,
        /// Byte offset.
        offset: u64,
        /// Bytes to read (at most the maximum frame payload).
        len: u32,
    },
    /// The bytes read.
    BlockData {
        /// Request id.
        req: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Asks the master to stop replicating for a switchover.
    Switchover {
        /// Request id.
        req: u64,
        /// Send the remaining journal first (false: stop at once).
        apply_journal: bool,
        /// Run the scenario's master-side step (disable the master's network adapter).
        master_step: bool,
    },
    /// The master stopped; the replica holds everything up to `seq`.
    SwitchoverReady {
        /// Request id.
        req: u64,
        /// The last sequence sent and acknowledged.
        seq: Seq,
        /// Outcome of the master-side step, for the report.
        master_step: String,
    },

    // ── control (operator → engine, engine → engine) ───────────────────
    /// A control request: a JSON object with a `"command"` member (see `docs/protocol.md`).
    Control {
        /// Request id.
        req: u64,
        /// The JSON text.
        json: String,
    },
    /// The answer to a [`Message::Control`]: a JSON object.
    ControlReply {
        /// Request id.
        req: u64,
        /// The JSON text.
        json: String,
    },

    /// The sender closes the connection.
    Close {
        /// Why, for the logs.
        reason: String,
    },
}

impl Message {
    /// The message type's name, as in this enum (for logs and errors).
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::Welcome(_) => "Welcome",
            Message::Refused { .. } => "Refused",
            Message::OpenScenario { .. } => "OpenScenario",
            Message::ScenarioOpened { .. } => "ScenarioOpened",
            Message::State { .. } => "State",
            Message::StateReply { .. } => "StateReply",
            Message::BeginSync { .. } => "BeginSync",
            Message::Hashes { .. } => "Hashes",
            Message::HashesReply { .. } => "HashesReply",
            Message::Write { .. } => "Write",
            Message::Zero { .. } => "Zero",
            Message::EndSync { .. } => "EndSync",
            Message::Apply { .. } => "Apply",
            Message::Applied { .. } => "Applied",
            Message::MarkConsistent { .. } => "MarkConsistent",
            Message::Bookmark { .. } => "Bookmark",
            Message::Ok { .. } => "Ok",
            Message::Error { .. } => "Error",
            Message::Heartbeat { .. } => "Heartbeat",
            Message::Stats { .. } => "Stats",
            Message::ReadBlocks { .. } => "ReadBlocks",
            Message::BlockData { .. } => "BlockData",
            Message::Switchover { .. } => "Switchover",
            Message::SwitchoverReady { .. } => "SwitchoverReady",
            Message::Control { .. } => "Control",
            Message::ControlReply { .. } => "ControlReply",
            Message::Close { .. } => "Close",
        }
    }

    /// The request id the message carries: for a request, its own id; for
    /// an answer, the id of the request it answers. `None` for the messages
    /// without one (the handshake, [`Message::Write`], [`Message::Zero`],
    /// [`Message::Heartbeat`], [`Message::Stats`], [`Message::Close`]).
    ///
    /// Request ids start at 1: `Some(0)` only comes from an
    /// [`Message::Error`] that concerns no request (the connection closes).
    pub fn req(&self) -> Option<u64> {
        match self {
            Message::OpenScenario { req, .. }
            | Message::ScenarioOpened { req, .. }
            | Message::State { req }
            | Message::StateReply { req, .. }
            | Message::BeginSync { req, .. }
            | Message::Hashes { req, .. }
            | Message::HashesReply { req, .. }
            | Message::EndSync { req, .. }
            | Message::Apply { req, .. }
            | Message::Applied { req, .. }
            | Message::MarkConsistent { req, .. }
            | Message::Bookmark { req, .. }
            | Message::Ok { req }
            | Message::Error { req, .. }
            | Message::ReadBlocks { req, .. }
            | Message::BlockData { req, .. }
            | Message::Switchover { req, .. }
            | Message::SwitchoverReady { req, .. }
            | Message::Control { req, .. }
            | Message::ControlReply { req, .. } => Some(*req),
            Message::Hello(_)
            | Message::Welcome(_)
            | Message::Refused { .. }
            | Message::Write { .. }
            | Message::Zero { .. }
            | Message::Heartbeat { .. }
            | Message::Stats { .. }
            | Message::Close { .. } => None,
        }
    }

    /// Whether the message is an answer to a request (as opposed to a
    /// request or an un-answered message).
    pub fn is_answer(&self) -> bool {
        matches!(
            self,
            Message::ScenarioOpened { .. }
                | Message::StateReply { .. }
                | Message::HashesReply { .. }
                | Message::Applied { .. }
                | Message::Ok { .. }
                | Message::Error { .. }
                | Message::BlockData { .. }
                | Message::SwitchoverReady { .. }
                | Message::ControlReply { .. }
        )
    }

    /// Whether the codec may compress this message (the bulky ones:
    /// [`Message::Write`], [`Message::Apply`], [`Message::BlockData`]).
    pub fn is_bulky(&self) -> bool {
        matches!(
            self,
            Message::Write { .. } | Message::Apply { .. } | Message::BlockData { .. }
        )
    }
}
