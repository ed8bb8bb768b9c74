//! What went wrong talking to Azure Blob storage, and where.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use rha_core::sink::SinkError;
use rha_core::volume::VolumeError;

/// An operation on Azure Blob storage that failed: what was attempted
/// (`op`), on which blob (`url`), where in it (`offset`), how often, and why
/// ([`AzureErrorKind`], whose message says what to do).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{op} {url}{}: {kind}{}", at(*offset), tries(*attempts))]
pub struct AzureError {
    /// The operation (`put pages`, `read`, `acquire lease on`, ...).
    pub op: &'static str,
    /// The blob or container URL (without credentials).
    pub url: String,
    /// The byte offset in the blob, for page operations.
    pub offset: Option<u64>,
    /// How many attempts were made (more than one after retries).
    pub attempts: u32,
    /// What went wrong.
    pub kind: AzureErrorKind,
}

fn at(offset: Option<u64>) -> String {
    offset
        .map(|o| format!(" at offset {o}"))
        .unwrap_or_default()
}

fn tries(attempts: u32) -> String {
    if attempts > 1 {
        format!(" (gave up after {attempts} attempts)")
    } else {
        String::new()
    }
}

/// Why an operation on Azure Blob storage failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AzureErrorKind {
    /// The service answered with an error status.
    Service {
        /// The HTTP status.
        status: u16,
        /// Azure's error code (`LeaseIdMismatchWithBlobOperation`, `ServerBusy`, ...), if any.
        code: Option<String>,
        /// The service's message, if any.
        message: Option<String>,
    },
    /// The request never got an answer: connection refused, reset or dropped.
    Transport {
        /// The underlying error.
        detail: String,
    },
    /// No answer within the attempt timeout.
    Timeout {
        /// The attempt timeout.
        after: Duration,
    },
    /// Another appliance holds the lease on the blob.
    LeaseConflict {
        /// The service's answer.
        detail: String,
    },
    /// The blob does not exist.
    NotFound,
    /// The replica already exists where a new one was to be created.
    AlreadyExists,
    /// The blob's contents are not what rha expects (no or damaged VHD footer, bad state).
    BadBlob {
        /// What is wrong and what to do.
        reason: String,
    },
    /// A request that cannot be made (bad configuration or arguments).
    Invalid {
        /// What is wrong and what to do.
        reason: String,
    },
    /// The SDK failed before or after talking to the service.
    Sdk {
        /// The SDK's message.
        detail: String,
    },
}

impl fmt::Display for AzureErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AzureErrorKind::Service {
                status,
                code,
                message,
            } => {
                let code_s = code.as_deref().unwrap_or("");
                write!(f, "the service answered {status}")?;
                if !code_s.is_empty() {
                    write!(f, " {code_s}")?;
                }
                if let Some(m) = message {
                    let first = m.lines().next().unwrap_or("");
                    if !first.is_empty() {
                        write!(f, " ({first})")?;
                    }
                }
                write!(f, ": {}", service_hint(*status, code_s))
            }
            AzureErrorKind::Transport { detail } => write!(
                f,
                "the connection failed ({detail}); check the network path to the storage \
                 account (DNS, firewall, proxy) and retry: writes are idempotent"
            ),
            AzureErrorKind::Timeout { after } => write!(
                f,
                "no answer within {after:?}; the storage account is overloaded or \
                 unreachable: retry later, lower the number of requests in flight or raise \
                 the attempt timeout"
            ),
            AzureErrorKind::LeaseConflict { detail } => write!(
                f,
                "another appliance holds the lease on this blob ({detail}), so this one must \
                 not write it; stop the other appliance, or if it is gone for good open the \
                 replica with `takeover` to break its lease"
            ),
            AzureErrorKind::NotFound => write!(
                f,
                "the blob does not exist; check the container and prefix, or create the \
                 replica first"
            ),
            AzureErrorKind::AlreadyExists => write!(
                f,
                "a replica already exists here; open it instead, or delete it (every blob \
                 under the prefix) to start afresh"
            ),
            AzureErrorKind::BadBlob { reason } | AzureErrorKind::Invalid { reason } => {
                write!(f, "{reason}")
            }
            AzureErrorKind::Sdk { detail } => write!(f, "{detail}"),
        }
    }
}

fn service_hint(status: u16, code: &str) -> &'static str {
    match (status, code) {
        (412, c) if c.starts_with("Lease") => {
            "the write carried no lease or a lease this blob no longer has: another \
             appliance may have broken or taken the lease; reopen the replica"
        }
        (409, c) if c.starts_with("Lease") => {
            "the blob's lease is held by someone else; stop the other appliance or open \
             with `takeover`"
        }
        (403, _) => {
            "the credentials were refused: check the account name and key or the SAS \
             token (its permissions and expiry) and the machine's clock"
        }
        (404, _) => "the container or blob does not exist",
        (416, _) | (413, _) => "the range lies outside the blob: the replica's size is wrong",
        (429, _) | (503, _) | (500, _) | (502, _) | (504, _) => {
            "the storage account throttled or failed the request on every attempt: lower \
             the requests in flight, or retry later"
        }
        _ => "see the service's error code in the Azure Blob storage documentation",
    }
}

impl AzureError {
    /// An error that happened without talking to the service.
    pub(crate) fn local(
        op: &'static str,
        url: impl Into<String>,
        offset: Option<u64>,
        kind: AzureErrorKind,
    ) -> Self {
        AzureError {
            op,
            url: url.into(),
            offset,
            attempts: 0,
            kind,
        }
    }

    /// The HTTP status the service answered, if it answered.
    pub fn status(&self) -> Option<u16> {
        match &self.kind {
            AzureErrorKind::Service { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True when the service answered with this Azure error code.
    pub fn has_code(&self, want: &str) -> bool {
        matches!(&self.kind, AzureErrorKind::Service { code: Some(c), .. } if c == want)
    }

    /// True when another appliance holds (or took) the blob's lease.
    pub fn is_lease_conflict(&self) -> bool {
        match &self.kind {
            AzureErrorKind::LeaseConflict { .. } => true,
            AzureErrorKind::Service {
                status: 409 | 412,
                code: Some(c),
                ..
            } => c.starts_with("Lease"),
            _ => false,
        }
    }

    fn io_kind(&self) -> io::ErrorKind {
        match &self.kind {
            AzureErrorKind::Timeout { .. } => io::ErrorKind::TimedOut,
            AzureErrorKind::Transport { .. } => io::ErrorKind::ConnectionAborted,
            AzureErrorKind::NotFound => io::ErrorKind::NotFound,
            AzureErrorKind::AlreadyExists => io::ErrorKind::AlreadyExists,
            AzureErrorKind::LeaseConflict { .. } => io::ErrorKind::PermissionDenied,
            AzureErrorKind::Service { status: 403, .. } => io::ErrorKind::PermissionDenied,
            AzureErrorKind::Service { status: 404, .. } => io::ErrorKind::NotFound,
            AzureErrorKind::Invalid { .. } => io::ErrorKind::InvalidInput,
            AzureErrorKind::BadBlob { .. } => io::ErrorKind::InvalidData,
            _ => io::ErrorKind::Other,
        }
    }

    /// The error as an [`io::Error`] whose message is the cause only (the
    /// operation, URL and offset go in the surrounding rha error). The
    /// `AzureError` itself is inside: see [`azure_error_of_io`].
    fn into_io(self) -> io::Error {
        io::Error::new(self.io_kind(), Cause(self))
    }
}

/// Carries an [`AzureError`] inside an [`io::Error`], displaying only its cause.
#[derive(Debug)]
struct Cause(AzureError);

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.0.kind, tries(self.0.attempts))
    }
}

impl std::error::Error for Cause {}

/// The [`AzureError`] inside an `io::Error` made by this crate, if any.
pub fn azure_error_of_io(e: &io::Error) -> Option<&AzureError> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<Cause>())
        .map(|c| &c.0)
}

/// The [`AzureError`] behind a [`VolumeError`] returned by this crate, if any.
pub fn azure_error_of_volume(e: &VolumeError) -> Option<&AzureError> {
    match e {
        VolumeError::Io { source, .. } => azure_error_of_io(source),
        _ => None,
    }
}

/// The [`AzureError`] behind a [`SinkError`] returned by this crate, if any.
pub fn azure_error_of_sink(e: &SinkError) -> Option<&AzureError> {
    match e {
        SinkError::Io { source, .. } => azure_error_of_io(source),
        SinkError::Volume(v) => azure_error_of_volume(v),
        _ => None,
    }
}

impl From<AzureError> for VolumeError {
    fn from(e: AzureError) -> Self {
        VolumeError::Io {
            op: e.op,
            path: PathBuf::from(&e.url),
            offset: e.offset.unwrap_or(0),
            source: e.into_io(),
        }
    }
}

impl From<AzureError> for SinkError {
    fn from(e: AzureError) -> Self {
        SinkError::Io {
            op: e.op,
            path: PathBuf::from(&e.url),
            source: e.into_io(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_where_and_what_to_do() {
        let e = AzureError {
            op: "put pages",
            url: "http://127.0.0.1:1/devstoreaccount1/c/disk-0.vhd".into(),
            offset: Some(4096),
            attempts: 7,
            kind: AzureErrorKind::Service {
                status: 503,
                code: Some("ServerBusy".into()),
                message: None,
            },
        };
        let s = e.to_string();
        assert!(
            s.contains("put pages http://127.0.0.1:1/devstoreaccount1/c/disk-0.vhd at offset 4096"),
            "{s}"
        );
        assert!(s.contains("503 ServerBusy"), "{s}");
        assert!(s.contains("retry later"), "{s}");
        assert!(s.contains("7 attempts"), "{s}");
        let v: VolumeError = e.into();
        let vs = v.to_string();
        assert!(vs.starts_with("put pages http://"), "{vs}");
        assert_eq!(vs.matches("disk-0.vhd").count(), 1, "{vs}");
        assert_eq!(
            azure_error_of_volume(&v).and_then(|e| e.status()),
            Some(503)
        );
    }

    #[test]
    fn lease_conflicts_are_recognised() {
        let e = AzureError::local(
            "write",
            "u",
            None,
            AzureErrorKind::Service {
                status: 412,
                code: Some("LeaseIdMismatchWithBlobOperation".into()),
                message: None,
            },
        );
        assert!(e.is_lease_conflict());
        let s: SinkError = e.into();
        assert!(azure_error_of_sink(&s).is_some_and(AzureError::is_lease_conflict));
    }
}
