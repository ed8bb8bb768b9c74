//! The exception hierarchy, and the one place Rust errors become exceptions.
//!
//! ```text
//! RhaError
//!  ├── ValidationError     a scenario, an argument or a request is not valid
//!  ├── SyncError           a synchronisation failed (master or replica disks)
//!  ├── TransportError      an engine could not be reached, or refused our certificate
//!  │    └── CertificateError  making or loading certificates failed
//!  ├── EngineError         an engine failed a request or could not start
//!  │    └── StateError        no such scenario, or not in a state that allows it
//!  └── CloudError          a cloud account is invalid, missing or refused
//! ```
//!
//! Messages are the Rust errors' own (`Display`). Engine refusals carry
//! the engine's code (`bad_request`, `wrong_state`, ...) as `code`.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(
    rha,
    RhaError,
    PyException,
    "Base class of every error rha raises."
);
create_exception!(
    rha,
    ValidationError,
    RhaError,
    "A scenario, an argument or a request is not valid; `findings` lists the problems when a validation found them."
);
create_exception!(
    rha,
    SyncError,
    RhaError,
    "A synchronisation failed: a master or replica disk could not be read or written."
);
create_exception!(
    rha,
    TransportError,
    RhaError,
    "An engine could not be reached, the link failed, or the peer refused our certificate."
);
create_exception!(
    rha,
    CertificateError,
    TransportError,
    "Making or loading certificates failed."
);
create_exception!(
    rha,
    EngineError,
    RhaError,
    "An engine could not start, or failed a request; `code` is the engine's error code."
);
create_exception!(
    rha,
    StateError,
    EngineError,
    "The scenario does not exist, or is not in a state that allows the request."
);
create_exception!(
    rha,
    CloudError,
    RhaError,
    "A cloud account is invalid, missing, or refused by the cloud."
);

/// Adds the exception classes to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("RhaError", py.get_type::<RhaError>())?;
    m.add("ValidationError", py.get_type::<ValidationError>())?;
    m.add("SyncError", py.get_type::<SyncError>())?;
    m.add("TransportError", py.get_type::<TransportError>())?;
    m.add("CertificateError", py.get_type::<CertificateError>())?;
    m.add("EngineError", py.get_type::<EngineError>())?;
    m.add("StateError", py.get_type::<StateError>())?;
    m.add("CloudError", py.get_type::<CloudError>())?;
    Ok(())
}

/// An engine's refusal (`{"ok": false, "code": ..., "error": ...}`) as an exception.
pub(crate) fn refusal(code: &str, message: &str) -> PyErr {
    let err = match code {
        "bad_request" => ValidationError::new_err(message.to_owned()),
        "wrong_state" | "no_such_scenario" => StateError::new_err(message.to_owned()),
        _ => EngineError::new_err(message.to_owned()),
    };
    Python::attach(|py| {
        // Best effort: an exception without the attribute is still the right class.
        let _ = err.value(py).setattr("code", code);
    });
    err
}

/// A control client's error: unreachable or failed links are transport
/// errors, refusals map by their code.
pub(crate) fn client(e: rha_transport::engine::ClientError) -> PyErr {
    use rha_transport::engine::ClientError;
    match e {
        ClientError::Refused { code, message } => refusal(&code, &message),
        other => TransportError::new_err(other.to_string()),
    }
}

/// Raises `kind` with `e`'s message.
pub(crate) fn to_py<E: std::fmt::Display>(make: fn(String) -> PyErr) -> impl Fn(E) -> PyErr {
    move |e| make(e.to_string())
}

/// [`ValidationError`] from a message.
pub(crate) fn validation(m: String) -> PyErr {
    ValidationError::new_err(m)
}

/// [`SyncError`] from a message.
pub(crate) fn sync(m: String) -> PyErr {
    SyncError::new_err(m)
}

/// [`EngineError`] from a message.
pub(crate) fn engine(m: String) -> PyErr {
    EngineError::new_err(m)
}

/// [`CertificateError`] from a message.
pub(crate) fn certificate(m: String) -> PyErr {
    CertificateError::new_err(m)
}

/// [`CloudError`] from a message.
pub(crate) fn cloud(m: String) -> PyErr {
    CloudError::new_err(m)
}
