//! Checkpoint and artifact archives, independent of where the session runs.
//!
//! A checkpoint is a gzip-compressed tar whose entries all live under `workspace/` (the
//! CLI's working directory) or `claude/` (its `CLAUDE_CONFIG_DIR`: transcripts, plans,
//! settings). It keeps a workspace as it is: directories (empty ones too), regular files
//! with their permission bits (`0o777`; set-id and sticky bits are dropped) and
//! modification time, symlinks as symlinks whatever they point at (a symlink is data:
//! `python -m venv` makes absolute ones), and a file hard-linked inside the tree as a hard
//! link. Sockets, fifos and devices are left out.
//!
//! Restoring reads and checks the whole archive first ([`check`]) and writes nothing
//! unless every entry passes: each path is relative, without `..`, under `workspace/` or
//! `claude/` (both directories); a path appears once (directories excepted); nothing lies
//! below a symlink or a file of the archive; a hard link names an earlier file of the
//! archive. Writing then never follows a link: every directory on the way is checked not
//! to be one, files are created new, links are created, never written through. An archive
//! that is unreadable or refused is [`Error::is_unrestorable`]. These functions block:
//! call them from `spawn_blocking`.
//!
//! Nothing here holds an archive or a file in memory: archives are written to and read
//! from a [`Write`] / [`Source`] (the worker uses temporary files), file contents are
//! copied and hashed in bounded buffers, and [`write_checkpoint`] stops with
//! [`Error::TooLarge`] once the files it took exceed the session's limit.

use std::collections::btree_map::Entry as MapEntry;
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, Metadata, OpenOptions, Permissions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tar::EntryType;

/// The checkpoint's top-level directories.
pub const WORKSPACE: &str = "workspace";
pub const CLAUDE_STATE: &str = "claude";

/// The permission bits a checkpoint keeps.
const MODE_BITS: u32 = 0o777;

/// Archive errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("archive I/O failed")]
    Io(#[from] std::io::Error),
    #[error("the archive cannot be read")]
    Corrupt(#[source] std::io::Error),
    #[error("archive entry {path:?} is not allowed: {reason}")]
    BadEntry { path: String, reason: &'static str },
    #[error("path {path:?} is not a relative path inside the workspace")]
    BadPath { path: String },
    #[error("the session's files take {size} bytes, over the limit of {limit}")]
    TooLarge { size: u64, limit: u64 },
}

/// A checkpoint to read: restoring reads it twice (checked first, then written), so it is
/// something that can be opened again — bytes in memory (tests) or a file.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

impl Source<'_> {
    fn open(&self) -> Result<Box<dyn Read + '_>, Error> {
        Ok(match self {
            Source::Bytes(bytes) => Box::new(*bytes),
            Source::File(path) => Box::new(std::io::BufReader::with_capacity(
                COPY_BUFFER,
                File::open(path)?,
            )),
        })
    }
}

impl<'a> From<&'a [u8]> for Source<'a> {
    fn from(bytes: &'a [u8]) -> Self {
        Source::Bytes(bytes)
    }
}

impl<'a> From<&'a Vec<u8>> for Source<'a> {
    fn from(bytes: &'a Vec<u8>) -> Self {
        Source::Bytes(bytes)
    }
}

impl<'a> From<&'a Path> for Source<'a> {
    fn from(path: &'a Path) -> Self {
        Source::File(path)
    }
}

/// The buffer size for copying and hashing.
const COPY_BUFFER: usize = 256 * 1024;

impl Error {
    /// The archive itself is at fault (unreadable, or an entry is refused): restoring it
    /// again cannot succeed, unlike a failed write.
    pub fn is_unrestorable(&self) -> bool {
        matches!(self, Error::Corrupt(_) | Error::BadEntry { .. })
    }
}

/// One file of the workspace, as listed by [`Manifest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub size: u64,
    /// Hex SHA-256 of the content.
    pub sha256: String,
}

/// The regular files of a workspace, by relative path (`/`-separated).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    pub files: BTreeMap<String, FileEntry>,
}

/// How a file changed between two manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// A changed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub path: String,
    pub kind: ChangeKind,
}

impl Manifest {
    /// The files that differ from `earlier`, sorted by path.
    pub fn changes_since(&self, earlier: &Manifest) -> Vec<Change> {
        let mut changes = Vec::new();
        for (path, entry) in &self.files {
            match earlier.files.get(path) {
                None => changes.push(Change {
                    path: path.clone(),
                    kind: ChangeKind::Added,
                }),
                Some(old) if old != entry => changes.push(Change {
                    path: path.clone(),
                    kind: ChangeKind::Modified,
                }),
                Some(_) => {}
            }
        }
        for path in earlier.files.keys() {
            if !self.files.contains_key(path) {
                changes.push(Change {
                    path: path.clone(),
                    kind: ChangeKind::Deleted,
                });
            }
        }
        changes.sort_by(|a, b| a.path.cmp(&b.path));
        changes
    }
}

/// `path` without `.` components, if it is relative and has no `..`.
fn normalized(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

/// Checks that `path` is relative and stays inside its root; returns it normalized.
pub fn relative_path(path: &str) -> Result<PathBuf, Error> {
    match normalized(Path::new(path)) {
        Some(out) if !out.as_os_str().is_empty() => Ok(out),
        _ => Err(Error::BadPath {
            path: path.to_owned(),
        }),
    }
}

/// Whether a normalized path lies under `workspace/` or `claude/` (or is one of them).
fn in_tree(path: &Path) -> bool {
    matches!(
        path.components().next(),
        Some(Component::Normal(top)) if top == WORKSPACE || top == CLAUDE_STATE
    )
}

// ---------------------------------------------------------------------------------------
// Writing a checkpoint.

/// Tars `root/workspace` and `root/claude` into a gzip checkpoint in memory (see
/// [`write_checkpoint`]); for tests and small trees.
pub fn checkpoint_dir(root: &Path) -> Result<Vec<u8>, Error> {
    write_checkpoint(root, Vec::new(), 0)
}

/// Tars `root/workspace` and `root/claude` into a gzip checkpoint written to `out`,
/// without following a link (see the module docs for what it keeps). With a `limit`
/// (bytes, 0: none), the tree is measured first and refused with [`Error::TooLarge`] when
/// its files exceed it, and the writing stops there too if the tree grows meanwhile.
pub fn write_checkpoint<W: Write>(root: &Path, out: W, limit: u64) -> Result<W, Error> {
    if limit > 0 {
        let size = tree_size(root)?;
        if size > limit {
            return Err(Error::TooLarge { size, limit });
        }
    }
    let encoder = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    let mut builder = tar::Builder::new(encoder);
    let mut walk = Walk {
        linked: HashMap::new(),
        taken: 0,
        limit,
    };
    for top in [WORKSPACE, CLAUDE_STATE] {
        if let Some(meta) = metadata(&root.join(top))?
            && meta.is_dir()
        {
            append_tree(
                &mut builder,
                &root.join(top),
                Path::new(top),
                &meta,
                &mut walk,
            )?;
        }
    }
    Ok(builder.into_inner()?.finish()?)
}

/// The bytes of the regular files under `root/workspace` and `root/claude` (what a
/// checkpoint would carry), without following a link; a file with several names counts
/// once.
pub fn tree_size(root: &Path) -> Result<u64, Error> {
    let mut total = 0u64;
    let mut seen = std::collections::HashSet::new();
    let mut stack: Vec<PathBuf> = [WORKSPACE, CLAUDE_STATE]
        .iter()
        .map(|top| root.join(top))
        .collect();
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err.into()),
        };
        for entry in entries {
            let entry = entry?;
            let Some(meta) = metadata(&entry.path())? else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() && (meta.nlink() <= 1 || seen.insert((meta.dev(), meta.ino())))
            {
                total = total.saturating_add(meta.len());
            }
        }
    }
    Ok(total)
}

/// What [`append_tree`] carries along.
struct Walk {
    /// The (device, inode) of files with several names, to their first name.
    linked: HashMap<(u64, u64), PathBuf>,
    /// Bytes of file content written so far.
    taken: u64,
    /// 0: none.
    limit: u64,
}

/// `symlink_metadata`, `None` for a path that vanished (the agent's processes may still
/// be deleting files while the checkpoint is taken).
fn metadata(path: &Path) -> Result<Option<Metadata>, Error> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err.into()),
    }
}

fn header(kind: EntryType, mode: u32, mtime: u64, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode & MODE_BITS);
    header.set_mtime(mtime);
    header.set_size(size);
    header
}

fn header_of(meta: &Metadata, kind: EntryType, size: u64) -> tar::Header {
    let mut header = header(
        kind,
        meta.mode(),
        u64::try_from(meta.mtime()).unwrap_or(0),
        size,
    );
    header.set_uid(u64::from(meta.uid()));
    header.set_gid(u64::from(meta.gid()));
    header
}

/// Appends directory `dir` (named `rel` in the archive) and everything below it.
fn append_tree<W: Write>(
    builder: &mut tar::Builder<W>,
    dir: &Path,
    rel: &Path,
    meta: &Metadata,
    walk: &mut Walk,
) -> Result<(), Error> {
    builder.append_data(
        &mut header_of(meta, EntryType::Directory, 0),
        rel,
        std::io::empty(),
    )?;
    let mut children = match std::fs::read_dir(dir) {
        Ok(children) => children.collect::<Result<Vec<_>, _>>()?,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err.into()),
    };
    children.sort_by_key(|child| child.file_name());
    for child in children {
        let path = child.path();
        let rel = rel.join(child.file_name());
        let Some(meta) = metadata(&path)? else {
            continue;
        };
        let kind = meta.file_type();
        if kind.is_dir() {
            append_tree(builder, &path, &rel, &meta, walk)?;
        } else if kind.is_symlink() {
            let target = match std::fs::read_link(&path) {
                Ok(target) => target,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err.into()),
            };
            builder.append_link(&mut header_of(&meta, EntryType::Symlink, 0), &rel, target)?;
        } else if kind.is_file() {
            let inode = (meta.dev(), meta.ino());
            if meta.nlink() > 1
                && let Some(first) = walk.linked.get(&inode)
            {
                builder.append_link(&mut header_of(&meta, EntryType::Link, 0), &rel, first)?;
                continue;
            }
            // Not through a link that replaced the file since it was listed.
            let file = match OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&path)
            {
                Ok(file) => file,
                Err(err)
                    if err.kind() == std::io::ErrorKind::NotFound
                        || err.raw_os_error() == Some(nix::libc::ELOOP) =>
                {
                    continue;
                }
                Err(err) => return Err(err.into()),
            };
            let size = meta.len();
            walk.taken = walk.taken.saturating_add(size);
            if walk.limit > 0 && walk.taken > walk.limit {
                return Err(Error::TooLarge {
                    size: walk.taken,
                    limit: walk.limit,
                });
            }
            // Exactly the size the header says, even if the file changes meanwhile: a
            // mismatch would corrupt the archive.
            let content = file.take(size).chain(std::io::repeat(0)).take(size);
            builder.append_data(
                &mut header_of(&meta, EntryType::Regular, size),
                &rel,
                content,
            )?;
            if meta.nlink() > 1 {
                walk.linked.insert(inode, rel);
            }
        }
        // Sockets, fifos and devices are not files a checkpoint carries.
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Reading and checking a checkpoint.

/// What a checkpoint entry makes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir,
    File,
    Symlink(PathBuf),
    /// A hard link to an earlier file of the archive (relative to the session root).
    HardLink(PathBuf),
}

/// A checkpoint entry, read from its header.
#[derive(Debug)]
struct Item {
    /// Relative to the session root, normalized.
    path: PathBuf,
    node: Node,
    mode: u32,
    mtime: u64,
}

/// Reads one entry's header and checks its own path: `None` for what a checkpoint leaves
/// out (the archive's root entry, pax global headers, fifos, devices).
fn read_item<R: Read>(entry: &tar::Entry<'_, R>) -> Result<Option<Item>, Error> {
    let raw = entry.path().map_err(Error::Corrupt)?;
    let name = raw.to_string_lossy().into_owned();
    let bad = |reason| Error::BadEntry {
        path: name.clone(),
        reason,
    };
    let path = normalized(&raw).ok_or_else(|| bad("absolute or leaves the tree"))?;
    let kind = entry.header().entry_type();
    if path.as_os_str().is_empty() {
        return Ok(None);
    }
    if !in_tree(&path) {
        return Err(bad("outside workspace/ and claude/"));
    }
    let node = match kind {
        EntryType::Directory => Node::Dir,
        EntryType::Regular | EntryType::Continuous => Node::File,
        EntryType::Symlink => {
            let target = entry
                .link_name()
                .map_err(Error::Corrupt)?
                .filter(|t| !t.as_os_str().is_empty())
                .ok_or_else(|| bad("symlink without a target"))?;
            Node::Symlink(target.into_owned())
        }
        EntryType::Link => {
            let target = entry
                .link_name()
                .map_err(Error::Corrupt)?
                .ok_or_else(|| bad("hard link without a target"))?;
            let target = normalized(&target)
                .filter(|t| in_tree(t))
                .ok_or_else(|| bad("hard link to a path outside workspace/ and claude/"))?;
            Node::HardLink(target)
        }
        EntryType::XGlobalHeader | EntryType::Fifo | EntryType::Char | EntryType::Block => {
            return Ok(None);
        }
        _ => return Err(bad("unsupported entry type")),
    };
    let header = entry.header();
    Ok(Some(Item {
        path,
        node,
        mode: header.mode().map_err(Error::Corrupt)? & MODE_BITS,
        mtime: header.mtime().map_err(Error::Corrupt)?,
    }))
}

fn entries_of<'a>(
    checkpoint: &'a Source<'_>,
) -> Result<tar::Archive<flate2::read::GzDecoder<Box<dyn Read + 'a>>>, Error> {
    Ok(tar::Archive::new(flate2::read::GzDecoder::new(
        checkpoint.open()?,
    )))
}

/// What [`check`] remembers of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Dir,
    File,
    Symlink,
}

/// Reads a whole gzip checkpoint and checks it against the rules in the module docs,
/// writing nothing. Content is read too, so a truncated or damaged archive is found here
/// rather than halfway through a restore.
pub fn check<'a>(checkpoint: impl Into<Source<'a>>) -> Result<(), Error> {
    let checkpoint = checkpoint.into();
    let mut archive = entries_of(&checkpoint)?;
    let mut seen: BTreeMap<PathBuf, Seen> = BTreeMap::new();
    for entry in archive.entries().map_err(Error::Corrupt)? {
        let mut entry = entry.map_err(Error::Corrupt)?;
        let item = read_item(&entry)?;
        std::io::copy(&mut entry, &mut std::io::sink()).map_err(Error::Corrupt)?;
        let Some(item) = item else {
            continue;
        };
        let bad = |reason| Error::BadEntry {
            path: item.path.to_string_lossy().into_owned(),
            reason,
        };
        let kind = match &item.node {
            Node::Dir => Seen::Dir,
            Node::File => Seen::File,
            Node::Symlink(_) => Seen::Symlink,
            Node::HardLink(target) => match seen.get(target) {
                Some(Seen::File) => Seen::File,
                _ => return Err(bad("hard link to something that is not an earlier file")),
            },
        };
        if item.path.components().count() == 1 && kind != Seen::Dir {
            return Err(bad("workspace/ and claude/ must be directories"));
        }
        match seen.entry(item.path.clone()) {
            MapEntry::Vacant(slot) => {
                slot.insert(kind);
            }
            MapEntry::Occupied(slot) if *slot.get() == Seen::Dir && kind == Seen::Dir => {}
            MapEntry::Occupied(_) => return Err(bad("appears twice")),
        }
    }
    // The end of the gzip stream holds its checksum: read up to it.
    std::io::copy(&mut archive.into_inner(), &mut std::io::sink()).map_err(Error::Corrupt)?;
    for path in seen.keys() {
        for ancestor in path.ancestors().skip(1) {
            match seen.get(ancestor) {
                Some(Seen::Symlink) => {
                    return Err(Error::BadEntry {
                        path: path.to_string_lossy().into_owned(),
                        reason: "would be written through a symlink",
                    });
                }
                Some(Seen::File) => {
                    return Err(Error::BadEntry {
                        path: path.to_string_lossy().into_owned(),
                        reason: "lies inside a file",
                    });
                }
                Some(Seen::Dir) | None => {}
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Restoring a checkpoint into a directory.

/// Makes sure `root/rel` is a directory, creating what is missing, without following a
/// link: an existing component that is not a real directory is refused.
fn ensure_dir(root: &Path, rel: &Path) -> Result<(), Error> {
    let mut current = root.to_path_buf();
    for component in rel.components() {
        current.push(component);
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(Error::BadEntry {
                    path: rel.to_string_lossy().into_owned(),
                    reason: "would be written through a symlink or into a file",
                });
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&current)?;
            }
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// Makes room for a new file or link at `root/rel` (its parent already checked): an
/// existing file or link is removed (not followed), a directory is refused.
fn make_room(root: &Path, rel: &Path) -> Result<PathBuf, Error> {
    if let Some(parent) = rel.parent() {
        ensure_dir(root, parent)?;
    }
    let dest = root.join(rel);
    match std::fs::symlink_metadata(&dest) {
        Ok(meta) if meta.is_dir() => Err(Error::BadEntry {
            path: rel.to_string_lossy().into_owned(),
            reason: "would replace a directory",
        }),
        Ok(_) => {
            std::fs::remove_file(&dest)?;
            Ok(dest)
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(dest),
        Err(err) => Err(err.into()),
    }
}

/// Creates `root/rel` as a new file (never through a link) holding `content`.
fn write_new_file(root: &Path, rel: &Path, content: &mut impl Read) -> Result<File, Error> {
    let dest = make_room(root, rel)?;
    // `create_new` (O_EXCL) does not follow a link at the last component either.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&dest)?;
    std::io::copy(content, &mut file)?;
    Ok(file)
}

/// Extracts a gzip checkpoint into `root` (creating `root/workspace` and `root/claude`),
/// after [`check`] accepted all of it.
pub fn restore_dir<'a>(checkpoint: impl Into<Source<'a>>, root: &Path) -> Result<(), Error> {
    let checkpoint = checkpoint.into();
    check(checkpoint)?;
    std::fs::create_dir_all(root)?;
    for top in [WORKSPACE, CLAUDE_STATE] {
        ensure_dir(root, Path::new(top))?;
    }
    let mut dirs = Vec::new();
    let mut archive = entries_of(&checkpoint)?;
    for entry in archive.entries().map_err(Error::Corrupt)? {
        let mut entry = entry.map_err(Error::Corrupt)?;
        let Some(item) = read_item(&entry)? else {
            continue;
        };
        match &item.node {
            Node::Dir => {
                ensure_dir(root, &item.path)?;
                dirs.push((item.path, item.mode));
            }
            Node::File => {
                let file = write_new_file(root, &item.path, &mut entry)?;
                file.set_permissions(Permissions::from_mode(item.mode))?;
                file.set_modified(UNIX_EPOCH + Duration::from_secs(item.mtime))?;
            }
            Node::Symlink(target) => {
                let dest = make_room(root, &item.path)?;
                std::os::unix::fs::symlink(target, dest)?;
            }
            Node::HardLink(target) => {
                let dest = make_room(root, &item.path)?;
                // `link(2)` does not follow a symlink given as the existing name, and
                // `check` made sure it names a file.
                std::fs::hard_link(root.join(target), dest)?;
            }
        }
    }
    // Deepest first, so a read-only directory gets its mode once everything inside it
    // was written.
    dirs.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
    for (path, mode) in dirs {
        let full = root.join(&path);
        if std::fs::symlink_metadata(&full)?.is_dir() {
            std::fs::set_permissions(&full, Permissions::from_mode(mode))?;
        }
    }
    Ok(())
}

/// Re-encodes a gzip checkpoint as a plain tar with every entry owned by `uid:gid`, after
/// [`check`] accepted it: what the docker runtime uploads into the session volume mounted
/// at `mount`.
///
/// Docker refuses to extract a relative symlink that resolves outside the directory it
/// extracts into, so such a link is written as the absolute path it resolves to
/// (lexically, from `mount`): it points at the same place.
pub fn checkpoint_to_owned_tar<'a>(
    checkpoint: impl Into<Source<'a>>,
    uid: u64,
    gid: u64,
    mount: &Path,
) -> Result<Vec<u8>, Error> {
    write_owned_tar(checkpoint, uid, gid, mount, Vec::new())
}

/// [`checkpoint_to_owned_tar`], written to `out`.
pub fn write_owned_tar<'a, W: Write>(
    checkpoint: impl Into<Source<'a>>,
    uid: u64,
    gid: u64,
    mount: &Path,
    out: W,
) -> Result<W, Error> {
    let checkpoint = checkpoint.into();
    check(checkpoint)?;
    let mut archive = entries_of(&checkpoint)?;
    let mut out = tar::Builder::new(out);
    let owned = |kind, mode, mtime, size| {
        let mut header = header(kind, mode, mtime, size);
        header.set_uid(uid);
        header.set_gid(gid);
        header
    };
    for top in [WORKSPACE, CLAUDE_STATE] {
        out.append_data(
            &mut owned(EntryType::Directory, 0o755, 0, 0),
            top,
            std::io::empty(),
        )?;
    }
    for entry in archive.entries().map_err(Error::Corrupt)? {
        let mut entry = entry.map_err(Error::Corrupt)?;
        let Some(item) = read_item(&entry)? else {
            continue;
        };
        match &item.node {
            Node::Dir => out.append_data(
                &mut owned(EntryType::Directory, item.mode, item.mtime, 0),
                &item.path,
                std::io::empty(),
            )?,
            Node::File => {
                let size = entry.size();
                out.append_data(
                    &mut owned(EntryType::Regular, item.mode, item.mtime, size),
                    &item.path,
                    &mut entry,
                )?;
            }
            Node::Symlink(target) => {
                let target = extractable_target(mount, &item.path, target);
                out.append_link(
                    &mut owned(EntryType::Symlink, 0o777, item.mtime, 0),
                    &item.path,
                    target,
                )?;
            }
            Node::HardLink(target) => out.append_link(
                &mut owned(EntryType::Link, item.mode, item.mtime, 0),
                &item.path,
                target,
            )?,
        }
    }
    Ok(out.into_inner()?)
}

/// The target to give Docker for the symlink `path` (relative to `mount`): `target`
/// itself unless it is relative and resolves outside `mount`, then that absolute path.
fn extractable_target(mount: &Path, path: &Path, target: &Path) -> PathBuf {
    if target.is_absolute() {
        return target.to_path_buf();
    }
    let mut resolved: Vec<Component<'_>> = mount.components().collect();
    if let Some(parent) = path.parent() {
        resolved.extend(parent.components());
    }
    for component in target.components() {
        match component {
            Component::ParentDir => {
                if resolved.len() > 1 {
                    resolved.pop();
                }
            }
            Component::CurDir => {}
            other => resolved.push(other),
        }
    }
    let resolved: PathBuf = resolved.iter().collect();
    if resolved.starts_with(mount) {
        target.to_path_buf()
    } else {
        resolved
    }
}

/// A tar of `files` (workspace-relative paths) under `workspace/`, owned by `uid:gid`, for
/// uploading into a session root.
pub fn files_to_owned_tar(
    files: &[(String, Vec<u8>)],
    uid: u64,
    gid: u64,
) -> Result<Vec<u8>, Error> {
    let mut out = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for (path, content) in files {
        let rel = relative_path(path)?;
        let mut parent = PathBuf::from(WORKSPACE);
        for part in rel.parent().into_iter().flat_map(|p| p.components()) {
            parent.push(part);
            if dirs.insert(parent.clone()) {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_uid(uid);
                header.set_gid(gid);
                header.set_size(0);
                out.append_data(&mut header, &parent, std::io::empty())?;
            }
        }
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_size(content.len() as u64);
        out.append_data(
            &mut header,
            PathBuf::from(WORKSPACE).join(&rel),
            content.as_slice(),
        )?;
    }
    Ok(out.into_inner()?)
}

/// Writes `files` (workspace-relative paths) into the workspace under `root`, never
/// through a link the agent left there: an existing link or file of that name is replaced.
pub fn import_dir(root: &Path, files: &[(String, Vec<u8>)]) -> Result<(), Error> {
    write_files(&root.join(WORKSPACE), files)
}

/// Writes `files` (relative paths) under `dir`, never through a link already there: an
/// existing link or file of that name is replaced.
pub fn write_files(dir: &Path, files: &[(String, Vec<u8>)]) -> Result<(), Error> {
    std::fs::create_dir_all(dir)?;
    for (path, content) in files {
        write_new_file(dir, &relative_path(path)?, &mut content.as_slice())?;
    }
    Ok(())
}

/// `name` (an entry or hard link name in Docker's archive of `/session`, `<prefix>/…`)
/// relative to the session root, if it lies under `workspace/` or `claude/`.
fn under_prefix<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = name
        .trim_start_matches("./")
        .strip_prefix(prefix)?
        .trim_start_matches('/');
    let top = rest.split('/').next()?;
    (top == WORKSPACE || top == CLAUDE_STATE).then_some(rest)
}

/// Turns a plain tar of a session root (entries under `<prefix>/`, as Docker returns the
/// archive of `/session`) into a gzip checkpoint with entries under `workspace/` and
/// `claude/`. Directories, files, symlinks and hard links are kept.
/// Read from `tar`, written to `out`.
pub fn session_tar_to_checkpoint<W: Write>(
    tar: impl Read,
    prefix: &str,
    out: W,
) -> Result<W, Error> {
    let mut archive = tar::Archive::new(tar);
    let encoder = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    let mut out = tar::Builder::new(encoder);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = entry.path()?.to_string_lossy().into_owned();
        let Some(rest) = under_prefix(&raw, prefix).map(str::to_owned) else {
            continue;
        };
        let mut header = entry.header().clone();
        let kind = header.entry_type();
        if kind.is_symlink() {
            let target = entry.link_name()?.unwrap_or_default().into_owned();
            out.append_link(&mut header, rest, &target)?;
        } else if kind.is_hard_link() {
            let target = entry.link_name()?.unwrap_or_default();
            let target = target.to_string_lossy();
            match under_prefix(&target, prefix) {
                Some(target) => out.append_link(&mut header, rest, target)?,
                // Docker names the first of the file's names inside the archive, so this
                // does not happen; if it did, the file would be missing, not the checkpoint.
                None => {
                    tracing::warn!(path = %rest, target = %target, "hard link to outside the session dropped")
                }
            }
        } else if kind.is_file() || kind.is_dir() {
            out.append_data(&mut header, rest, &mut entry)?;
        }
    }
    let encoder = out.into_inner()?;
    Ok(encoder.finish()?)
}

fn hex(digest: &[u8]) -> String {
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Hashes `size` bytes of `content` in a bounded buffer, or, above `max_hashed` (0: no
/// limit), fingerprints it by `stamp` instead: such a file is never uploaded as an
/// artifact, so telling that it changed is enough, and hashing gigabytes per turn is not.
fn file_entry(
    content: &mut impl Read,
    size: u64,
    max_hashed: u64,
    stamp: impl FnOnce() -> String,
) -> Result<FileEntry, std::io::Error> {
    if max_hashed > 0 && size > max_hashed {
        return Ok(FileEntry {
            size,
            sha256: format!("unhashed:{}", stamp()),
        });
    }
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; COPY_BUFFER.min(usize::try_from(size).unwrap_or(COPY_BUFFER).max(1))];
    let mut read = 0u64;
    loop {
        let n = content.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        read += n as u64;
        hasher.update(&buffer[..n]);
    }
    Ok(FileEntry {
        size: read,
        sha256: hex(&hasher.finalize()),
    })
}

/// The manifest of the regular files under `dir`; files above `max_hashed` bytes (0: no
/// limit) are fingerprinted by size and modification time instead of hashed.
pub fn manifest_dir(dir: &Path, max_hashed: u64) -> Result<Manifest, Error> {
    let mut manifest = Manifest::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let entries = match std::fs::read_dir(&current) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err.into()),
        };
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                let meta = entry.metadata()?;
                let mut file = match File::open(entry.path()) {
                    Ok(file) => file,
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(err) => return Err(err.into()),
                };
                let rel = entry
                    .path()
                    .strip_prefix(dir)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let stamp = || format!("{}.{}", meta.mtime(), meta.mtime_nsec());
                let file_entry = file_entry(&mut file, meta.len(), max_hashed, stamp)?;
                manifest.files.insert(rel, file_entry);
            }
        }
    }
    Ok(manifest)
}

/// The manifest of a plain tar whose entries sit under `prefix/` (Docker's archive of
/// the workspace directory); `max_hashed` as for [`manifest_dir`].
pub fn manifest_tar(tar: impl Read, prefix: &str, max_hashed: u64) -> Result<Manifest, Error> {
    let mut manifest = Manifest::default();
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries()? {
        let mut entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let raw = entry.path()?.to_string_lossy().into_owned();
        let Some(rel) = raw
            .trim_start_matches("./")
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('/'))
        else {
            continue;
        };
        let rel = rel.to_owned();
        let size = entry.size();
        let mtime = entry.header().mtime().unwrap_or(0);
        let file_entry = file_entry(&mut entry, size, max_hashed, || mtime.to_string())?;
        manifest.files.insert(rel, file_entry);
    }
    Ok(manifest)
}

/// The first regular file of a plain tar (Docker's archive of a single file) held in
/// `tar`: the file positioned at its content, and its size.
pub fn single_file_in_tar(mut tar: File) -> Result<Option<(File, u64)>, Error> {
    use std::io::{Seek, SeekFrom};
    let found = {
        let mut archive = tar::Archive::new(&mut tar);
        let mut found = None;
        for entry in archive.entries()? {
            let entry = entry?;
            if entry.header().entry_type().is_file() {
                found = Some((entry.raw_file_position(), entry.size()));
                break;
            }
        }
        found
    };
    let Some((position, size)) = found else {
        return Ok(None);
    };
    tar.seek(SeekFrom::Start(position))?;
    Ok(Some((tar, size)))
}

/// Opens `path` (relative to `dir`) for reading, never through a link: `None` when it is
/// missing or not a regular file.
pub fn open_file(dir: &Path, path: &str) -> Result<Option<(File, u64)>, Error> {
    let full = dir.join(relative_path(path)?);
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&full)
    {
        Ok(file) => file,
        Err(err)
            if err.kind() == std::io::ErrorKind::NotFound
                || err.raw_os_error() == Some(nix::libc::ELOOP) =>
        {
            return Ok(None);
        }
        Err(err) => return Err(err.into()),
    };
    let meta = file.metadata()?;
    Ok(meta.is_file().then_some((file, meta.len())))
}

#[cfg(test)]
mod tests;
