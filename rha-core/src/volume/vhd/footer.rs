//! The 512-byte VHD footer (Microsoft "Virtual Hard Disk Image Format
//! Specification", section "Hard Disk Footer Format").
//!
//! All multi-byte fields are big-endian. Layout:
//!
//! ```text
//! offset size field
//!      0    8 cookie               "conectix"
//!      8    4 features             0x00000002 (reserved bit, always set)
//!     12    4 file format version  0x00010000
//!     16    8 data offset          0xFFFFFFFFFFFFFFFF for a fixed disk
//!     24    4 time stamp           seconds since 2000-01-01 00:00:00 UTC
//!     28    4 creator application  e.g. "win ", "qem2", "vpc "
//!     32    4 creator version
//!     36    4 creator host OS      "Wi2k" (Windows) or "Mac "
//!     40    8 original size        bytes, at creation
//!     48    8 current size         bytes, now
//!     56    4 disk geometry        cylinders (2), heads (1), sectors/track (1)
//!     60    4 disk type            2 = fixed, 3 = dynamic, 4 = differencing
//!     64    4 checksum             one's complement of the byte sum, this field as 0
//!     68   16 unique id
//!     84    1 saved state
//!     85  427 reserved             zeros
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

/// Length of the footer, in bytes.
pub const FOOTER_SIZE: usize = 512;

/// The cookie that opens every VHD footer (the original creator, Connectix).
pub const VHD_COOKIE: [u8; 8] = *b"conectix";

/// The features field: bit 1 is "reserved" and must always be set; no other
/// feature (temporary disk, bit 0) is used.
pub const VHD_FEATURES_RESERVED: u32 = 0x0000_0002;

/// File format version 1.0: major version in the high 16 bits, minor in the low.
pub const VHD_FILE_FORMAT_VERSION: u32 = 0x0001_0000;

/// The data offset of a fixed disk: there is no dynamic-disk header, so all bits set.
pub const VHD_FIXED_DATA_OFFSET: u64 = 0xFFFF_FFFF_FFFF_FFFF;

/// The creator application written by rha: `"win "`, the value Hyper-V writes.
///
/// QEMU's `vpc` driver (block/vpc.c, `vpc_ignore_current_size`) sizes a disk
/// from its CHS geometry (which usually rounds the size down) when the creator
/// is `"vpc "` or `"qemu"`. QEMU before 10.0 did the opposite and trusted the
/// current size only for a list of known creators (`"win "`, `"qem2"`,
/// `"d2v "`, `"CTXS"`, `"tap\0"`). `"win "` is in that list and is not `"vpc "`
/// or `"qemu"`, so every QEMU version, Hyper-V and Azure read the exact
/// current size of disks rha writes.
pub const RHA_CREATOR_APP: [u8; 4] = *b"win ";

/// The creator version written by rha: this crate's major version in the high
/// 16 bits and minor version in the low 16 bits.
pub const RHA_CREATOR_VERSION: u32 = creator_version();

/// The creator host OS written by rha: `"Wi2k"` (Windows), what Azure and
/// Hyper-V expect.
pub const VHD_CREATOR_HOST_OS_WINDOWS: [u8; 4] = *b"Wi2k";

/// Disk type of a fixed VHD: the data precedes the footer, byte for byte.
pub const VHD_DISK_TYPE_FIXED: u32 = 2;

/// Disk type of a dynamic (sparse, block allocation table) VHD.
pub const VHD_DISK_TYPE_DYNAMIC: u32 = 3;

/// Disk type of a differencing VHD (a dynamic disk over a parent).
pub const VHD_DISK_TYPE_DIFFERENCING: u32 = 4;

/// Seconds from the Unix epoch to the VHD epoch, 2000-01-01 00:00:00 UTC.
pub const VHD_EPOCH_UNIX_SECONDS: u64 = 946_684_800;

/// The geometry's sector size, in bytes.
pub const VHD_SECTOR_SIZE: u64 = 512;

/// The largest sector count the geometry can describe: 65535 cylinders × 16
/// heads × 255 sectors per track (about 127 GiB); larger disks get this
/// geometry and only the current size tells their size.
pub const VHD_MAX_CHS_SECTORS: u64 = 65535 * 16 * 255;

/// Byte offsets of the fields within the footer.
pub mod offsets {
    /// Cookie, 8 bytes.
    pub const COOKIE: usize = 0;
    /// Features, 4 bytes.
    pub const FEATURES: usize = 8;
    /// File format version, 4 bytes.
    pub const FILE_FORMAT_VERSION: usize = 12;
    /// Data offset, 8 bytes.
    pub const DATA_OFFSET: usize = 16;
    /// Time stamp, 4 bytes.
    pub const TIMESTAMP: usize = 24;
    /// Creator application, 4 bytes.
    pub const CREATOR_APP: usize = 28;
    /// Creator version, 4 bytes.
    pub const CREATOR_VERSION: usize = 32;
    /// Creator host OS, 4 bytes.
    pub const CREATOR_HOST_OS: usize = 36;
    /// Original size, 8 bytes.
    pub const ORIGINAL_SIZE: usize = 40;
    /// Current size, 8 bytes.
    pub const CURRENT_SIZE: usize = 48;
    /// Disk geometry, 4 bytes: cylinders (2), heads (1), sectors per track (1).
    pub const GEOMETRY: usize = 56;
    /// Disk type, 4 bytes.
    pub const DISK_TYPE: usize = 60;
    /// Checksum, 4 bytes.
    pub const CHECKSUM: usize = 64;
    /// Unique id, 16 bytes.
    pub const UNIQUE_ID: usize = 68;
    /// Saved state, 1 byte.
    pub const SAVED_STATE: usize = 84;
    /// Reserved, 427 bytes to the end of the footer.
    pub const RESERVED: usize = 85;
}

/// Length of the reserved tail of the footer.
pub const RESERVED_LEN: usize = FOOTER_SIZE - offsets::RESERVED;

const fn creator_version() -> u32 {
    let major = parse_u16(env!("CARGO_PKG_VERSION_MAJOR"));
    let minor = parse_u16(env!("CARGO_PKG_VERSION_MINOR"));
    ((major as u32) << 16) | minor as u32
}

const fn parse_u16(s: &str) -> u16 {
    let b = s.as_bytes();
    let mut i = 0;
    let mut v: u16 = 0;
    while i < b.len() {
        v = v.wrapping_mul(10).wrapping_add((b[i] - b'0') as u16);
        i += 1;
    }
    v
}

/// Cylinders, heads and sectors per track, as the footer records them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Geometry {
    /// Cylinders.
    pub cylinders: u16,
    /// Heads.
    pub heads: u8,
    /// Sectors per track.
    pub sectors_per_track: u8,
}

impl Geometry {
    /// The geometry of a disk of `size` bytes, computed exactly as the VHD
    /// specification's algorithm does (appendix "CHS Calculation"). The
    /// geometry may describe fewer sectors than the disk has.
    pub fn for_size(size: u64) -> Geometry {
        let total_sectors = (size / VHD_SECTOR_SIZE).min(VHD_MAX_CHS_SECTORS);
        let (sectors_per_track, heads, cylinders_times_heads);
        if total_sectors >= 65535 * 16 * 63 {
            sectors_per_track = 255;
            heads = 16;
            cylinders_times_heads = total_sectors / sectors_per_track;
        } else {
            let mut spt = 17;
            let mut cth = total_sectors / spt;
            let mut h = cth.div_ceil(1024).max(4);
            if cth >= h * 1024 || h > 16 {
                spt = 31;
                h = 16;
                cth = total_sectors / spt;
            }
            if cth >= h * 1024 {
                spt = 63;
                h = 16;
                cth = total_sectors / spt;
            }
            sectors_per_track = spt;
            heads = h;
            cylinders_times_heads = cth;
        }
        // Every branch keeps the values in range: cylinders ≤ 65535,
        // heads ≤ 16, sectors per track ≤ 255.
        Geometry {
            cylinders: u16::try_from(cylinders_times_heads / heads).unwrap_or(u16::MAX),
            heads: u8::try_from(heads).unwrap_or(u8::MAX),
            sectors_per_track: u8::try_from(sectors_per_track).unwrap_or(u8::MAX),
        }
    }

    /// The number of sectors the geometry describes.
    pub fn sectors(&self) -> u64 {
        u64::from(self.cylinders) * u64::from(self.heads) * u64::from(self.sectors_per_track)
    }
}

/// Why bytes are not a valid fixed-VHD footer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FooterError {
    /// The input is not exactly 512 bytes.
    #[error("a VHD footer is {FOOTER_SIZE} bytes, got {len}")]
    WrongLength {
        /// The length given.
        len: usize,
    },
    /// The first 8 bytes are not `"conectix"`: this is not a VHD footer.
    #[error("no VHD footer: the cookie is {found:?}, not \"conectix\" (is this a raw image?)")]
    BadCookie {
        /// The 8 bytes found.
        found: [u8; 8],
    },
    /// The checksum does not match the footer's contents: it is damaged.
    #[error(
        "the VHD footer is damaged: its checksum is {stored:#010x} but its contents sum to \
         {computed:#010x}; restore the footer from a copy or rebuild it with `attach_footer` \
         on the raw data"
    )]
    BadChecksum {
        /// The checksum stored in the footer.
        stored: u32,
        /// The checksum of the footer's contents.
        computed: u32,
    },
    /// The disk is a VHD but not a fixed one.
    #[error(
        "the VHD is {}, not fixed (disk type {disk_type}); only fixed VHDs are supported: \
         convert it with `qemu-img convert -O vpc -o subformat=fixed`",
        disk_type_name(*disk_type)
    )]
    NotFixed {
        /// The disk type found.
        disk_type: u32,
    },
}

fn disk_type_name(t: u32) -> &'static str {
    match t {
        VHD_DISK_TYPE_DYNAMIC => "dynamic",
        VHD_DISK_TYPE_DIFFERENCING => "differencing",
        _ => "of an unknown type",
    }
}

/// A parsed fixed-VHD footer.
///
/// [`Footer::parse`] followed by [`Footer::to_bytes`] gives back the exact
/// bytes parsed (fields rha does not interpret, including the reserved tail,
/// are kept as found).
#[derive(Clone, PartialEq, Eq)]
pub struct Footer {
    /// Features (normally [`VHD_FEATURES_RESERVED`]).
    pub features: u32,
    /// File format version (normally [`VHD_FILE_FORMAT_VERSION`]).
    pub file_format_version: u32,
    /// Data offset (normally [`VHD_FIXED_DATA_OFFSET`] for a fixed disk).
    pub data_offset: u64,
    /// Creation time, seconds since 2000-01-01 00:00:00 UTC.
    pub timestamp: u32,
    /// The application that created the disk.
    pub creator_app: [u8; 4],
    /// The creating application's version.
    pub creator_version: u32,
    /// The host OS of the creator.
    pub creator_host_os: [u8; 4],
    /// The size at creation, in bytes.
    pub original_size: u64,
    /// The size of the disk, in bytes (the data before the footer).
    pub current_size: u64,
    /// The disk's CHS geometry.
    pub geometry: Geometry,
    /// Disk type; always [`VHD_DISK_TYPE_FIXED`] in a parsed footer.
    pub disk_type: u32,
    /// A random identifier of the disk.
    pub unique_id: [u8; 16],
    /// Whether the disk is in a saved (hibernated VM) state.
    pub saved_state: u8,
    reserved: [u8; RESERVED_LEN],
}

impl Footer {
    /// The footer of a new fixed disk of `size` bytes, created now by rha,
    /// with a random unique id and the specification's geometry for `size`.
    pub fn new_fixed(size: u64) -> Footer {
        let mut unique_id = [0u8; 16];
        if let Err(e) = getrandom::getrandom(&mut unique_id) {
            // The id only needs to differ between disks; fall back to a
            // time-derived one rather than failing to create the disk.
            tracing::warn!(error = %e, "no random numbers for the VHD unique id; using the clock");
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            unique_id = nanos.to_be_bytes();
        }
        Footer {
            features: VHD_FEATURES_RESERVED,
            file_format_version: VHD_FILE_FORMAT_VERSION,
            data_offset: VHD_FIXED_DATA_OFFSET,
            timestamp: vhd_timestamp(SystemTime::now()),
            creator_app: RHA_CREATOR_APP,
            creator_version: RHA_CREATOR_VERSION,
            creator_host_os: VHD_CREATOR_HOST_OS_WINDOWS,
            original_size: size,
            current_size: size,
            geometry: Geometry::for_size(size),
            disk_type: VHD_DISK_TYPE_FIXED,
            unique_id,
            saved_state: 0,
            reserved: [0; RESERVED_LEN],
        }
    }

    /// The reserved tail of the footer (zeros in a footer rha writes).
    pub fn reserved(&self) -> &[u8; RESERVED_LEN] {
        &self.reserved
    }

    /// Encodes the footer, computing its checksum.
    pub fn to_bytes(&self) -> [u8; FOOTER_SIZE] {
        use offsets::*;
        let mut b = [0u8; FOOTER_SIZE];
        b[COOKIE..COOKIE + 8].copy_from_slice(&VHD_COOKIE);
        put_u32(&mut b, FEATURES, self.features);
        put_u32(&mut b, FILE_FORMAT_VERSION, self.file_format_version);
        b[DATA_OFFSET..DATA_OFFSET + 8].copy_from_slice(&self.data_offset.to_be_bytes());
        put_u32(&mut b, TIMESTAMP, self.timestamp);
        b[CREATOR_APP..CREATOR_APP + 4].copy_from_slice(&self.creator_app);
        put_u32(&mut b, CREATOR_VERSION, self.creator_version);
        b[CREATOR_HOST_OS..CREATOR_HOST_OS + 4].copy_from_slice(&self.creator_host_os);
        b[ORIGINAL_SIZE..ORIGINAL_SIZE + 8].copy_from_slice(&self.original_size.to_be_bytes());
        b[CURRENT_SIZE..CURRENT_SIZE + 8].copy_from_slice(&self.current_size.to_be_bytes());
        b[GEOMETRY..GEOMETRY + 2].copy_from_slice(&self.geometry.cylinders.to_be_bytes());
        b[GEOMETRY + 2] = self.geometry.heads;
        b[GEOMETRY + 3] = self.geometry.sectors_per_track;
        put_u32(&mut b, DISK_TYPE, self.disk_type);
        b[UNIQUE_ID..UNIQUE_ID + 16].copy_from_slice(&self.unique_id);
        b[SAVED_STATE] = self.saved_state;
        b[RESERVED..].copy_from_slice(&self.reserved);
        let sum = checksum(&b);
        put_u32(&mut b, CHECKSUM, sum);
        b
    }

    /// Parses a fixed-VHD footer, checking its length, cookie, checksum and
    /// disk type. Never panics, whatever the input.
    pub fn parse(bytes: &[u8]) -> Result<Footer, FooterError> {
        use offsets::*;
        let b: &[u8; FOOTER_SIZE] = bytes
            .try_into()
            .map_err(|_| FooterError::WrongLength { len: bytes.len() })?;
        let cookie: [u8; 8] = arr(b, COOKIE);
        if cookie != VHD_COOKIE {
            return Err(FooterError::BadCookie { found: cookie });
        }
        let stored = u32::from_be_bytes(arr(b, CHECKSUM));
        let computed = checksum(b);
        if stored != computed {
            return Err(FooterError::BadChecksum { stored, computed });
        }
        let disk_type = u32::from_be_bytes(arr(b, DISK_TYPE));
        if disk_type != VHD_DISK_TYPE_FIXED {
            return Err(FooterError::NotFixed { disk_type });
        }
        Ok(Footer {
            features: u32::from_be_bytes(arr(b, FEATURES)),
            file_format_version: u32::from_be_bytes(arr(b, FILE_FORMAT_VERSION)),
            data_offset: u64::from_be_bytes(arr(b, DATA_OFFSET)),
            timestamp: u32::from_be_bytes(arr(b, TIMESTAMP)),
            creator_app: arr(b, CREATOR_APP),
            creator_version: u32::from_be_bytes(arr(b, CREATOR_VERSION)),
            creator_host_os: arr(b, CREATOR_HOST_OS),
            original_size: u64::from_be_bytes(arr(b, ORIGINAL_SIZE)),
            current_size: u64::from_be_bytes(arr(b, CURRENT_SIZE)),
            geometry: Geometry {
                cylinders: u16::from_be_bytes(arr(b, GEOMETRY)),
                heads: b[GEOMETRY + 2],
                sectors_per_track: b[GEOMETRY + 3],
            },
            disk_type,
            unique_id: arr(b, UNIQUE_ID),
            saved_state: b[SAVED_STATE],
            reserved: arr(b, RESERVED),
        })
    }

    /// The creation time as a [`SystemTime`].
    pub fn created(&self) -> SystemTime {
        UNIX_EPOCH
            + std::time::Duration::from_secs(VHD_EPOCH_UNIX_SECONDS + u64::from(self.timestamp))
    }
}

impl std::fmt::Debug for Footer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let reserved_nonzero = self.reserved.iter().filter(|&&b| b != 0).count();
        f.debug_struct("Footer")
            .field("features", &format_args!("{:#010x}", self.features))
            .field(
                "file_format_version",
                &format_args!("{:#010x}", self.file_format_version),
            )
            .field("data_offset", &format_args!("{:#x}", self.data_offset))
            .field("timestamp", &self.timestamp)
            .field("creator_app", &String::from_utf8_lossy(&self.creator_app))
            .field(
                "creator_version",
                &format_args!("{:#010x}", self.creator_version),
            )
            .field(
                "creator_host_os",
                &String::from_utf8_lossy(&self.creator_host_os),
            )
            .field("original_size", &self.original_size)
            .field("current_size", &self.current_size)
            .field("geometry", &self.geometry)
            .field("disk_type", &self.disk_type)
            .field("unique_id", &format_args!("{:02x?}", self.unique_id))
            .field("saved_state", &self.saved_state)
            .field("reserved_nonzero_bytes", &reserved_nonzero)
            .finish()
    }
}

/// Copies `N` bytes at `at` out of the footer (in range by construction).
fn arr<const N: usize>(b: &[u8; FOOTER_SIZE], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[at..at + N]);
    out
}

fn put_u32(b: &mut [u8; FOOTER_SIZE], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// The footer checksum: the one's complement of the sum of every byte of the
/// footer except the checksum field itself.
pub fn checksum(footer: &[u8; FOOTER_SIZE]) -> u32 {
    let sum = footer
        .iter()
        .enumerate()
        .filter(|(i, _)| !(offsets::CHECKSUM..offsets::CHECKSUM + 4).contains(i))
        .fold(0u32, |acc, (_, &b)| acc.wrapping_add(u32::from(b)));
    !sum
}

/// `t` as a VHD time stamp: seconds since 2000-01-01 00:00:00 UTC, clamped
/// to the field's range.
pub fn vhd_timestamp(t: SystemTime) -> u32 {
    let unix = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    u32::try_from(unix.saturating_sub(VHD_EPOCH_UNIX_SECONDS)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let f = Footer::new_fixed(10 * 1024 * 1024);
        let b = f.to_bytes();
        assert_eq!(&b[..8], b"conectix");
        assert_eq!(Footer::parse(&b).unwrap(), f);
        assert_eq!(Footer::parse(&b).unwrap().to_bytes(), b);
    }

    #[test]
    fn geometry_matches_the_specification() {
        // Values computed by hand from the specification's algorithm.
        let g = Geometry::for_size(10 * 1024 * 1024);
        assert_eq!((g.cylinders, g.heads, g.sectors_per_track), (301, 4, 17));
        let g = Geometry::for_size(1024 * 1024 * 1024);
        assert_eq!((g.cylinders, g.heads, g.sectors_per_track), (2080, 16, 63));
        let g = Geometry::for_size(4 << 40);
        assert_eq!(
            (g.cylinders, g.heads, g.sectors_per_track),
            (65535, 16, 255)
        );
        assert_eq!(Geometry::for_size(0).sectors(), 0);
    }

    #[test]
    fn debug_is_readable() {
        let s = format!("{:?}", Footer::new_fixed(1 << 20));
        assert!(s.contains("creator_app: \"win \""), "{s}");
        assert!(s.contains("reserved_nonzero_bytes: 0"), "{s}");
        assert!(s.len() < 600, "{s}");
    }

    #[test]
    fn rejects_other_disk_types() {
        let mut f = Footer::new_fixed(1 << 20);
        f.disk_type = VHD_DISK_TYPE_DYNAMIC;
        let err = Footer::parse(&f.to_bytes()).unwrap_err();
        assert_eq!(err, FooterError::NotFixed { disk_type: 3 });
        assert!(err.to_string().contains("subformat=fixed"), "{err}");
    }

    #[test]
    fn rejects_short_and_foreign_input() {
        assert_eq!(
            Footer::parse(&[0; 10]).unwrap_err(),
            FooterError::WrongLength { len: 10 }
        );
        assert!(matches!(
            Footer::parse(&[0; 512]).unwrap_err(),
            FooterError::BadCookie { .. }
        ));
    }

    /// The body of `fuzz/fuzz_targets/vhd_footer.rs`, so it is compiled and run here.
    fn fuzz_body(data: &[u8]) {
        if let Ok(footer) = Footer::parse(data) {
            assert_eq!(&footer.to_bytes()[..], data);
        }
    }

    #[test]
    fn fuzz_target_body() {
        fuzz_body(&[]);
        fuzz_body(&[0xff; 512]);
        fuzz_body(&Footer::new_fixed(1 << 20).to_bytes());
        let mut odd = Footer::new_fixed(3 << 20).to_bytes();
        odd[100] = 7; // reserved byte
        odd[offsets::FEATURES] = 0x80;
        let mut cs = [0u8; FOOTER_SIZE];
        cs.copy_from_slice(&odd);
        let sum = checksum(&cs);
        odd[offsets::CHECKSUM..offsets::CHECKSUM + 4].copy_from_slice(&sum.to_be_bytes());
        assert!(Footer::parse(&odd).is_ok());
        fuzz_body(&odd);
    }
}
