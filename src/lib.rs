//! rha: continuous full-system block-level replication. This facade re-exports [`rha_core`].
pub use rha_core as core;
