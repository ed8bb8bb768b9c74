//! Keeping credentials out of logs that the Azure SDK writes.
//!
//! The legacy Azure SDK (azure_core 0.21) logs every request at `debug`
//! level with its `Debug` form just before sending it
//! (`policies/transport.rs`). That form includes the body, and its header
//! map shows the `Authorization` header **in clear** while it redacts the
//! others. A token request carries the client secret in its body, every
//! Resource Manager request carries a bearer token and a SAS URL carries its
//! signature: with `RHA_LOG=debug` they would all reach the log.
//!
//! rha therefore never lets `debug` or `trace` events of the crates that
//! handle requests through, whatever filter the operator sets: apply
//! [`withheld`] as a filter on every subscriber that may see rha-azure's
//! work (the `rha` binary does).
//!
//! ```
//! use tracing_subscriber::prelude::*;
//! use tracing_subscriber::filter::{filter_fn, FilterExt};
//!
//! let filter = tracing_subscriber::EnvFilter::new("debug")
//!     .and(filter_fn(|m| !rha_azure::logging::withheld(m.target(), m.level())));
//! let _subscriber = tracing_subscriber::registry()
//!     .with(tracing_subscriber::fmt::layer().with_filter(filter));
//! ```

use tracing::Level;

/// The module paths whose `debug` and `trace` events may carry secrets:
/// the Azure SDK crates and the HTTP stack under them.
pub const SECRET_BEARING_TARGETS: &[&str] = &[
    "azure_core",
    "azure_identity",
    "azure_storage",
    "azure_storage_blobs",
    "azure_mgmt_compute",
    "azure_mgmt_network",
    "azure_svc_blobstorage",
    "reqwest",
    "hyper",
    "hyper_util",
    "h2",
];

/// Whether an event of `target` at `level` must not be logged: `debug` and
/// `trace` events of the [`SECRET_BEARING_TARGETS`] (and their submodules).
/// Events at `info` and above are kept: the SDK writes no request there.
pub fn withheld(target: &str, level: &Level) -> bool {
    *level > Level::INFO
        && SECRET_BEARING_TARGETS.iter().any(|t| {
            target
                .strip_prefix(t)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdk_requests_are_withheld_below_info() {
        assert!(withheld("azure_core::policies::transport", &Level::DEBUG));
        assert!(withheld("azure_core", &Level::TRACE));
        assert!(withheld("hyper_util::client::legacy", &Level::TRACE));
        assert!(!withheld("azure_core::policies::transport", &Level::INFO));
        assert!(!withheld("azure_core", &Level::WARN));
        // Not a prefix match on names: other crates keep their events.
        assert!(!withheld("azure_corelike", &Level::DEBUG));
        assert!(!withheld("rha_azure::sink", &Level::DEBUG));
        assert!(!withheld("rha_transport::engine", &Level::TRACE));
    }
}
