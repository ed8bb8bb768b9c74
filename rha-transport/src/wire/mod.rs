//! The wire protocol: frames and messages.

pub mod message;

pub use message::*;
