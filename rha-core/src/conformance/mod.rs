//! Shared conformance suites: every implementation of [`Volume`](crate::volume::Volume),
//! [`ReplicaSink`](crate::sink::ReplicaSink) and [`ChangeSource`](crate::source::ChangeSource),
//! in this crate and in adapters such as `rha-azure`, runs the same checks.
//! The functions panic with a message naming the broken rule.

pub mod cloud;
mod sink;
mod source;
pub mod volume;

pub use sink::{run_sink_suite, Reopen};
pub use source::{run_source_suite, SourceUnderTest, Writer};
pub use volume::run_volume_suite;
