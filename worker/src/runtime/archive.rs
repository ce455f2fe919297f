//! Checkpoint and artifact archives, independent of where the session runs.
//!
//! A checkpoint is a gzip-compressed tar whose entries all live under `workspace/` (the
//! CLI's working directory) or `claude/` (its `CLAUDE_CONFIG_DIR`: transcripts, plans,
//! settings). Restoring refuses absolute paths, `..`, links leaving the tree and entries
//! outside those two directories. These functions block: call them from
//! `spawn_blocking`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

/// The checkpoint's top-level directories.
pub const WORKSPACE: &str = "workspace";
pub const CLAUDE_STATE: &str = "claude";

/// Archive errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("archive I/O failed")]
    Io(#[from] std::io::Error),
    #[error("archive entry {path:?} is not allowed: {reason}")]
    BadEntry { path: String, reason: &'static str },
    #[error("path {path:?} is not a relative path inside the workspace")]
    BadPath { path: String },
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

/// A file read out of a workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedFile {
    /// Relative to the workspace.
    pub path: String,
    pub content: Vec<u8>,
}

/// Checks that `path` is relative and stays inside its root; returns it normalized.
pub fn relative_path(path: &str) -> Result<PathBuf, Error> {
    let bad = || Error::BadPath {
        path: path.to_owned(),
    };
    let mut out = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return Err(bad()),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(bad());
    }
    Ok(out)
}

/// Tars `root/workspace` and `root/claude` into a gzip checkpoint.
pub fn checkpoint_dir(root: &Path) -> Result<Vec<u8>, Error> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(encoder);
    builder.follow_symlinks(false);
    for dir in [WORKSPACE, CLAUDE_STATE] {
        let path = root.join(dir);
        if path.is_dir() {
            builder.append_dir_all(dir, &path)?;
        }
    }
    Ok(builder.into_inner()?.finish()?)
}

/// Checks one entry's path and kind; returns the path relative to the session root.
fn checked_entry<R: Read>(entry: &tar::Entry<'_, R>) -> Result<Option<PathBuf>, Error> {
    let raw = entry.path()?.to_string_lossy().into_owned();
    let bad = |reason| Error::BadEntry {
        path: raw.clone(),
        reason,
    };
    let trimmed = raw.trim_start_matches("./");
    if trimmed.is_empty() || trimmed == "." {
        return Ok(None);
    }
    let path = relative_path(trimmed).map_err(|_| bad("absolute or leaves the tree"))?;
    let top = path.components().next().and_then(|c| match c {
        Component::Normal(p) => p.to_str(),
        _ => None,
    });
    if !matches!(top, Some(WORKSPACE) | Some(CLAUDE_STATE)) {
        return Err(bad("outside workspace/ and claude/"));
    }
    let kind = entry.header().entry_type();
    if kind.is_hard_link() {
        return Err(bad("hard links are not restored"));
    }
    if kind.is_symlink() {
        let target = entry.link_name()?.unwrap_or_default();
        let target = target.to_string_lossy();
        if target.starts_with('/') {
            return Err(bad("absolute symlink"));
        }
        // The link must resolve inside the tree, relative to its own directory.
        let mut depth: i64 = path.components().count() as i64 - 1;
        for c in Path::new(target.as_ref()).components() {
            match c {
                Component::ParentDir => depth -= 1,
                Component::Normal(_) => depth += 1,
                _ => {}
            }
            if depth < 1 {
                return Err(bad("symlink leaves the tree"));
            }
        }
    }
    if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
        return Ok(None);
    }
    Ok(Some(path))
}

/// Extracts a gzip checkpoint into `root` (creating `root/workspace` and `root/claude`).
pub fn restore_dir(checkpoint: &[u8], root: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(root.join(WORKSPACE))?;
    std::fs::create_dir_all(root.join(CLAUDE_STATE))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(checkpoint));
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        // `unpack_in` also refuses paths escaping `root`, a second line of defence.
        if checked_entry(&entry)?.is_some() {
            entry.unpack_in(root)?;
        }
    }
    Ok(())
}

/// Re-encodes a gzip checkpoint as a plain tar with every entry owned by `uid:gid`, after
/// checking every entry: what the docker runtime uploads into a session volume.
pub fn checkpoint_to_owned_tar(checkpoint: &[u8], uid: u64, gid: u64) -> Result<Vec<u8>, Error> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(checkpoint));
    let mut out = tar::Builder::new(Vec::new());
    for top in [WORKSPACE, CLAUDE_STATE] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_size(0);
        out.append_data(&mut header, top, std::io::empty())?;
    }
    for entry in archive.entries()? {
        let mut entry = entry?;
        let Some(path) = checked_entry(&entry)? else {
            continue;
        };
        let mut header = entry.header().clone();
        header.set_uid(uid);
        header.set_gid(gid);
        let kind = header.entry_type();
        if kind.is_symlink() {
            let target = entry.link_name()?.unwrap_or_default().into_owned();
            out.append_link(&mut header, &path, &target)?;
        } else {
            let mut data = Vec::new();
            entry.read_to_end(&mut data)?;
            out.append_data(&mut header, &path, data.as_slice())?;
        }
    }
    Ok(out.into_inner()?)
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

/// Writes `files` (workspace-relative paths) into the workspace under `root`.
pub fn import_dir(root: &Path, files: &[(String, Vec<u8>)]) -> Result<(), Error> {
    for (path, content) in files {
        let target = root.join(WORKSPACE).join(relative_path(path)?);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, content)?;
    }
    Ok(())
}

/// Turns a plain tar of a session root (entries under `<prefix>/`, as Docker returns the
/// archive of `/session`) into a gzip checkpoint with entries under `workspace/` and
/// `claude/`.
pub fn session_tar_to_checkpoint(tar_bytes: &[u8], prefix: &str) -> Result<Vec<u8>, Error> {
    let mut archive = tar::Archive::new(tar_bytes);
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut out = tar::Builder::new(encoder);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = entry.path()?.to_string_lossy().into_owned();
        let Some(rest) = raw
            .trim_start_matches("./")
            .strip_prefix(prefix)
            .map(|r| r.trim_start_matches('/'))
        else {
            continue;
        };
        if rest.is_empty() || !(rest.starts_with(WORKSPACE) || rest.starts_with(CLAUDE_STATE)) {
            continue;
        }
        let mut header = entry.header().clone();
        if header.entry_type().is_symlink() {
            let target = entry.link_name()?.unwrap_or_default().into_owned();
            out.append_link(&mut header, rest, &target)?;
        } else if header.entry_type().is_file() || header.entry_type().is_dir() {
            let mut data = Vec::new();
            entry.read_to_end(&mut data)?;
            out.append_data(&mut header, rest, data.as_slice())?;
        }
    }
    let encoder = out.into_inner()?;
    Ok(encoder.finish()?)
}

fn sha256_hex(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The manifest of the regular files under `dir`.
pub fn manifest_dir(dir: &Path) -> Result<Manifest, Error> {
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
                let content = std::fs::read(entry.path())?;
                let rel = entry
                    .path()
                    .strip_prefix(dir)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                manifest.files.insert(
                    rel,
                    FileEntry {
                        size: content.len() as u64,
                        sha256: sha256_hex(&content),
                    },
                );
            }
        }
    }
    Ok(manifest)
}

/// The manifest of a plain tar whose entries sit under `prefix/` (Docker's archive of
/// the workspace directory).
pub fn manifest_tar(tar_bytes: &[u8], prefix: &str) -> Result<Manifest, Error> {
    let mut manifest = Manifest::default();
    let mut archive = tar::Archive::new(tar_bytes);
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
        let mut content = Vec::new();
        entry.read_to_end(&mut content)?;
        manifest.files.insert(
            rel,
            FileEntry {
                size: content.len() as u64,
                sha256: sha256_hex(&content),
            },
        );
    }
    Ok(manifest)
}

/// The first regular file of a plain tar (Docker's archive of a single file).
pub fn single_file_from_tar(tar_bytes: &[u8]) -> Result<Option<Vec<u8>>, Error> {
    let mut archive = tar::Archive::new(tar_bytes);
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type().is_file() {
            let mut content = Vec::new();
            entry.read_to_end(&mut content)?;
            return Ok(Some(content));
        }
    }
    Ok(None)
}

/// Reads `paths` (relative to `dir`); missing files and non-files are skipped.
pub fn export_dir(dir: &Path, paths: &[String]) -> Result<Vec<ExportedFile>, Error> {
    let mut out = Vec::new();
    for path in paths {
        let rel = relative_path(path)?;
        let full = dir.join(&rel);
        match std::fs::symlink_metadata(&full) {
            Ok(meta) if meta.is_file() => out.push(ExportedFile {
                path: path.clone(),
                content: std::fs::read(&full)?,
            }),
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_roundtrip_and_owned_tar() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("workspace/sub")).unwrap();
        std::fs::create_dir_all(src.path().join("claude/projects")).unwrap();
        std::fs::write(src.path().join("workspace/sub/a.txt"), "a").unwrap();
        std::fs::write(src.path().join("claude/projects/s.jsonl"), "{}").unwrap();
        let checkpoint = checkpoint_dir(src.path()).unwrap();
        let dst = tempfile::tempdir().unwrap();
        restore_dir(&checkpoint, dst.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(dst.path().join("workspace/sub/a.txt")).unwrap(),
            "a"
        );
        let owned = checkpoint_to_owned_tar(&checkpoint, 1000, 1000).unwrap();
        let mut archive = tar::Archive::new(owned.as_slice());
        for entry in archive.entries().unwrap() {
            assert_eq!(entry.unwrap().header().uid().unwrap(), 1000);
        }
        let manifest = manifest_dir(&dst.path().join("workspace")).unwrap();
        assert_eq!(manifest.files.keys().collect::<Vec<_>>(), vec!["sub/a.txt"]);
    }

    #[test]
    fn escaping_entries_are_refused() {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        // `append_data` refuses `..`, so write the name into the header directly.
        header.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"etc/passwd.x\0");
        header.set_cksum();
        builder.append(&header, &b"x"[..]).unwrap();
        let bad = builder.into_inner().unwrap().finish().unwrap();
        let dst = tempfile::tempdir().unwrap();
        assert!(matches!(
            restore_dir(&bad, dst.path()),
            Err(Error::BadEntry { .. })
        ));
        assert!(relative_path("../x").is_err());
        assert!(relative_path("/etc/passwd").is_err());
        assert!(relative_path("a/./b").is_ok());
    }

    #[test]
    fn manifest_changes() {
        let entry = |s: &str| FileEntry {
            size: 1,
            sha256: s.into(),
        };
        let old = Manifest {
            files: [("a".into(), entry("1")), ("b".into(), entry("1"))].into(),
        };
        let new = Manifest {
            files: [("a".into(), entry("2")), ("c".into(), entry("1"))].into(),
        };
        let kinds: Vec<_> = new
            .changes_since(&old)
            .into_iter()
            .map(|c| (c.path, c.kind))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("a".into(), ChangeKind::Modified),
                ("b".into(), ChangeKind::Deleted),
                ("c".into(), ChangeKind::Added)
            ]
        );
    }
}
