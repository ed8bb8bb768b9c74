//! Raw image files and block devices (in progress).
/// A raw image file or block device.
#[derive(Debug)]
pub struct FileVolume {}
