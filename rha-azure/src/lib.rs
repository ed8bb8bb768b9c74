//! rha-azure (filled by a later issue).
