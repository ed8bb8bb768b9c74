//! rha-transport (filled by a later issue).
