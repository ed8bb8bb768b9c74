//! Control requests (operator → engine, and appliance → master), carried as
//! JSON in [`Message::Control`], and the
//! [`Client`] that operators' tools use to send them.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::connect::{self, ConnectError, LocalInfo, Security};
use crate::limit::{Limiter, Schedule};
use crate::link::{Link, LinkError};
use crate::wire::{Compression, ErrorCode, Intent, Message};

/// One control request. The JSON form has a `"command"` member with the
/// variant's snake_case name and the fields beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlRequest {
    /// The engine's name, version and roles.
    Ping,
    /// Runs a scenario on this engine (the appliance): the scenario as TOML.
    Run {
        /// The scenario file's text.
        scenario: String,
    },
    /// Stops a running scenario (replication stops; state stays for a fast resync).
    Stop {
        /// The scenario's name.
        name: String,
    },
    /// Asks the master to stop a scenario (sent by the appliance).
    StopMaster {
        /// The scenario's name.
        name: String,
    },
    /// Statistics and state of one scenario, or of all.
    Status {
        /// The scenario's name; all when absent.
        #[serde(default)]
        name: Option<String>,
    },
    /// Switches a running scenario over to its replica.
    Switchover {
        /// The scenario's name.
        name: String,
        /// Start without applying the journal still on its way (faster, loses those changes).
        #[serde(default)]
        skip_journal: bool,
        /// Start the VM even from a replica that is not consistent.
        #[serde(default)]
        force: bool,
        /// The recovery point the VM is made from (`latest`, a bookmark's
        /// name or id, `seq:N`, or a bare sequence).
        #[serde(default = "latest")]
        point: String,
    },
    /// Starts the replica VM of a stopped scenario.
    VmStart {
        /// The scenario's name.
        name: String,
        /// The recovery point: `latest`, a bookmark's name or id, `seq:N`, or a bare sequence.
        #[serde(default = "latest")]
        point: String,
        /// Start it even from a replica that is not consistent.
        #[serde(default)]
        force: bool,
    },
    /// Takes a recovery point named `bookmark` (on the appliance): at the
    /// master's newest captured sequence, or at the replica's applied one.
    Bookmark {
        /// The scenario's name.
        name: String,
        /// The bookmark's name (letters, digits, `-`, `_`, `.`).
        bookmark: String,
        /// Mark the replica as it is (its applied sequence) instead of asking the master.
        #[serde(default)]
        replica: bool,
        /// How long to wait for the replica to reach the master's sequence
        /// before answering that the point is pending.
        #[serde(default = "bookmark_wait")]
        wait_secs: u64,
    },
    /// The recovery points of a scenario's replica (on the appliance).
    Points {
        /// The scenario's name.
        name: String,
    },
    /// The master's newest captured sequence of a scenario, after a capture
    /// (sent by the appliance for a bookmark).
    MasterSeq {
        /// The scenario's name.
        name: String,
    },
    /// The engine's volumes, and those of a scenario as found here (on a master).
    Discover {
        /// A scenario as TOML, to report its volumes.
        #[serde(default)]
        scenario: Option<String>,
    },
    /// Engine verification before a scenario is saved (on the appliance):
    /// validates it, checks free space here, and contacts the master.
    Verify {
        /// The scenario as TOML.
        scenario: String,
    },
}

fn latest() -> String {
    "latest".into()
}

fn bookmark_wait() -> u64 {
    60
}

/// An error answer to a control request.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The engine could not be reached or authenticated.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The link failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The engine refused or failed the request.
    #[error("{message}")]
    Refused {
        /// The engine's code.
        code: String,
        /// What failed and what to do.
        message: String,
    },
}

impl ClientError {
    /// The exit status the `rha` CLI uses for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Connect(_) | ClientError::Link(_) => 3,
            ClientError::Refused { code, .. }
                if code == "wrong_state" || code == "no_such_scenario" =>
            {
                4
            }
            ClientError::Refused { code, .. } if code == "bad_request" => 2,
            ClientError::Refused { .. } => 1,
        }
    }
}

/// The stable spelling of an error code in control replies.
pub fn code_name(code: ErrorCode) -> String {
    match code {
        ErrorCode::BadRequest => "bad_request".into(),
        ErrorCode::NoSuchScenario => "no_such_scenario".into(),
        ErrorCode::WrongState => "wrong_state".into(),
        ErrorCode::Replica => "replica".into(),
        ErrorCode::Master => "master".into(),
        ErrorCode::Identity => "identity".into(),
        ErrorCode::Internal => "internal".into(),
        ErrorCode::Other(n) => format!("code_{n}"),
    }
}

/// A control reply for an error.
pub fn error_reply(code: ErrorCode, message: impl Into<String>) -> serde_json::Value {
    serde_json::json!({"ok": false, "code": code_name(code), "error": message.into()})
}

/// An operator's connection to an engine.
#[derive(Debug, Clone)]
pub struct Client {
    link: Link,
}

impl Client {
    /// Connects to the engine at `addr` (host:port) as operator `name`.
    pub async fn connect(
        addr: &str,
        security: &Security,
        name: &str,
    ) -> Result<Client, ClientError> {
        let local = LocalInfo {
            name: name.into(),
            compression: vec![Compression::None],
        };
        let limiter = Arc::new(Limiter::new(Schedule::unlimited()));
        let (link, _inbox) =
            connect::dial(addr, security, &local, Intent::Operator, limiter).await?;
        Ok(Client { link })
    }

    /// The engine's name.
    pub fn engine_name(&self) -> &str {
        &self.link.peer().name
    }

    /// Sends a request and returns the reply's JSON (`{"ok": true, ...}`).
    pub async fn call(
        &self,
        req: &ControlRequest,
        timeout: Duration,
    ) -> Result<serde_json::Value, ClientError> {
        let json = serde_json::to_string(req).map_err(|e| ClientError::Refused {
            code: "internal".into(),
            message: e.to_string(),
        })?;
        let answer = self
            .link
            .request("Control", timeout, |req| Message::Control { req, json })
            .await?;
        let Message::ControlReply { json, .. } = answer else {
            return Err(self.link.unexpected("Control", &answer).into());
        };
        let v: serde_json::Value =
            serde_json::from_str(&json).map_err(|e| ClientError::Refused {
                code: "internal".into(),
                message: format!("the engine's reply is not JSON: {e}"),
            })?;
        if v["ok"].as_bool() == Some(true) {
            Ok(v)
        } else {
            Err(ClientError::Refused {
                code: v["code"].as_str().unwrap_or("internal").into(),
                message: v["error"]
                    .as_str()
                    .unwrap_or("the engine refused the request")
                    .into(),
            })
        }
    }

    /// Closes the connection.
    pub async fn close(self) {
        self.link.shutdown("done").await;
    }
}
