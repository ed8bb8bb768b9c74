//! Shared conformance suites.
pub mod volume;
