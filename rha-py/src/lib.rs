//! rha-py (filled by a later issue).
