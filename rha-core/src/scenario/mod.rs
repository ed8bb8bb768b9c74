//! Scenarios (filled by the scenario work).
