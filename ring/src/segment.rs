//! Named shared-memory segments: a file under `/dev/shm`, mapped with memmap2.
//!
//! # Creation protocol
//!
//! 1. The creator makes a private temporary file (`O_EXCL`, the requested mode, exactly: the umask is
//!    overridden with `fchmod`), takes an exclusive `flock` on it, sizes it and writes the header with
//!    `layout_version = 0`.
//! 2. It stores the layout version last, with Release: a segment is usable only once that is non-zero.
//! 3. It `link`s the file to its public name, which fails if the name exists, so two creators can never
//!    both win; then it removes the temporary name.
//!
//! The creator keeps its `flock` for its whole life; the kernel drops it when the process dies, even by
//! `kill -9`. So "is the creator alive" is one non-blocking `flock` probe, with no pid-reuse trap. A
//! probe that fails (rather than finding the lock free) proves nothing: [`Segment::creator_liveness`]
//! then says [`Liveness::Unknown`] and [`Segment::creator_alive`] says alive.
//!
//! # One pid namespace per segment
//!
//! Structures in a segment record their holders as [`ProcessToken`]s (pid + start time), and a pid
//! means something only inside one pid namespace. The creator records its namespace in the header;
//! [`Segment::open_with`] refuses a process of another namespace
//! ([`OpenError::OtherPidNamespace`]), so every process sharing a segment can judge the liveness of
//! every other.
//!
//! # Trust
//!
//! The segment is created with mode 0600 by default: only the same user can open it. Same-user
//! processes are trusted not to be malicious, but may be buggy: every value read from the header is
//! copied into the handle once and checked, and the header is only ever accessed through atomics.
//!
//! Segment names live in `/dev/shm`, where every user may create files: another user could create
//! `shmr.<name>` before the server does, and a client that opened it would hand its requests to that
//! user. So [`Segment::open_with`] checks the file it opened (`fstat` on the descriptor, never the
//! path again): it must be a regular file (symbolic links are not followed), owned by this process's
//! effective uid, and grant group and others no more than [`SegmentOpenOptions::allowed_mode`]
//! (0600 by default: nothing). [`Segment::remove`] likewise removes only a file of this user, and
//! only the very file it checked and locked: if the name points to another file just before the
//! unlink (a new server took the name meanwhile), it refuses.
//!
//! # Examples
//!
//! A server creates a segment and a ring in it; a client (here the same process) opens it by
//! name. Names are per machine: make them unique.
//!
//! ```
//! use std::sync::Arc;
//! use shm_ring::{spsc, CreateOptions, Region, Segment};
//!
//! let name = format!("doc-segment-{}", std::process::id());
//! let server = Region::new(Arc::new(Segment::create(&name, &CreateOptions::new(1 << 16))?));
//! spsc::init::<u64>(&server, 1024)?;
//! let mut tx = spsc::Producer::<u64>::attach(&server)?;
//!
//! let client = Region::new(Arc::new(Segment::open(&name)?));
//! let mut rx = spsc::Consumer::<u64>::attach(&client)?;
//! tx.push(42).unwrap();
//! assert_eq!(rx.pop(), Ok(42));
//! // The creator's `Segment` removes the name when it drops.
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use memmap2::MmapRaw;

use crate::memory::{Memory, MEMORY_ALIGN};
use crate::process::{pid_namespace, Liveness, ProcessToken};

/// Magic number opening every segment: "SHMRING" and a format byte.
///
/// # Examples
///
/// ```
/// use shm_ring::{segment::SEGMENT_MAGIC, CreateOptions, Segment};
///
/// let name = format!("doc-magic-{}", std::process::id());
/// let seg = Segment::create(&name, &CreateOptions::new(4096))?;
/// let file = std::fs::read(seg.path())?;
/// assert_eq!(file[..8], SEGMENT_MAGIC.to_le_bytes());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"SHMRING\x01");

/// Version of the segment header layout. Bumped on any incompatible change (2: the creator's pid
/// namespace is recorded and checked).
///
/// # Examples
///
/// ```
/// use shm_ring::{segment::LAYOUT_VERSION, CreateOptions, Segment};
///
/// let name = format!("doc-layout-{}", std::process::id());
/// let seg = Segment::create(&name, &CreateOptions::new(4096))?;
/// let file = std::fs::read(seg.path())?;
/// assert_eq!(file[8..12], LAYOUT_VERSION.to_le_bytes()); // after the magic
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const LAYOUT_VERSION: u32 = 2;

/// Where the user area starts: the header has the first page to itself.
///
/// # Examples
///
/// ```
/// use shm_ring::{memory::Memory, segment::USER_OFFSET, CreateOptions, Segment};
///
/// let name = format!("doc-user-offset-{}", std::process::id());
/// let seg = Segment::create(&name, &CreateOptions::new(4096))?;
/// // SAFETY: byte 0 of the user area is in bounds, and nothing else uses this new segment.
/// unsafe { seg.base().as_ptr().write(0xAB) };
/// let file = std::fs::read(seg.path())?;
/// assert_eq!(file.len(), USER_OFFSET + 4096);
/// assert_eq!(file[USER_OFFSET], 0xAB);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const USER_OFFSET: usize = MEMORY_ALIGN;

/// Default directory for segment files.
///
/// # Examples
///
/// ```
/// use std::path::Path;
/// use shm_ring::{segment::DEFAULT_DIR, CreateOptions, Segment};
///
/// let name = format!("doc-default-dir-{}", std::process::id());
/// let seg = Segment::create(&name, &CreateOptions::new(4096))?;
/// assert_eq!(seg.path().parent(), Some(Path::new(DEFAULT_DIR)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const DEFAULT_DIR: &str = "/dev/shm";

/// Prefix of every segment file name, so that `ls /dev/shm` and cleanup can tell them apart.
///
/// # Examples
///
/// Listing the segments of a directory:
///
/// ```
/// use shm_ring::segment::{DEFAULT_DIR, FILE_PREFIX};
/// # use shm_ring::{CreateOptions, Segment};
/// # let name = format!("doc-file-prefix-{}", std::process::id());
/// # let _seg = Segment::create(&name, &CreateOptions::new(4096))?;
///
/// let segments: Vec<String> = std::fs::read_dir(DEFAULT_DIR)?
///     .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
///     .filter_map(|file| file.strip_prefix(FILE_PREFIX).map(String::from))
///     .collect();
/// assert!(segments.contains(&name));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const FILE_PREFIX: &str = "shmr.";

/// The segment header at offset 0. An ABI: `#[repr(C)]`, atomics only, offsets asserted below.
///
/// # Safety (trust model)
///
/// Another process may write these bytes at any time; they are only ever read through atomics, and
/// values are copied into the handle once and validated before use.
///
/// # Examples
///
/// ```
/// use std::mem::size_of;
/// use shm_ring::segment::{SegmentHeader, USER_OFFSET};
///
/// assert_eq!(size_of::<SegmentHeader>(), 64);
/// assert!(size_of::<SegmentHeader>() <= USER_OFFSET); // the user area starts after it
/// ```
#[repr(C)]
#[derive(Debug)]
pub struct SegmentHeader {
    magic: AtomicU64,
    layout_version: AtomicU32,
    header_size: AtomicU32,
    total_size: AtomicU64,
    user_offset: AtomicU64,
    user_version: AtomicU32,
    creator_pid: AtomicU32,
    creator_token: AtomicU64,
    created_unix_ms: AtomicU64,
    /// Inode of the creator's pid namespace (0: unknown); see [`pid_namespace`].
    creator_pid_ns: AtomicU64,
}

const _: () = {
    assert!(std::mem::size_of::<SegmentHeader>() == 64);
    assert!(std::mem::offset_of!(SegmentHeader, magic) == 0);
    assert!(std::mem::offset_of!(SegmentHeader, layout_version) == 8);
    assert!(std::mem::offset_of!(SegmentHeader, total_size) == 16);
    assert!(std::mem::offset_of!(SegmentHeader, user_offset) == 24);
    assert!(std::mem::offset_of!(SegmentHeader, user_version) == 32);
    assert!(std::mem::offset_of!(SegmentHeader, creator_token) == 40);
    assert!(std::mem::offset_of!(SegmentHeader, creator_pid_ns) == 56);
    assert!(USER_OFFSET >= std::mem::size_of::<SegmentHeader>());
};

/// Options for [`Segment::create`].
///
/// # Examples
///
/// ```
/// use std::os::unix::fs::PermissionsExt;
/// use shm_ring::{CreateOptions, Segment};
///
/// let name = format!("doc-create-options-{}", std::process::id());
/// // Group members may open it; clients check the protocol version.
/// let opts = CreateOptions { mode: 0o660, user_version: 3, ..CreateOptions::new(1 << 20) };
/// let seg = Segment::create(&name, &opts)?;
/// assert_eq!(seg.user_version(), 3);
/// let mode = std::fs::metadata(seg.path())?.permissions().mode();
/// assert_eq!(mode & 0o777, 0o660); // exactly, whatever the umask
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Size of the user area in bytes (rounded up to a page).
    pub size: usize,
    /// File mode (0600 by default: owner only).
    pub mode: u32,
    /// Directory of segment files (`/dev/shm` by default).
    pub dir: PathBuf,
    /// Application protocol version, checked by [`SegmentOpenOptions::user_version`] on open.
    pub user_version: u32,
    /// Replace a segment of the same name whose creator has died (true by default).
    pub replace_stale: bool,
}

impl CreateOptions {
    /// Defaults with a user area of `size` bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::path::Path;
    /// use shm_ring::{segment::DEFAULT_DIR, CreateOptions};
    ///
    /// let opts = CreateOptions::new(64 << 10);
    /// assert_eq!((opts.size, opts.mode, opts.user_version), (64 << 10, 0o600, 0));
    /// assert_eq!(opts.dir, Path::new(DEFAULT_DIR));
    /// assert!(opts.replace_stale);
    /// ```
    pub fn new(size: usize) -> CreateOptions {
        CreateOptions {
            size,
            mode: 0o600,
            dir: PathBuf::from(DEFAULT_DIR),
            user_version: 0,
            replace_stale: true,
        }
    }
}

/// Options for [`Segment::open_with`].
///
/// # Examples
///
/// ```
/// use shm_ring::{CreateOptions, OpenError, Segment, SegmentOpenOptions};
///
/// let name = format!("doc-open-options-{}", std::process::id());
/// let server_opts = CreateOptions { mode: 0o660, user_version: 3, ..CreateOptions::new(4096) };
/// let _server = Segment::create(&name, &server_opts)?;
/// // By default only owner-only segments are opened:
/// assert!(matches!(Segment::open(&name), Err(OpenError::TooPermissive { mode: 0o660, .. })));
///
/// let opts = SegmentOpenOptions {
///     allowed_mode: 0o660,
///     user_version: Some(3),
///     ..Default::default()
/// };
/// let seg = Segment::open_with(&name, &opts)?;
/// assert_eq!(seg.user_version(), 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct SegmentOpenOptions {
    /// Directory of segment files (`/dev/shm` by default).
    pub dir: PathBuf,
    /// Refuse the segment unless its application protocol version is this.
    pub user_version: Option<u32>,
    /// Open a segment whose creator has died (for inspection and cleanup); refused by default.
    pub allow_stale: bool,
    /// The most the segment's mode may grant group and others (0600 by default: nothing). A
    /// server that creates its segments with [`CreateOptions::mode`] 0660 gives its clients
    /// `allowed_mode: 0o660`. The owner's bits are not restricted: the file must be this user's.
    pub allowed_mode: u32,
}

impl Default for SegmentOpenOptions {
    fn default() -> Self {
        SegmentOpenOptions {
            dir: PathBuf::from(DEFAULT_DIR),
            user_version: None,
            allow_stale: false,
            allowed_mode: 0o600,
        }
    }
}

/// Why a segment could not be created.
///
/// # Examples
///
/// ```
/// use shm_ring::{CreateError, CreateOptions, Segment};
///
/// let name = format!("doc-create-error-{}", std::process::id());
/// let _first = Segment::create(&name, &CreateOptions::new(4096))?;
/// match Segment::create(&name, &CreateOptions::new(4096)) {
///     Err(CreateError::AlreadyExists { pid, .. }) => assert_eq!(pid, std::process::id()),
///     other => panic!("expected AlreadyExists, got {other:?}"),
/// }
/// let bad = Segment::create("../etc", &CreateOptions::new(4096));
/// assert!(matches!(bad, Err(CreateError::InvalidName(_))));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The name is empty, too long, or has characters other than `[A-Za-z0-9._-]`.
    #[error("invalid segment name {0:?}: use 1-200 characters from [A-Za-z0-9._-], not starting with '.'")]
    InvalidName(String),
    /// A live process already serves this name.
    #[error("segment {name:?} already exists and its creator (pid {pid}) is alive")]
    AlreadyExists {
        /// Segment name.
        name: String,
        /// Creator's pid as recorded in the header (0 if unreadable).
        pid: u32,
    },
    /// A segment of this name exists, its creator is dead, and `replace_stale` is off.
    #[error("segment {0:?} exists but its creator has died; remove it or allow replacing stale segments")]
    Stale(String),
    /// The requested size is zero or too large.
    #[error("invalid segment size {0}")]
    InvalidSize(usize),
    /// A system call failed.
    #[error("creating segment {name:?} failed: {source}")]
    Io {
        /// Segment name.
        name: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Why a segment could not be opened. Each cause is distinct, so callers can react precisely.
///
/// # Examples
///
/// ```
/// use shm_ring::{CreateOptions, OpenError, Segment, SegmentOpenOptions};
///
/// let name = format!("doc-open-error-{}", std::process::id());
/// assert!(matches!(Segment::open(&name), Err(OpenError::NotFound(_))));
///
/// let v2 = CreateOptions { user_version: 2, ..CreateOptions::new(4096) };
/// let _server = Segment::create(&name, &v2)?;
/// let v1 = SegmentOpenOptions { user_version: Some(1), ..Default::default() };
/// match Segment::open_with(&name, &v1) {
///     Err(OpenError::VersionMismatch { what: "protocol", found: 2, expected: 1, .. }) => {}
///     other => panic!("expected VersionMismatch, got {other:?}"),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The name is not valid (see [`CreateError::InvalidName`]).
    #[error("invalid segment name {0:?}")]
    InvalidName(String),
    /// No segment of this name exists.
    #[error("no segment named {0:?} (is the server running?)")]
    NotFound(String),
    /// The file exists but this user may not open it.
    #[error("permission denied opening segment {0:?} (segments are private to the user that created them)")]
    PermissionDenied(String),
    /// The file belongs to another user: someone else may have created the name first.
    #[error(
        "segment {name:?} belongs to uid {owner}, not to this process's uid {euid}: another user \
         may have taken the name first; remove that file (as its owner or root) and restart the server"
    )]
    NotOwner {
        /// Segment name.
        name: String,
        /// Owner uid of the file.
        owner: u32,
        /// This process's effective uid.
        euid: u32,
    },
    /// The file's mode lets group or others in beyond what the opener allows.
    #[error(
        "segment {name:?} has mode {mode:o}, which grants other users more than the allowed \
         {allowed:o}; a segment holds private requests: recreate it with a narrower mode, or allow \
         the server's mode (SegmentOpenOptions::allowed_mode)"
    )]
    TooPermissive {
        /// Segment name.
        name: String,
        /// Permission bits of the file.
        mode: u32,
        /// The most the opener allows.
        allowed: u32,
    },
    /// The name is a symbolic link or not a regular file.
    #[error("{0:?} is not a regular file (symbolic links are not followed)")]
    NotAFile(String),
    /// The file is smaller than its header says, or than a header.
    #[error("segment {name:?} is too small ({len} bytes)")]
    TooSmall {
        /// Segment name.
        name: String,
        /// File length.
        len: u64,
    },
    /// The file is not a segment of this crate.
    #[error("{0:?} is not a shm-ring segment (bad magic)")]
    BadMagic(String),
    /// The creator has not finished initialising it (or died while doing so).
    #[error("segment {0:?} is not initialised yet")]
    NotInitialised(String),
    /// The layout or the application protocol version differs.
    #[error("segment {name:?} has {what} version {found}, expected {expected}")]
    VersionMismatch {
        /// Segment name.
        name: String,
        /// "layout" or "protocol".
        what: &'static str,
        /// Version found in the header.
        found: u32,
        /// Version this process speaks.
        expected: u32,
    },
    /// The creator has died; the segment is stale.
    #[error("segment {0:?} is stale: the process that created it has died")]
    CreatorGone(String),
    /// The segment was created in another pid namespace (another container, say): the pids its
    /// structures record mean other processes here, so liveness checks would be wrong.
    #[error(
        "segment {name:?} was created in another pid namespace ({creator:#x}, this process is in \
         {ours:#x}); processes sharing a segment must see the same pids: run them in one pid \
         namespace"
    )]
    OtherPidNamespace {
        /// Segment name.
        name: String,
        /// Inode of the creator's pid namespace, as recorded in the header (0: unknown).
        creator: u64,
        /// Inode of this process's pid namespace (0: unknown).
        ours: u64,
    },
    /// A system call failed.
    #[error("opening segment {name:?} failed: {source}")]
    Io {
        /// Segment name.
        name: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Why a segment could not be removed.
///
/// # Examples
///
/// ```
/// use std::path::Path;
/// use shm_ring::{segment::DEFAULT_DIR, CreateOptions, RemoveError, Segment};
///
/// let name = format!("doc-remove-error-{}", std::process::id());
/// let seg = Segment::create(&name, &CreateOptions::new(4096))?;
/// // Its creator (this process) is alive:
/// let in_use = Segment::remove(&name, Path::new(DEFAULT_DIR));
/// assert!(matches!(in_use, Err(RemoveError::InUse(_))));
/// drop(seg); // the creator removes its own name
/// let gone = Segment::remove(&name, Path::new(DEFAULT_DIR));
/// assert!(matches!(gone, Err(RemoveError::NotFound(_))));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    /// The name is not valid.
    #[error("invalid segment name {0:?}")]
    InvalidName(String),
    /// No such segment.
    #[error("no segment named {0:?}")]
    NotFound(String),
    /// Its creator is alive: removing it would pull it from under a running server.
    #[error("segment {0:?} is in use by a live process; stop that process first")]
    InUse(String),
    /// The file belongs to another user.
    #[error("segment {name:?} belongs to uid {owner}, not to this process's uid {euid}; only its owner removes it")]
    NotOwner {
        /// Segment name.
        name: String,
        /// Owner uid of the file.
        owner: u32,
        /// This process's effective uid.
        euid: u32,
    },
    /// The name pointed to another file by the time of the unlink (a new server took it after the
    /// stale one was checked): nothing was removed.
    #[error("segment {0:?} was replaced by another file while it was being removed; nothing was removed")]
    Replaced(String),
    /// The name is a symbolic link or not a regular file.
    #[error("{0:?} is not a regular file (symbolic links are not followed); nothing was removed")]
    NotAFile(String),
    /// A system call failed.
    #[error("removing segment {name:?} failed: {source}")]
    Io {
        /// Segment name.
        name: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// A named shared-memory segment mapped into this process.
///
/// The creator holds an exclusive `flock` on the file for as long as the `Segment` lives and removes
/// the name on drop; openers map the same file and can ask whether the creator is still alive.
///
/// # Examples
///
/// ```
/// use shm_ring::{memory::Memory, CreateOptions, Segment};
///
/// let name = format!("doc-segment-struct-{}", std::process::id());
/// let server = Segment::create(&name, &CreateOptions::new(10_000))?;
/// let client = Segment::open(&name)?;
/// assert_eq!(client.len(), 12_288); // the user area, in whole pages
/// // SAFETY: byte 0 of the user area is in both mappings; nothing else in any process uses it.
/// let seen = unsafe {
///     server.base().as_ptr().write(7);
///     client.base().as_ptr().read()
/// };
/// assert_eq!(seen, 7); // one file, two mappings
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Segment {
    name: String,
    path: PathBuf,
    file: File,
    map: MmapRaw,
    user_len: usize,
    user_version: u32,
    creator: bool,
}

/// Checks a service name: 1-200 of `[A-Za-z0-9._-]`, not starting with '.', so it cannot leave the
/// segment directory or hide.
///
/// # Examples
///
/// ```
/// use shm_ring::segment::validate_name;
///
/// assert!(validate_name("inference.v2_main-1"));
/// assert!(!validate_name("../etc/passwd")); // would leave the directory
/// assert!(!validate_name(".hidden"));
/// assert!(!validate_name(""));
/// ```
pub fn validate_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

fn segment_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{FILE_PREFIX}{name}"))
}

/// Why a segment file is not this user's own (see [`check_ownership`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ownership {
    /// Not a regular file.
    NotAFile,
    /// Owned by another uid.
    OtherOwner(u32),
    /// Grants group or others more than allowed (the permission bits).
    TooPermissive(u32),
}

/// Checks the `fstat` of an opened segment file: a regular file owned by the effective uid `euid`,
/// granting group and others at most `allowed_mode` (no limit when `None`).
fn check_ownership(
    meta: &std::fs::Metadata,
    euid: u32,
    allowed_mode: Option<u32>,
) -> Result<(), Ownership> {
    if !meta.file_type().is_file() {
        return Err(Ownership::NotAFile);
    }
    if meta.uid() != euid {
        return Err(Ownership::OtherOwner(meta.uid()));
    }
    let mode = meta.mode() & 0o7777;
    match allowed_mode {
        Some(allowed) if mode & 0o077 & !allowed != 0 => Err(Ownership::TooPermissive(mode)),
        _ => Ok(()),
    }
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Opens `path` without following a symbolic link in its last component.
fn open_nofollow(path: &Path, write: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    // SAFETY: flock on a descriptor we own; no memory is passed.
    let r = unsafe { libc::flock(file.as_raw_fd(), op) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether some process holds the creator's exclusive lock on `file`.
fn creator_lock_held(file: &File) -> io::Result<bool> {
    match flock(file, libc::LOCK_SH | libc::LOCK_NB) {
        Ok(()) => {
            flock(file, libc::LOCK_UN)?;
            Ok(false)
        }
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(true),
        Err(e) => Err(e),
    }
}

impl Segment {
    /// Creates segment `name` with a user area of `opts.size` bytes, replacing a stale one whose creator
    /// died (unless `opts.replace_stale` is off).
    ///
    /// # Errors
    ///
    /// See [`CreateError`]: a live segment of that name, a stale one when replacing is off, an invalid
    /// name or size, or a failing system call.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::{CreateOptions, Segment};
    ///
    /// let name = format!("doc-create-{}", std::process::id());
    /// let seg = Segment::create(&name, &CreateOptions::new(1 << 20))?;
    /// let path = seg.path().to_owned();
    /// assert!(seg.is_creator() && path.exists());
    /// drop(seg); // the creator removes the name
    /// assert!(!path.exists());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn create(name: &str, opts: &CreateOptions) -> Result<Segment, CreateError> {
        if !validate_name(name) {
            return Err(CreateError::InvalidName(name.to_owned()));
        }
        let io_err = |source| CreateError::Io {
            name: name.to_owned(),
            source,
        };
        let user_len = crate::memory::align_up(opts.size.max(1), MEMORY_ALIGN);
        let total = USER_OFFSET
            .checked_add(user_len)
            .filter(|_| opts.size != 0 && opts.size <= (1 << 40))
            .ok_or(CreateError::InvalidSize(opts.size))?;
        let path = segment_path(&opts.dir, name);

        // 1. A private temporary file, locked before anyone could see it under the public name.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let tmp = opts.dir.join(format!(
            ".{FILE_PREFIX}{name}.tmp.{}.{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(opts.mode)
            .open(&tmp)
            .map_err(io_err)?;
        let cleanup_tmp = TempName(&tmp);
        // The umask may have narrowed the mode; set exactly what was asked.
        file.set_permissions(std::fs::Permissions::from_mode(opts.mode))
            .map_err(io_err)?;
        flock(&file, libc::LOCK_EX | libc::LOCK_NB).map_err(io_err)?;
        file.set_len(total as u64).map_err(io_err)?;
        let map = MmapRaw::map_raw(&file).map_err(io_err)?;

        // 2. Initialise the header; the layout version goes last, with Release.
        let hdr = map.as_mut_ptr().cast::<SegmentHeader>();
        let me = ProcessToken::current();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        // SAFETY: the mapping is at least USER_OFFSET >= size_of::<SegmentHeader>() bytes, page
        // aligned, and nobody else can reach this file yet (private temporary name, O_EXCL).
        unsafe {
            hdr.write(SegmentHeader {
                magic: AtomicU64::new(SEGMENT_MAGIC),
                layout_version: AtomicU32::new(0),
                header_size: AtomicU32::new(std::mem::size_of::<SegmentHeader>() as u32),
                total_size: AtomicU64::new(total as u64),
                user_offset: AtomicU64::new(USER_OFFSET as u64),
                user_version: AtomicU32::new(opts.user_version),
                creator_pid: AtomicU32::new(me.pid()),
                creator_token: AtomicU64::new(me.raw()),
                created_unix_ms: AtomicU64::new(now_ms),
                creator_pid_ns: AtomicU64::new(pid_namespace()),
            });
        }
        // SAFETY: just initialised above; the header is only accessed through atomics.
        let header = unsafe { &*hdr };
        // SYNC(layout): Release publishes the initialised header (and, through the link below, the
        // file); pairs with the Acquire load in `open_with`.
        header
            .layout_version
            .store(LAYOUT_VERSION, Ordering::Release);

        // 3. Publish under the real name; link fails if the name exists.
        loop {
            match std::fs::hard_link(&tmp, &path) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    Self::resolve_existing(name, &path, opts)?;
                }
                Err(e) => return Err(io_err(e)),
            }
        }
        drop(cleanup_tmp);
        Ok(Segment {
            name: name.to_owned(),
            path,
            file,
            map,
            user_len,
            user_version: opts.user_version,
            creator: true,
        })
    }

    /// A name is taken: fail if its creator lives, else remove the stale file so the caller retries.
    fn resolve_existing(name: &str, path: &Path, opts: &CreateOptions) -> Result<(), CreateError> {
        let io_err = |source| CreateError::Io {
            name: name.to_owned(),
            source,
        };
        let old = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(e)),
        };
        // Exclusive lock: held by a live creator means live; getting it means the creator is gone.
        match flock(&old, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
                return Err(CreateError::AlreadyExists {
                    name: name.to_owned(),
                    pid: read_pid(&old),
                })
            }
            Err(e) => return Err(io_err(e)),
        }
        if !opts.replace_stale {
            return Err(CreateError::Stale(name.to_owned()));
        }
        // Unlink only if the name still refers to the file we locked (another creator may have
        // replaced it meanwhile).
        let ours = old.metadata().map_err(io_err)?;
        match std::fs::metadata(path) {
            Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => {
                match std::fs::remove_file(path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(io_err(e)),
                }
            }
            _ => Ok(()),
        }
    }

    /// Opens segment `name` in `/dev/shm`, refusing stale segments.
    ///
    /// # Errors
    ///
    /// See [`OpenError`].
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::{CreateOptions, Segment};
    ///
    /// let name = format!("doc-open-{}", std::process::id());
    /// let _server = Segment::create(&name, &CreateOptions::new(4096))?;
    /// let client = Segment::open(&name)?;
    /// assert!(!client.is_creator());
    /// assert_eq!(client.creator_pid(), std::process::id());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(name: &str) -> Result<Segment, OpenError> {
        Segment::open_with(name, &SegmentOpenOptions::default())
    }

    /// Opens segment `name` with options.
    ///
    /// # Errors
    ///
    /// See [`OpenError`]: each failure has its own variant (not found, permission denied, too small,
    /// bad magic, not initialised, version mismatch, another pid namespace, creator gone, I/O).
    ///
    /// # Examples
    ///
    /// Inspecting a segment whose server died:
    ///
    /// ```
    /// use std::path::Path;
    /// use shm_ring::{segment::DEFAULT_DIR, OpenError, Segment, SegmentOpenOptions};
    /// # use shm_ring::CreateOptions;
    /// # // A server that dies without removing its segment: this program, run again as a child.
    /// # if let Ok(name) = std::env::var("SHM_RING_DOC_CRASHED_SERVER") {
    /// #     std::mem::forget(Segment::create(&name, &CreateOptions::new(4096))?);
    /// #     std::process::exit(0);
    /// # }
    /// # let name = format!("doc-open-with-{}", std::process::id());
    /// # let server = std::process::Command::new(std::env::current_exe()?)
    /// #     .env("SHM_RING_DOC_CRASHED_SERVER", &name)
    /// #     .status()?;
    /// # assert!(server.success());
    ///
    /// assert!(matches!(Segment::open(&name), Err(OpenError::CreatorGone(_))));
    /// let opts = SegmentOpenOptions { allow_stale: true, ..Default::default() };
    /// let stale = Segment::open_with(&name, &opts)?;
    /// assert!(!stale.creator_alive());
    /// drop(stale);
    /// Segment::remove(&name, Path::new(DEFAULT_DIR))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_with(name: &str, opts: &SegmentOpenOptions) -> Result<Segment, OpenError> {
        Segment::open_as(name, opts, effective_uid())
    }

    /// [`open_with`](Self::open_with) for a process of effective uid `euid`.
    fn open_as(name: &str, opts: &SegmentOpenOptions, euid: u32) -> Result<Segment, OpenError> {
        if !validate_name(name) {
            return Err(OpenError::InvalidName(name.to_owned()));
        }
        let path = segment_path(&opts.dir, name);
        let file = match open_nofollow(&path, true) {
            Ok(f) => f,
            Err(e) => {
                return Err(match e.kind() {
                    io::ErrorKind::NotFound => OpenError::NotFound(name.to_owned()),
                    io::ErrorKind::PermissionDenied => OpenError::PermissionDenied(name.to_owned()),
                    _ if e.raw_os_error() == Some(libc::ELOOP) => {
                        OpenError::NotAFile(name.to_owned())
                    }
                    _ => OpenError::Io {
                        name: name.to_owned(),
                        source: e,
                    },
                })
            }
        };
        let io_err = |source| OpenError::Io {
            name: name.to_owned(),
            source,
        };
        // The descriptor's own metadata: the file we will map, whatever the name points to now.
        let meta = file.metadata().map_err(io_err)?;
        match check_ownership(&meta, euid, Some(opts.allowed_mode)) {
            Ok(()) => {}
            Err(Ownership::NotAFile) => return Err(OpenError::NotAFile(name.to_owned())),
            Err(Ownership::OtherOwner(owner)) => {
                return Err(OpenError::NotOwner {
                    name: name.to_owned(),
                    owner,
                    euid,
                })
            }
            Err(Ownership::TooPermissive(mode)) => {
                return Err(OpenError::TooPermissive {
                    name: name.to_owned(),
                    mode,
                    allowed: opts.allowed_mode,
                })
            }
        }
        let len = meta.len();
        if len < USER_OFFSET as u64 {
            return Err(OpenError::TooSmall {
                name: name.to_owned(),
                len,
            });
        }
        let map = MmapRaw::map_raw(&file).map_err(io_err)?;
        // SAFETY: the mapping is at least USER_OFFSET bytes (checked) and page aligned; the header is
        // all atomics, so a concurrent writer cannot make this reference unsound.
        let header = unsafe { &*map.as_mut_ptr().cast::<SegmentHeader>() };
        // SYNC(layout): Acquire pairs with the Release store in `create`.
        let version = header.layout_version.load(Ordering::Acquire);
        let magic = header.magic.load(Ordering::Relaxed);
        if magic != SEGMENT_MAGIC {
            return Err(if magic == 0 && version == 0 {
                OpenError::NotInitialised(name.to_owned())
            } else {
                OpenError::BadMagic(name.to_owned())
            });
        }
        if version == 0 {
            return Err(OpenError::NotInitialised(name.to_owned()));
        }
        if version != LAYOUT_VERSION {
            return Err(OpenError::VersionMismatch {
                name: name.to_owned(),
                what: "layout",
                found: version,
                expected: LAYOUT_VERSION,
            });
        }
        let total = header.total_size.load(Ordering::Relaxed);
        let user_offset = header.user_offset.load(Ordering::Relaxed);
        if total != len || user_offset != USER_OFFSET as u64 || total % MEMORY_ALIGN as u64 != 0 {
            return Err(OpenError::TooSmall {
                name: name.to_owned(),
                len,
            });
        }
        let creator_ns = header.creator_pid_ns.load(Ordering::Relaxed);
        let ours = pid_namespace();
        if creator_ns != ours {
            return Err(OpenError::OtherPidNamespace {
                name: name.to_owned(),
                creator: creator_ns,
                ours,
            });
        }
        let user_version = header.user_version.load(Ordering::Relaxed);
        if let Some(expected) = opts.user_version {
            if expected != user_version {
                return Err(OpenError::VersionMismatch {
                    name: name.to_owned(),
                    what: "protocol",
                    found: user_version,
                    expected,
                });
            }
        }
        if !opts.allow_stale && !creator_lock_held(&file).map_err(io_err)? {
            return Err(OpenError::CreatorGone(name.to_owned()));
        }
        Ok(Segment {
            name: name.to_owned(),
            path,
            file,
            map,
            user_len: (total as usize) - USER_OFFSET,
            user_version,
            creator: false,
        })
    }

    /// Removes segment `name` if its creator is dead, the file is this user's, and the name still
    /// points to the file that was checked when it is unlinked.
    ///
    /// The check and the unlink are two system calls (Linux has no "unlink this inode"), so a new
    /// server that takes the name in the microseconds between them is not protected; one that took
    /// it any time before the check is.
    ///
    /// # Errors
    ///
    /// [`RemoveError::InUse`] when a live process created it, [`RemoveError::NotOwner`] for a file
    /// of another user, [`RemoveError::Replaced`] when the name points to another file by the time
    /// of the unlink, [`RemoveError::NotAFile`] for a symbolic link or a non-regular file; not
    /// found; I/O.
    ///
    /// # Examples
    ///
    /// Cleaning up after a server that died:
    ///
    /// ```
    /// use std::path::Path;
    /// use shm_ring::{segment::DEFAULT_DIR, OpenError, Segment};
    /// # use shm_ring::CreateOptions;
    /// # // A server that dies without removing its segment: this program, run again as a child.
    /// # if let Ok(name) = std::env::var("SHM_RING_DOC_CRASHED_SERVER") {
    /// #     std::mem::forget(Segment::create(&name, &CreateOptions::new(4096))?);
    /// #     std::process::exit(0);
    /// # }
    /// # let name = format!("doc-remove-{}", std::process::id());
    /// # let server = std::process::Command::new(std::env::current_exe()?)
    /// #     .env("SHM_RING_DOC_CRASHED_SERVER", &name)
    /// #     .status()?;
    /// # assert!(server.success());
    ///
    /// assert!(matches!(Segment::open(&name), Err(OpenError::CreatorGone(_))));
    /// Segment::remove(&name, Path::new(DEFAULT_DIR))?;
    /// assert!(matches!(Segment::open(&name), Err(OpenError::NotFound(_))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn remove(name: &str, dir: &Path) -> Result<(), RemoveError> {
        Segment::remove_as(name, dir, effective_uid(), |_| {})
    }

    /// [`remove`](Self::remove) for a process of effective uid `euid`; `before_unlink` runs after
    /// every check but the last comparison of the name with the checked file.
    fn remove_as(
        name: &str,
        dir: &Path,
        euid: u32,
        before_unlink: impl FnOnce(&Path),
    ) -> Result<(), RemoveError> {
        if !validate_name(name) {
            return Err(RemoveError::InvalidName(name.to_owned()));
        }
        let path = segment_path(dir, name);
        let io_err = |source| RemoveError::Io {
            name: name.to_owned(),
            source,
        };
        let file = match open_nofollow(&path, false) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(RemoveError::NotFound(name.to_owned()))
            }
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(RemoveError::NotAFile(name.to_owned()))
            }
            Err(e) => return Err(io_err(e)),
        };
        let checked = file.metadata().map_err(io_err)?;
        // Any mode will do for removal: a stale segment of ours is ours to remove.
        match check_ownership(&checked, euid, None) {
            Ok(()) => {}
            Err(Ownership::OtherOwner(owner)) => {
                return Err(RemoveError::NotOwner {
                    name: name.to_owned(),
                    owner,
                    euid,
                })
            }
            Err(Ownership::NotAFile | Ownership::TooPermissive(_)) => {
                return Err(RemoveError::NotAFile(name.to_owned()))
            }
        }
        match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
                return Err(RemoveError::InUse(name.to_owned()))
            }
            Err(e) => return Err(io_err(e)),
        }
        before_unlink(&path);
        // The name must still be the file we checked and locked: a new server may have replaced
        // the stale segment meanwhile, and its file is not ours to remove.
        match std::fs::symlink_metadata(&path) {
            Ok(now) if now.ino() == checked.ino() && now.dev() == checked.dev() => {
                std::fs::remove_file(&path).map_err(io_err)
            }
            Ok(_) => Err(RemoveError::Replaced(name.to_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(RemoveError::NotFound(name.to_owned()))
            }
            Err(e) => Err(io_err(e)),
        }
    }

    /// Whether the process that created this segment runs (one `flock` probe): [`Liveness::Dead`]
    /// only when nobody holds the creator's lock, [`Liveness::Unknown`] when the probe itself fails.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::{CreateOptions, Liveness, Segment};
    ///
    /// let name = format!("doc-creator-liveness-{}", std::process::id());
    /// let server = Segment::create(&name, &CreateOptions::new(4096))?;
    /// let client = Segment::open(&name)?;
    /// assert_eq!(client.creator_liveness(), Liveness::Alive);
    /// drop(server); // as when the server's process ends, even by `kill -9`
    /// assert_eq!(client.creator_liveness(), Liveness::Dead);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn creator_liveness(&self) -> Liveness {
        if self.creator {
            return Liveness::Alive;
        }
        match creator_lock_held(&self.file) {
            Ok(true) => Liveness::Alive,
            Ok(false) => Liveness::Dead,
            Err(_) => Liveness::Unknown,
        }
    }

    /// Whether the process that created this segment may still run: true unless it is certainly
    /// dead (a failed probe counts as alive; see [`creator_liveness`](Self::creator_liveness)).
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::{CreateOptions, Segment};
    ///
    /// let name = format!("doc-creator-alive-{}", std::process::id());
    /// let server = Segment::create(&name, &CreateOptions::new(4096))?;
    /// let client = Segment::open(&name)?;
    /// assert!(client.creator_alive());
    /// drop(server);
    /// assert!(!client.creator_alive()); // time for the client to leave
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn creator_alive(&self) -> bool {
        self.creator_liveness() != Liveness::Dead
    }

    /// Pid of the creator as recorded in the header.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::{CreateOptions, Segment};
    ///
    /// let name = format!("doc-creator-pid-{}", std::process::id());
    /// let _server = Segment::create(&name, &CreateOptions::new(4096))?;
    /// assert_eq!(Segment::open(&name)?.creator_pid(), std::process::id());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn creator_pid(&self) -> u32 {
        self.header().creator_pid.load(Ordering::Relaxed)
    }

    /// The segment's name.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::{CreateOptions, Segment};
    ///
    /// let name = format!("doc-name-{}", std::process::id());
    /// let seg = Segment::create(&name, &CreateOptions::new(4096))?;
    /// assert_eq!(seg.name(), name);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Path of the backing file.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::{CreateOptions, Segment};
    ///
    /// let name = format!("doc-path-{}", std::process::id());
    /// let seg = Segment::create(&name, &CreateOptions::new(4096))?;
    /// assert_eq!(seg.path(), std::path::Path::new(&format!("/dev/shm/shmr.{name}")));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The application protocol version stored at creation.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::{CreateOptions, Segment};
    ///
    /// let name = format!("doc-user-version-{}", std::process::id());
    /// let opts = CreateOptions { user_version: 7, ..CreateOptions::new(4096) };
    /// let _server = Segment::create(&name, &opts)?;
    /// assert_eq!(Segment::open(&name)?.user_version(), 7);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn user_version(&self) -> u32 {
        self.user_version
    }

    /// Whether this handle created the segment.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::{CreateOptions, Segment};
    ///
    /// let name = format!("doc-is-creator-{}", std::process::id());
    /// let server = Segment::create(&name, &CreateOptions::new(4096))?;
    /// let client = Segment::open(&name)?;
    /// assert!(server.is_creator() && !client.is_creator());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_creator(&self) -> bool {
        self.creator
    }

    fn header(&self) -> &SegmentHeader {
        // SAFETY: the mapping covers the header (checked at create/open); atomics only.
        unsafe { &*self.map.as_mut_ptr().cast::<SegmentHeader>() }
    }
}

fn read_pid(file: &File) -> u32 {
    let Ok(map) = memmap2::MmapOptions::new().map_raw_read_only(file) else {
        return 0;
    };
    if map.len() < std::mem::size_of::<SegmentHeader>() {
        return 0;
    }
    // SAFETY: the mapping covers a header; only an atomic field is read.
    let header = unsafe { &*map.as_mut_ptr().cast::<SegmentHeader>() };
    header.creator_pid.load(Ordering::Relaxed)
}

struct TempName<'a>(&'a Path);

impl Drop for TempName<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if self.creator {
            // Remove the name only if it is still ours (a successor may have replaced a segment it
            // judged stale).
            if let (Ok(ours), Ok(now)) = (self.file.metadata(), std::fs::metadata(&self.path)) {
                if ours.ino() == now.ino() && ours.dev() == now.dev() {
                    let _ = std::fs::remove_file(&self.path);
                }
            }
        }
    }
}

// SAFETY: the mapping covers USER_OFFSET + user_len bytes (checked against the file length at create
// and open), page aligned, and lives as long as the Segment.
unsafe impl Memory for Segment {
    fn base(&self) -> NonNull<u8> {
        // SAFETY: USER_OFFSET is inside the mapping; mmap never returns null on success.
        unsafe { NonNull::new_unchecked(self.map.as_mut_ptr().add(USER_OFFSET)) }
    }
    fn len(&self) -> usize {
        self.user_len
    }
}

#[cfg(all(test, not(miri), not(shm_loom)))]
mod tests {
    use super::*;

    fn name(tag: &str) -> String {
        format!("unit-{tag}-{}", std::process::id())
    }

    #[test]
    fn a_file_of_another_uid_is_neither_opened_nor_removed() {
        // The uid is injected: the test needs no second user and no root. (The real thing, a file
        // chowned to another uid, is in tests/permissions.rs and needs root.)
        let name = name("other-uid");
        let seg = Segment::create(&name, &CreateOptions::new(4096)).unwrap();
        let dir = Path::new(DEFAULT_DIR);
        let me = effective_uid();
        let other = me.wrapping_add(1);
        assert!(Segment::open_as(&name, &SegmentOpenOptions::default(), me).is_ok());
        match Segment::open_as(&name, &SegmentOpenOptions::default(), other) {
            Err(OpenError::NotOwner { owner, euid, .. }) => assert_eq!((owner, euid), (me, other)),
            r => panic!("expected NotOwner, got {r:?}"),
        }
        drop(seg);
        // A stale file (no creator holds its lock) of another uid stays where it is.
        let path = segment_path(dir, &name);
        std::fs::write(&path, b"stale").unwrap();
        match Segment::remove_as(&name, dir, other, |_| {}) {
            Err(RemoveError::NotOwner { owner, euid, .. }) => {
                assert_eq!((owner, euid), (me, other))
            }
            r => panic!("expected NotOwner, got {r:?}"),
        }
        assert!(path.exists());
        Segment::remove_as(&name, dir, me, |_| {}).unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn remove_refuses_a_name_replaced_between_check_and_unlink() {
        let name = name("replaced");
        let dir = Path::new(DEFAULT_DIR);
        let path = segment_path(dir, &name);
        std::fs::write(&path, b"stale segment").unwrap();
        let r = Segment::remove_as(&name, dir, effective_uid(), |path| {
            // A new server takes the name after the stale file was checked and locked: its file
            // replaces the stale one under the same name (rename is atomic).
            let fresh = path.with_extension("fresh");
            std::fs::write(&fresh, b"new server").unwrap();
            std::fs::rename(&fresh, path).unwrap();
        });
        assert!(matches!(r, Err(RemoveError::Replaced(_))), "{r:?}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"new server",
            "the new server's file is left alone"
        );
        // Without a replacement the same call removes it.
        Segment::remove_as(&name, dir, effective_uid(), |_| {}).unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn ownership_check_reads_the_owner_type_and_group_and_other_bits() {
        let dir = std::env::temp_dir().join(format!("shmr-unit-own-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f");
        std::fs::write(&file, b"x").unwrap();
        let me = effective_uid();
        let check = |mode: u32, allowed: Option<u32>, euid: u32| {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            check_ownership(&std::fs::metadata(&file).unwrap(), euid, allowed)
        };
        assert_eq!(check(0o600, Some(0o600), me), Ok(()));
        assert_eq!(check(0o400, Some(0o600), me), Ok(()), "owner bits are free");
        assert_eq!(check(0o700, Some(0o600), me), Ok(()), "owner bits are free");
        assert_eq!(
            check(0o644, Some(0o600), me),
            Err(Ownership::TooPermissive(0o644))
        );
        assert_eq!(
            check(0o666, Some(0o600), me),
            Err(Ownership::TooPermissive(0o666))
        );
        assert_eq!(check(0o640, Some(0o640), me), Ok(()));
        assert_eq!(check(0o640, Some(0o660), me), Ok(()));
        assert_eq!(
            check(0o660, Some(0o640), me),
            Err(Ownership::TooPermissive(0o660))
        );
        assert_eq!(
            check(0o602, Some(0o660), me),
            Err(Ownership::TooPermissive(0o602))
        );
        assert_eq!(check(0o666, None, me), Ok(()));
        assert_eq!(
            check(0o600, Some(0o600), me.wrapping_add(7)),
            Err(Ownership::OtherOwner(me))
        );
        assert_eq!(
            check_ownership(&std::fs::metadata(&dir).unwrap(), me, None),
            Err(Ownership::NotAFile)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
