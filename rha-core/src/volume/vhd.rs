//! Fixed VHD (in progress).
/// A fixed VHD.
#[derive(Debug)]
pub struct VhdVolume {}
