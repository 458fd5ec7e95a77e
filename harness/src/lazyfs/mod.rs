//! The lazy filesystem: a FUSE passthrough over a backing directory that
//! keeps written data in harness memory until the application fsyncs it.
//!
//! Durability model (what a power failure keeps):
//! - `write` and data truncation (`ftruncate`, O_TRUNC) stay pending in
//!   memory, per file, until `fsync`/`fdatasync` of that file (or `syncfs`
//!   of the mount); then they are applied to the backing file and fsynced.
//! - reads and sizes show the merged view (backing file + pending changes).
//! - metadata (create, mkdir, unlink, rename, chmod) passes through at
//!   once, as in LazyFS: it survives a power loss even if never fsynced.
//! - `power_loss` drops every pending change; the torn variant keeps a
//!   random prefix of each file's last unsynced write.
//! - `set_disk_error` makes writes and fsyncs fail with EIO until cleared.
//! - memory stays bounded, as a kernel's page cache does: with a writeback
//!   age (`set_writeback`), unsynced changes older than it are applied to
//!   the backing file as writes go on (they would survive a power loss
//!   anyway); and past `DIRTY_LIMIT` unsynced bytes in a mount, the oldest
//!   changes are applied, as a kernel writes dirty pages back at its dirty
//!   limit. Checked every `CHECK_EVERY` bytes written. A failed write-back
//!   fails the write that triggered it with EIO.
//!
//! Files are served with direct I/O and zero cache TTLs, so the kernel
//! never caches data or sizes that a power loss will change. Shared
//! memory maps are allowed on such files where the kernel can
//! (FUSE_DIRECT_IO_ALLOW_MMAP, Linux 6.6+; Kafka maps its index files): a
//! mapping's pages live in the kernel's page cache, and reach this
//! filesystem as writes when the kernel writes them back (msync, munmap,
//! or its own writeback), so a power loss cannot drop mapped pages the
//! kernel has not yet written back. Kafka rebuilds such index files after
//! an unclean shutdown anyway.

pub mod pending;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, WriteFlags,
};
use pending::{Op, Pending};

const TTL: Duration = Duration::ZERO;

/// The most unsynced data (with its bookkeeping) a mount keeps in memory;
/// past it, the oldest changes are written back to the backing file.
pub const DIRTY_LIMIT: u64 = 64 << 20;

/// Bytes written between two write-back checks.
pub const CHECK_EVERY: u64 = 1 << 20;

/// What a disk-error fault makes fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskError {
    pub writes: bool,
    pub fsyncs: bool,
}

#[derive(Default)]
struct State {
    paths: HashMap<u64, PathBuf>,
    inos: HashMap<PathBuf, u64>,
    next_ino: u64,
    pending: HashMap<u64, Pending>,
    handles: HashMap<u64, (u64, File)>,
    /// Handles opened with O_SYNC or O_DSYNC: each write is durable at once.
    sync_handles: std::collections::HashSet<u64>,
    next_fh: u64,
    disk_error: Option<DiskError>,
    /// Unsynced changes at least this old survive a power loss (the
    /// kernel wrote them back); None: none survives (LazyFS's model).
    writeback: Option<Duration>,
    /// Bytes written since the last write-back check.
    since_check: u64,
}

/// Shared control of a mounted lazy filesystem.
#[derive(Clone)]
pub struct LazyFsControl {
    state: Arc<Mutex<State>>,
    backing: PathBuf,
}

struct LazyFs {
    state: Arc<Mutex<State>>,
    backing: PathBuf,
}

/// A mounted lazy filesystem; unmounted on drop.
pub struct LazyFsMount {
    pub control: LazyFsControl,
    session: Option<fuser::BackgroundSession>,
}

impl Drop for LazyFsMount {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = s.umount_and_join();
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn errno(e: &std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(nix::libc::EIO))
}

impl State {
    fn ino_for(&mut self, rel: &Path) -> u64 {
        if let Some(&i) = self.inos.get(rel) {
            return i;
        }
        self.next_ino += 1;
        let i = self.next_ino;
        self.inos.insert(rel.to_path_buf(), i);
        self.paths.insert(i, rel.to_path_buf());
        i
    }

    fn rel(&self, ino: INodeNo) -> Option<PathBuf> {
        self.paths.get(&ino.0).cloned()
    }

    /// Applies a file's pending changes to the backing file and fsyncs it.
    fn sync(&mut self, backing: &Path, ino: u64) -> std::io::Result<()> {
        let Some(p) = self.pending.get(&ino) else {
            return Ok(());
        };
        let Some(rel) = self.paths.get(&ino) else {
            return Ok(());
        };
        let path = backing.join(rel);
        apply(&path, &p.ops, true)?;
        self.pending.remove(&ino);
        Ok(())
    }

    /// What a kernel's writeback would have done by `now`: applies the
    /// changes older than the writeback age, then, while the mount holds
    /// more than `DIRTY_LIMIT`, the oldest changes down to three quarters
    /// of it.
    fn write_back(&mut self, backing: &Path, now: Instant) -> std::io::Result<()> {
        if let Some(after) = self.writeback {
            self.write_back_where(backing, |p| p.written_back(after, now))?;
        }
        let total: u64 = self.pending.values().map(Pending::footprint).sum();
        if total <= DIRTY_LIMIT {
            return Ok(());
        }
        let mut ages: Vec<(Instant, u64)> = self.pending.values().flat_map(Pending::ages).collect();
        ages.sort_unstable_by_key(|(t, _)| *t);
        let mut excess = total - DIRTY_LIMIT / 4 * 3;
        let mut cutoff = None;
        for (t, size) in ages {
            cutoff = Some(t);
            if size >= excess {
                break;
            }
            excess -= size;
        }
        match cutoff {
            Some(c) => self.write_back_where(backing, |p| p.split_through(c)),
            None => Ok(()),
        }
    }

    /// Applies the changes `pick` splits off each file's pending ones to
    /// its backing file (no fsync: the backing file is what survives).
    fn write_back_where(
        &mut self,
        backing: &Path,
        mut pick: impl FnMut(&mut Pending) -> Vec<Op>,
    ) -> std::io::Result<()> {
        let inos: Vec<u64> = self.pending.keys().copied().collect();
        for ino in inos {
            let Some(p) = self.pending.get_mut(&ino) else {
                continue;
            };
            let old = pick(p);
            if p.ops.is_empty() {
                self.pending.remove(&ino);
            }
            if let (false, Some(rel)) = (old.is_empty(), self.paths.get(&ino)) {
                let path = backing.join(rel);
                apply(&path, &old, false).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
                })?;
            }
        }
        Ok(())
    }
}

/// Writes ops into a backing file, and fsyncs it if `sync`.
fn apply(path: &Path, ops: &[Op], sync: bool) -> std::io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    for op in ops {
        match op {
            Op::Write { offset, data } => f.write_all_at(data, *offset)?,
            Op::Truncate(s) => f.set_len(*s)?,
        }
    }
    if sync {
        f.sync_all()?;
    }
    Ok(())
}

impl LazyFs {
    fn attr(&self, st: &State, ino: u64, rel: &Path) -> std::io::Result<FileAttr> {
        let md = std::fs::symlink_metadata(self.backing.join(rel))?;
        let kind = if md.is_dir() {
            FileType::Directory
        } else if md.file_type().is_symlink() {
            FileType::Symlink
        } else {
            FileType::RegularFile
        };
        let size = match st.pending.get(&ino) {
            Some(p) if kind == FileType::RegularFile => p.size(md.len()),
            _ => md.len(),
        };
        let t = |s: i64, ns: i64| UNIX_EPOCH + Duration::new(s.max(0) as u64, ns as u32);
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: t(md.atime(), md.atime_nsec()),
            mtime: t(md.mtime(), md.mtime_nsec()),
            ctime: t(md.ctime(), md.ctime_nsec()),
            crtime: t(md.ctime(), md.ctime_nsec()),
            kind,
            perm: (md.mode() & 0o7777) as u16,
            nlink: md.nlink() as u32,
            uid: md.uid(),
            gid: md.gid(),
            rdev: md.rdev() as u32,
            blksize: 4096,
            flags: 0,
        })
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        let st = lock(&self.state);
        let p = st.rel(parent).ok_or(Errno::ENOENT)?;
        Ok(p.join(name))
    }

    fn entry(&self, rel: &Path, reply: ReplyEntry) {
        let mut st = lock(&self.state);
        let ino = st.ino_for(rel);
        match self.attr(&st, ino, rel) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open_handle(&self, ino: u64, rel: &Path) -> std::io::Result<u64> {
        let f = OpenOptions::new().read(true).open(self.backing.join(rel))?;
        let mut st = lock(&self.state);
        st.next_fh += 1;
        let fh = st.next_fh;
        st.handles.insert(fh, (ino, f));
        Ok(fh)
    }

    /// Remembers a handle opened with O_SYNC or O_DSYNC (O_SYNC includes
    /// the O_DSYNC bit on Linux).
    fn note_sync_flag(&self, fh: u64, flags: i32) {
        if flags & nix::libc::O_DSYNC != 0 {
            lock(&self.state).sync_handles.insert(fh);
        }
    }
}

impl Filesystem for LazyFs {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        // Without it, mmap of a direct-I/O file fails with ENODEV; an
        // older kernel keeps that behaviour (and says so to the broker).
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.child(parent, name) {
            Ok(rel) => self.entry(&rel, reply),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let st = lock(&self.state);
        let Some(rel) = st.rel(ino) else {
            return reply.error(Errno::ENOENT);
        };
        match self.attr(&st, ino.0, &rel) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(errno(&e)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut st = lock(&self.state);
        let Some(rel) = st.rel(ino) else {
            return reply.error(Errno::ENOENT);
        };
        if let Some(m) = mode {
            use std::os::unix::fs::PermissionsExt;
            if let Err(e) = std::fs::set_permissions(
                self.backing.join(&rel),
                std::fs::Permissions::from_mode(m),
            ) {
                return reply.error(errno(&e));
            }
        }
        if let Some(s) = size {
            if st.disk_error.is_some_and(|d| d.writes) {
                return reply.error(Errno::EIO);
            }
            st.pending.entry(ino.0).or_default().truncate(s);
        }
        match self.attr(&st, ino.0, &rel) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let rel = match self.child(parent, name) {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        let path = self.backing.join(&rel);
        if let Err(e) = std::fs::create_dir(&path) {
            return reply.error(errno(&e));
        }
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777));
        self.entry(&rel, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let rel = match self.child(parent, name) {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        match std::fs::remove_file(self.backing.join(&rel)) {
            Ok(()) => {
                let mut st = lock(&self.state);
                if let Some(ino) = st.inos.remove(&rel) {
                    st.paths.remove(&ino);
                    st.pending.remove(&ino);
                }
                reply.ok()
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let rel = match self.child(parent, name) {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        match std::fs::remove_dir(self.backing.join(&rel)) {
            Ok(()) => {
                let mut st = lock(&self.state);
                if let Some(ino) = st.inos.remove(&rel) {
                    st.paths.remove(&ino);
                }
                reply.ok()
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (from, to) = match (self.child(parent, name), self.child(newparent, newname)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        if let Err(e) = std::fs::rename(self.backing.join(&from), self.backing.join(&to)) {
            return reply.error(errno(&e));
        }
        let mut st = lock(&self.state);
        // The replaced file (if any) is gone; everything under `from` moves.
        if let Some(old) = st.inos.remove(&to) {
            st.paths.remove(&old);
            st.pending.remove(&old);
        }
        let moved: Vec<(PathBuf, u64)> = st
            .inos
            .iter()
            .filter(|(p, _)| p.starts_with(&from))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (p, i) in moved {
            let rest = p.strip_prefix(&from).expect("prefix");
            // join("") would add a trailing slash to the renamed entry itself.
            let np = if rest.as_os_str().is_empty() {
                to.clone()
            } else {
                to.join(rest)
            };
            st.inos.remove(&p);
            st.inos.insert(np.clone(), i);
            st.paths.insert(i, np);
        }
        reply.ok()
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let Some(rel) = lock(&self.state).rel(ino) else {
            return reply.error(Errno::ENOENT);
        };
        match self.open_handle(ino.0, &rel) {
            Ok(fh) => {
                self.note_sync_flag(fh, flags.0);
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let st = lock(&self.state);
        let Some((_, file)) = st.handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let durable_size = match file.metadata() {
            Ok(m) => m.len(),
            Err(e) => return reply.error(errno(&e)),
        };
        let mut durable =
            vec![0u8; (size as u64).min(durable_size.saturating_sub(offset)) as usize];
        let mut got = 0;
        while got < durable.len() {
            match file.read_at(&mut durable[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => return reply.error(errno(&e)),
            }
        }
        durable.truncate(got);
        match st.pending.get(&ino.0) {
            None => reply.data(&durable),
            Some(p) => reply.data(&p.read(offset, size as usize, &durable, durable_size)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut st = lock(&self.state);
        if st.disk_error.is_some_and(|d| d.writes) {
            return reply.error(Errno::EIO);
        }
        st.pending.entry(ino.0).or_default().write(offset, data);
        st.since_check += data.len() as u64;
        if st.since_check >= CHECK_EVERY {
            st.since_check = 0;
            if let Err(e) = st.write_back(&self.backing, Instant::now()) {
                return reply.error(errno(&e));
            }
        }
        if st.sync_handles.contains(&fh.0) {
            // O_SYNC / O_DSYNC: the write returns once it is durable.
            if let Err(e) = st.sync(&self.backing, ino.0) {
                return reply.error(errno(&e));
            }
        }
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() is not a durability point.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut st = lock(&self.state);
        st.handles.remove(&fh.0);
        st.sync_handles.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut st = lock(&self.state);
        if st.disk_error.is_some_and(|d| d.fsyncs) {
            return reply.error(Errno::EIO);
        }
        match st.sync(&self.backing, ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut st = lock(&self.state);
        let Some(rel) = st.rel(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let entries = match std::fs::read_dir(self.backing.join(&rel)) {
            Ok(rd) => rd,
            Err(e) => return reply.error(errno(&e)),
        };
        let mut list = vec![
            (ino.0, FileType::Directory, ".".into()),
            (ino.0, FileType::Directory, "..".into()),
        ];
        for e in entries.flatten() {
            let name = e.file_name();
            let kind = match e.file_type() {
                Ok(t) if t.is_dir() => FileType::Directory,
                Ok(t) if t.is_symlink() => FileType::Symlink,
                _ => FileType::RegularFile,
            };
            let child = st.ino_for(&rel.join(&name));
            list.push((child, kind, name));
        }
        for (i, (child, kind, name)) in list.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Metadata passes through at once; sync the backing directory too.
        let Some(rel) = lock(&self.state).rel(ino) else {
            return reply.error(Errno::ENOENT);
        };
        match File::open(self.backing.join(rel)).and_then(|d| d.sync_all()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match nix::sys::statvfs::statvfs(&self.backing) {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                s.name_max() as u32,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let rel = match self.child(parent, name) {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        let path = self.backing.join(&rel);
        let excl = flags & nix::libc::O_EXCL != 0;
        let created = OpenOptions::new()
            .write(true)
            .create(true)
            .create_new(excl)
            .truncate(false)
            .open(&path);
        if let Err(e) = created {
            return reply.error(errno(&e));
        }
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777));
        let ino = lock(&self.state).ino_for(&rel);
        let fh = match self.open_handle(ino, &rel) {
            Ok(fh) => fh,
            Err(e) => return reply.error(errno(&e)),
        };
        self.note_sync_flag(fh, flags);
        let st = lock(&self.state);
        match self.attr(&st, ino, &rel) {
            Ok(a) => reply.created(
                &TTL,
                &a,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

impl LazyFsControl {
    /// Drops every unsynced change (power failure). With `torn`, each
    /// file's last unsynced write leaves a prefix of `torn(len)` bytes.
    pub fn power_loss(
        &self,
        mut torn: Option<&mut dyn FnMut(usize) -> usize>,
    ) -> Result<PowerLoss, String> {
        let mut st = lock(&self.state);
        let mut report = PowerLoss::default();
        if let Some(after) = st.writeback {
            // What the kernel wrote back before the power went.
            let now = Instant::now();
            st.write_back_where(&self.backing, |p| p.written_back(after, now))
                .map_err(|e| format!("write back before the power loss: {e}"))?;
        }
        let pending = std::mem::take(&mut st.pending);
        for (ino, p) in pending {
            report.files += 1;
            report.bytes_lost += p
                .ops
                .iter()
                .map(|op| {
                    if let Op::Write { data, .. } = op {
                        data.len() as u64
                    } else {
                        0
                    }
                })
                .sum::<u64>();
            if let Some(pick) = torn.as_mut() {
                let last = p
                    .ops
                    .iter()
                    .rev()
                    .find_map(|op| {
                        if let Op::Write { data, .. } = op {
                            Some(data.len())
                        } else {
                            None
                        }
                    })
                    .unwrap_or(0);
                let keep = pick(last);
                let ops = p.torn_prefix(keep);
                if let Some(rel) = st.paths.get(&ino) {
                    apply(&self.backing.join(rel), &ops, true)
                        .map_err(|e| format!("torn write to {}: {e}", rel.display()))?;
                    report.bytes_lost -= ops
                        .iter()
                        .map(|op| {
                            if let Op::Write { data, .. } = op {
                                data.len() as u64
                            } else {
                                0
                            }
                        })
                        .sum::<u64>();
                }
            }
        }
        Ok(report)
    }

    /// Makes writes and/or fsyncs fail with EIO (None: heal).
    pub fn set_disk_error(&self, e: Option<DiskError>) {
        lock(&self.state).disk_error = e;
    }

    /// From now on, unsynced changes at least `after` old survive a power
    /// loss, as dirty data the kernel wrote back (Linux: 30 s,
    /// vm.dirty_expire_centisecs). None: every unsynced change is lost.
    pub fn set_writeback(&self, after: Option<Duration>) {
        lock(&self.state).writeback = after;
    }

    /// Bytes written but not yet fsynced.
    pub fn unsynced_bytes(&self) -> u64 {
        lock(&self.state)
            .pending
            .values()
            .flat_map(|p| &p.ops)
            .map(|op| {
                if let Op::Write { data, .. } = op {
                    data.len() as u64
                } else {
                    0
                }
            })
            .sum()
    }

    /// The backing directory (what survives).
    pub fn backing(&self) -> &Path {
        &self.backing
    }
}

/// What a power loss dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PowerLoss {
    pub files: usize,
    pub bytes_lost: u64,
}

/// Mounts a lazy filesystem of `backing` at `mountpoint` (both must exist).
pub fn mount(backing: &Path, mountpoint: &Path) -> Result<LazyFsMount, String> {
    let state = Arc::new(Mutex::new(State::default()));
    {
        let mut st = lock(&state);
        st.next_ino = 1;
        st.paths.insert(1, PathBuf::new());
        st.inos.insert(PathBuf::new(), 1);
    }
    let fs = LazyFs {
        state: state.clone(),
        backing: backing.to_path_buf(),
    };
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("unlost-lazyfs".into()),
        fuser::MountOption::Subtype("lazyfs".into()),
    ];
    let session = fuser::spawn_mount(fs, mountpoint, &config)
        .map_err(|e| format!("mount lazy filesystem at {}: {e}", mountpoint.display()))?;
    Ok(LazyFsMount {
        control: LazyFsControl {
            state,
            backing: backing.to_path_buf(),
        },
        session: Some(session),
    })
}
