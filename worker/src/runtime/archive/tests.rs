//! Checkpoints round-trip real trees (property tests over random trees of files,
//! directories, symlinks and hard links); hand-built hostile archives are refused without
//! writing anything, inside the destination or outside it.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::*;

// ---------------------------------------------------------------------------------------
// Reading a tree back, never following a link.

/// One path of a tree, as a restore must reproduce it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Desc {
    Dir {
        mode: u32,
    },
    File {
        content: Vec<u8>,
        mode: u32,
        mtime: i64,
        /// Hard-linked inside the tree: the first of the names sharing the file.
        linked_with: Option<PathBuf>,
    },
    Symlink(PathBuf),
}

/// `root`'s tree, relative paths to what they are.
fn describe(root: &Path) -> BTreeMap<PathBuf, Desc> {
    fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Desc>, inodes: &mut Inodes) {
        for child in std::fs::read_dir(root.join(rel)).unwrap() {
            let child = child.unwrap();
            let rel = rel.join(child.file_name());
            let meta = std::fs::symlink_metadata(child.path()).unwrap();
            let kind = meta.file_type();
            let desc = if kind.is_dir() {
                walk(root, &rel, out, inodes);
                Desc::Dir {
                    mode: meta.mode() & 0o7777,
                }
            } else if kind.is_symlink() {
                Desc::Symlink(std::fs::read_link(child.path()).unwrap())
            } else {
                inodes
                    .entry((meta.dev(), meta.ino()))
                    .or_default()
                    .push(rel.clone());
                Desc::File {
                    content: std::fs::read(child.path()).unwrap(),
                    mode: meta.mode() & 0o7777,
                    mtime: meta.mtime(),
                    linked_with: None,
                }
            };
            out.insert(rel, desc);
        }
    }
    type Inodes = BTreeMap<(u64, u64), Vec<PathBuf>>;
    let mut out = BTreeMap::new();
    let mut inodes = Inodes::new();
    walk(root, Path::new(""), &mut out, &mut inodes);
    for names in inodes.values().filter(|names| names.len() > 1) {
        let first = names.iter().min().unwrap().clone();
        for name in names {
            if let Some(Desc::File { linked_with, .. }) = out.get_mut(name) {
                *linked_with = Some(first.clone());
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Random trees.

#[derive(Debug, Clone)]
enum Op {
    Dir { mode: u32 },
    File { content: Vec<u8>, mode: u32 },
    Symlink { target: String },
    HardLink { to: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        // The owner keeps rwx on directories (so the test can clean up) and rw on files;
        // the rest, exec bits included, is random.
        (0u32..0o100).prop_map(|m| Op::Dir { mode: 0o700 | m }),
        (proptest::collection::vec(any::<u8>(), 0..300), 0u32..0o200).prop_map(|(content, m)| {
            Op::File {
                content,
                mode: 0o600 | m,
            }
        }),
        prop_oneof![
            Just("/usr/bin".to_owned()),
            Just("/tmp/ccfleet-outside".to_owned()),
            Just("../../../../etc".to_owned()),
            Just("..".to_owned()),
            Just("../claude".to_owned()),
            "(\\.\\./)?[a-c]{1,2}(/[a-c]{1,2})?",
        ]
        .prop_map(|target| Op::Symlink { target }),
        any::<usize>().prop_map(|to| Op::HardLink { to }),
    ]
}

/// (parent directory chooser, name, what to make there).
fn tree() -> impl Strategy<Value = Vec<(usize, String, Op)>> {
    proptest::collection::vec((any::<usize>(), "[a-d]{1,2}", op()), 0..30)
}

/// Makes the tree under `root` (always with `workspace/` and `claude/`).
fn build(root: &Path, ops: &[(usize, String, Op)]) {
    let mut dirs = vec![PathBuf::from(WORKSPACE), PathBuf::from(CLAUDE_STATE)];
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in &dirs {
        std::fs::create_dir(root.join(dir)).unwrap();
    }
    for (parent, name, op) in ops {
        let rel = dirs[parent % dirs.len()].join(name);
        let path = root.join(&rel);
        if std::fs::symlink_metadata(&path).is_ok() {
            continue;
        }
        match op {
            Op::Dir { mode } => {
                std::fs::create_dir(&path).unwrap();
                std::fs::set_permissions(&path, Permissions::from_mode(*mode)).unwrap();
                dirs.push(rel);
            }
            Op::File { content, mode } => {
                std::fs::write(&path, content).unwrap();
                std::fs::set_permissions(&path, Permissions::from_mode(*mode)).unwrap();
                files.push(rel);
            }
            Op::Symlink { target } => std::os::unix::fs::symlink(target, &path).unwrap(),
            Op::HardLink { to } => {
                if !files.is_empty() {
                    std::fs::hard_link(root.join(&files[to % files.len()]), &path).unwrap();
                }
            }
        }
    }
}

/// `tar` (a plain tar of `workspace/` and `claude/`) as Docker returns the archive of
/// `/session`: every name, hard links' targets too, under `session/`.
fn as_docker_download(tar: &[u8]) -> Vec<u8> {
    let mut out = tar::Builder::new(Vec::new());
    let mut root = tar::Header::new_gnu();
    root.set_entry_type(EntryType::Directory);
    root.set_mode(0o755);
    root.set_size(0);
    out.append_data(&mut root, "session", std::io::empty())
        .unwrap();
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = Path::new("session").join(entry.path().unwrap());
        let mut header = entry.header().clone();
        let kind = header.entry_type();
        let link = entry.link_name().unwrap().map(|l| l.into_owned());
        match (kind, link) {
            (EntryType::Link, Some(target)) => out
                .append_link(&mut header, &path, Path::new("session").join(target))
                .unwrap(),
            (EntryType::Symlink, Some(target)) => {
                out.append_link(&mut header, &path, target).unwrap()
            }
            _ => out.append_data(&mut header, &path, &mut entry).unwrap(),
        }
    }
    out.into_inner().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_checkpoint_restores_the_tree_it_was_taken_of(ops in tree()) {
        let src = tempfile::tempdir().unwrap();
        build(src.path(), &ops);
        let checkpoint = checkpoint_dir(src.path()).unwrap();
        let dst = tempfile::tempdir().unwrap();
        let root = dst.path().join("root");
        restore_dir(&checkpoint, &root).unwrap();
        prop_assert_eq!(describe(src.path()), describe(&root));
    }

    #[test]
    fn the_docker_round_trip_keeps_the_tree_too(ops in tree()) {
        let src = tempfile::tempdir().unwrap();
        build(src.path(), &ops);
        let checkpoint = checkpoint_dir(src.path()).unwrap();
        let mount = Path::new("/session");
        let upload = checkpoint_to_owned_tar(&checkpoint, 1000, 1000, mount).unwrap();
        let again =
            session_tar_to_checkpoint(as_docker_download(&upload).as_slice(), "session", Vec::new())
                .unwrap();
        let dst = tempfile::tempdir().unwrap();
        restore_dir(&again, dst.path()).unwrap();
        // Docker gets a relative link leaving the volume as the absolute path it names.
        let expected: BTreeMap<PathBuf, Desc> = describe(src.path())
            .into_iter()
            .map(|(path, desc)| match desc {
                Desc::Symlink(target) => {
                    let target = extractable_target(mount, &path, &target);
                    (path, Desc::Symlink(target))
                }
                other => (path, other),
            })
            .collect();
        prop_assert_eq!(expected, describe(dst.path()));
    }

    /// Streamed through files, as the worker takes and restores checkpoints: a limit the
    /// tree fits in changes nothing; one it exceeds refuses it, naming its exact size
    /// (each file once, however many names it has).
    #[test]
    fn a_checkpoint_through_files_respects_the_limit(ops in tree(), under in 1u64..200) {
        let src = tempfile::tempdir().unwrap();
        build(src.path(), &ops);
        let mut inodes = std::collections::HashSet::new();
        let size: u64 = describe(src.path())
            .keys()
            .filter_map(|path| std::fs::symlink_metadata(src.path().join(path)).ok())
            .filter(|meta| meta.is_file() && inodes.insert(meta.ino()))
            .map(|meta| meta.len())
            .sum();
        prop_assert_eq!(tree_size(src.path()).unwrap(), size);
        let file = tempfile::NamedTempFile::new().unwrap();
        write_checkpoint(src.path(), file.reopen().unwrap(), size.max(1)).unwrap();
        let dst = tempfile::tempdir().unwrap();
        restore_dir(file.path(), dst.path()).unwrap();
        prop_assert_eq!(describe(src.path()), describe(dst.path()));
        if size > under {
            let refused = write_checkpoint(src.path(), Vec::new(), size - under);
            prop_assert!(
                matches!(refused, Err(Error::TooLarge { size: s, limit }) if s == size && limit == size - under),
                "{:?}", refused
            );
        }
    }
}

#[test]
fn files_above_the_hashing_limit_are_fingerprinted_not_read() {
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("small.txt"), "small").unwrap();
    std::fs::write(src.path().join("big.bin"), vec![7u8; 4096]).unwrap();
    let manifest = manifest_dir(src.path(), 1024).unwrap();
    assert_eq!(manifest.files["small.txt"].size, 5);
    assert_eq!(manifest.files["small.txt"].sha256.len(), 64);
    assert_eq!(manifest.files["big.bin"].size, 4096);
    assert!(manifest.files["big.bin"].sha256.starts_with("unhashed:"));
    // Rewritten (another modification time): a change, without reading it.
    let file = File::options()
        .write(true)
        .open(src.path().join("big.bin"))
        .unwrap();
    file.set_modified(UNIX_EPOCH + Duration::from_secs(1))
        .unwrap();
    let again = manifest_dir(src.path(), 1024).unwrap();
    assert_eq!(
        again.changes_since(&manifest),
        vec![Change {
            path: "big.bin".into(),
            kind: ChangeKind::Modified
        }]
    );
    // Without a limit everything is hashed, as before.
    let hashed = manifest_dir(src.path(), 0).unwrap();
    assert_eq!(hashed.files["big.bin"].sha256.len(), 64);
}

#[test]
fn a_file_is_found_in_a_single_file_tar_without_reading_it() {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(EntryType::Regular);
    header.set_size(11);
    header.set_mode(0o644);
    tar.append_data(&mut header, "notes.txt", b"hello there".as_slice())
        .unwrap();
    let bytes = tar.into_inner().unwrap();
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&bytes).unwrap();
    use std::io::Seek;
    file.rewind().unwrap();
    let (mut content, size) = single_file_in_tar(file).unwrap().expect("a file");
    let mut read = String::new();
    (&mut content).take(size).read_to_string(&mut read).unwrap();
    assert_eq!((size, read.as_str()), (11, "hello there"));
}

#[test]
fn a_venv_like_workspace_round_trips() {
    let src = tempfile::tempdir().unwrap();
    let ws = src.path().join(WORKSPACE);
    std::fs::create_dir_all(ws.join(".venv/bin")).unwrap();
    std::fs::create_dir_all(ws.join("empty/inner")).unwrap();
    std::fs::create_dir_all(src.path().join(CLAUDE_STATE)).unwrap();
    std::os::unix::fs::symlink("/usr/bin/python3", ws.join(".venv/bin/python")).unwrap();
    std::os::unix::fs::symlink("python", ws.join(".venv/bin/python3")).unwrap();
    std::os::unix::fs::symlink("../../../outside", ws.join(".venv/up")).unwrap();
    std::fs::write(ws.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(ws.join("run.sh"), Permissions::from_mode(0o755)).unwrap();
    std::fs::hard_link(ws.join("run.sh"), ws.join("run-again.sh")).unwrap();
    let long = "d".repeat(120);
    std::fs::create_dir_all(ws.join(&long)).unwrap();
    std::fs::write(ws.join(&long).join("f"), "deep").unwrap();
    std::os::unix::fs::symlink(format!("/{}", "t".repeat(150)), ws.join("long-target")).unwrap();

    let checkpoint = checkpoint_dir(src.path()).unwrap();
    let dst = tempfile::tempdir().unwrap();
    restore_dir(&checkpoint, dst.path()).unwrap();
    assert_eq!(describe(src.path()), describe(dst.path()));
    let restored = dst.path().join(WORKSPACE);
    assert_eq!(
        std::fs::read_link(restored.join(".venv/bin/python")).unwrap(),
        Path::new("/usr/bin/python3")
    );
    let a = std::fs::metadata(restored.join("run.sh")).unwrap();
    let b = std::fs::metadata(restored.join("run-again.sh")).unwrap();
    assert_eq!((a.ino(), a.nlink(), a.mode() & 0o777), (b.ino(), 2, 0o755));
    assert!(restored.join("empty/inner").is_dir());
}

#[test]
fn the_owned_tar_is_owned_and_escaping_relative_links_become_absolute() {
    let src = tempfile::tempdir().unwrap();
    let ws = src.path().join(WORKSPACE);
    std::fs::create_dir_all(ws.join("sub")).unwrap();
    std::os::unix::fs::symlink("../../../etc", ws.join("sub/up")).unwrap();
    std::os::unix::fs::symlink("../../claude", ws.join("sub/state")).unwrap();
    let checkpoint = checkpoint_dir(src.path()).unwrap();
    let owned = checkpoint_to_owned_tar(&checkpoint, 1000, 1001, Path::new("/session")).unwrap();
    let mut links = BTreeMap::new();
    let mut archive = tar::Archive::new(owned.as_slice());
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        assert_eq!(entry.header().uid().unwrap(), 1000);
        assert_eq!(entry.header().gid().unwrap(), 1001);
        if let Some(target) = entry.link_name().unwrap() {
            links.insert(entry.path().unwrap().into_owned(), target.into_owned());
        }
    }
    assert_eq!(
        links,
        BTreeMap::from([
            // Leaves /session: Docker would refuse it as it is.
            (PathBuf::from("workspace/sub/up"), PathBuf::from("/etc")),
            // Stays inside: kept as written.
            (
                PathBuf::from("workspace/sub/state"),
                PathBuf::from("../../claude")
            ),
        ])
    );
}

// ---------------------------------------------------------------------------------------
// Hostile archives.

/// One raw entry: the name and link name go into the header as bytes, unchecked (the
/// builder's own setters refuse `..` and absolute names).
struct Raw<'a> {
    name: &'a str,
    kind: EntryType,
    link: Option<&'a str>,
    data: &'a [u8],
}

fn file<'a>(name: &'a str, data: &'a [u8]) -> Raw<'a> {
    Raw {
        name,
        kind: EntryType::Regular,
        link: None,
        data,
    }
}

fn dir(name: &str) -> Raw<'_> {
    Raw {
        name,
        kind: EntryType::Directory,
        link: None,
        data: b"",
    }
}

fn symlink<'a>(name: &'a str, target: &'a str) -> Raw<'a> {
    Raw {
        name,
        kind: EntryType::Symlink,
        link: Some(target),
        data: b"",
    }
}

fn hard_link<'a>(name: &'a str, target: &'a str) -> Raw<'a> {
    Raw {
        name,
        kind: EntryType::Link,
        link: Some(target),
        data: b"",
    }
}

fn gzip_tar(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for raw in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(raw.kind);
        header.set_mode(0o644);
        header.set_size(raw.data.len() as u64);
        let old = header.as_old_mut();
        old.name[..raw.name.len()].copy_from_slice(raw.name.as_bytes());
        if let Some(link) = raw.link {
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_cksum();
        builder.append(&header, raw.data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// A destination inside a scratch directory, next to a sentinel directory that must stay
/// as it is.
struct Scene {
    base: tempfile::TempDir,
}

impl Scene {
    fn new() -> Self {
        let base = tempfile::tempdir().unwrap();
        std::fs::create_dir(base.path().join("sentinel")).unwrap();
        std::fs::write(base.path().join("sentinel/keep"), "original").unwrap();
        Scene { base }
    }

    fn root(&self) -> PathBuf {
        self.base.path().join("root")
    }

    fn sentinel(&self) -> String {
        self.base
            .path()
            .join("sentinel")
            .to_string_lossy()
            .into_owned()
    }

    fn sentinel_untouched(&self) {
        let sentinel = self.base.path().join("sentinel");
        let names: Vec<_> = std::fs::read_dir(&sentinel)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("keep")]);
        assert_eq!(
            std::fs::read_to_string(sentinel.join("keep")).unwrap(),
            "original"
        );
        let base: Vec<_> = std::fs::read_dir(self.base.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            !base.iter().any(|n| n != "sentinel" && n != "root"),
            "nothing new beside the destination: {base:?}"
        );
    }

    /// Restoring `archive` is refused, and nothing at all was written.
    fn refused(&self, entries: &[Raw<'_>], why: &str) {
        let archive = gzip_tar(entries);
        let err = restore_dir(&archive, &self.root()).expect_err(why);
        assert!(err.is_unrestorable(), "{why}: {err:?}");
        assert!(!self.root().exists(), "{why}: nothing written");
        let converted = checkpoint_to_owned_tar(&archive, 1, 1, Path::new("/session"));
        assert!(
            converted.is_err_and(|e| e.is_unrestorable()),
            "{why}: not uploaded to Docker either"
        );
        self.sentinel_untouched();
    }
}

#[test]
fn hostile_archives_are_refused_without_writing_anything() {
    let scene = Scene::new();
    let abs = scene.sentinel();
    let evil_abs = format!("{abs}/evil");
    scene.refused(
        &[
            dir("workspace"),
            symlink("workspace/link", &abs),
            file("workspace/link/evil", b"x"),
        ],
        "a file written through an absolute symlink",
    );
    scene.refused(
        &[
            dir("workspace"),
            symlink("workspace/link", "../../sentinel"),
            dir("workspace/link/sub"),
        ],
        "a directory made through a relative symlink",
    );
    scene.refused(
        &[
            dir("workspace"),
            file("workspace/link/evil", b"x"),
            symlink("workspace/link", &abs),
        ],
        "a symlink declared after the entries below it",
    );
    scene.refused(
        &[
            dir("workspace"),
            symlink("workspace/link", &abs),
            dir("workspace/link"),
            file("workspace/link/evil", b"x"),
        ],
        "a symlink replaced by a directory of the same name",
    );
    scene.refused(
        &[
            dir("workspace"),
            file("workspace/a", b"x"),
            file("workspace/a", b"y"),
        ],
        "a file twice",
    );
    scene.refused(
        &[
            dir("workspace"),
            file("workspace/f", b"x"),
            file("workspace/f/g", b"y"),
        ],
        "a file inside a file",
    );
    scene.refused(
        &[symlink("workspace", &abs), file("workspace/evil", b"x")],
        "workspace/ itself a symlink",
    );
    scene.refused(
        &[
            dir("workspace"),
            hard_link("workspace/h", "workspace/../../sentinel/keep"),
        ],
        "a hard link out with `..`",
    );
    let keep = format!("{abs}/keep");
    scene.refused(
        &[dir("workspace"), hard_link("workspace/h", &keep)],
        "a hard link to an absolute path",
    );
    scene.refused(
        &[dir("workspace"), hard_link("workspace/h", "home/x")],
        "a hard link outside workspace/ and claude/",
    );
    scene.refused(
        &[
            dir("workspace"),
            symlink("workspace/s", &keep),
            hard_link("workspace/h", "workspace/s"),
        ],
        "a hard link to a symlink",
    );
    scene.refused(
        &[
            dir("workspace"),
            hard_link("workspace/h", "workspace/later"),
            file("workspace/later", b"x"),
        ],
        "a hard link to a file that comes later",
    );
    scene.refused(
        &[
            dir("workspace"),
            file("workspace/../../sentinel/evil", b"x"),
        ],
        "a path with `..`",
    );
    scene.refused(&[file(&evil_abs, b"x")], "an absolute path");
    scene.refused(
        &[file("etc/passwd.x", b"x")],
        "outside workspace/ and claude/",
    );
    scene.refused(
        &[
            dir("workspace"),
            file("workspace/ok.txt", b"fine"),
            dir("claude"),
            file("/etc/ccfleet-evil", b"x"),
        ],
        "a bad entry after good ones",
    );
}

#[test]
fn damaged_archives_are_refused_without_writing_anything() {
    let scene = Scene::new();
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("workspace")).unwrap();
    std::fs::write(
        src.path().join("workspace/data"),
        "some content ".repeat(2000),
    )
    .unwrap();
    let good = checkpoint_dir(src.path()).unwrap();
    let mut truncated = good.clone();
    truncated.truncate(good.len() / 2);
    let mut bad_checksum = good.clone();
    let crc = bad_checksum.len() - 8;
    bad_checksum[crc] ^= 0xff;
    for (archive, why) in [
        (b"not a gzip stream at all".to_vec(), "garbage"),
        (truncated, "truncated"),
        (bad_checksum, "a wrong gzip checksum"),
    ] {
        let err = restore_dir(&archive, &scene.root()).expect_err(why);
        assert!(matches!(err, Error::Corrupt(_)), "{why}: {err:?}");
        assert!(!scene.root().exists(), "{why}: nothing written");
    }
    scene.sentinel_untouched();
    restore_dir(&good, &scene.root()).unwrap();
}

#[test]
fn writing_never_follows_a_link_already_in_the_destination() {
    let scene = Scene::new();
    let root = scene.root();
    std::fs::create_dir_all(root.join(WORKSPACE)).unwrap();
    std::os::unix::fs::symlink(scene.sentinel(), root.join("workspace/link")).unwrap();
    std::os::unix::fs::symlink(
        format!("{}/keep", scene.sentinel()),
        root.join("workspace/notes.txt"),
    )
    .unwrap();
    // Fine by itself, but `workspace/link` is a symlink here.
    let archive = gzip_tar(&[dir("workspace"), file("workspace/link/evil", b"x")]);
    let err = restore_dir(&archive, &root).unwrap_err();
    assert!(matches!(err, Error::BadEntry { .. }), "{err:?}");
    // An attached file named like a link replaces the link, not what it points at.
    import_dir(&root, &[("notes.txt".into(), b"attached".to_vec())]).unwrap();
    let notes = root.join("workspace/notes.txt");
    assert!(std::fs::symlink_metadata(&notes).unwrap().is_file());
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "attached");
    assert!(import_dir(&root, &[("link/evil".into(), b"x".to_vec())]).is_err());
    scene.sentinel_untouched();
}

#[test]
fn relative_paths() {
    assert!(relative_path("../x").is_err());
    assert!(relative_path("/etc/passwd").is_err());
    assert!(relative_path("").is_err());
    assert_eq!(relative_path("a/./b").unwrap(), PathBuf::from("a/b"));
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

#[test]
fn the_manifest_lists_regular_files_only() {
    let src = tempfile::tempdir().unwrap();
    let ws = src.path().join(WORKSPACE);
    std::fs::create_dir_all(ws.join("sub")).unwrap();
    std::fs::write(ws.join("sub/a.txt"), "a").unwrap();
    std::os::unix::fs::symlink("/usr/bin", ws.join("bin")).unwrap();
    let manifest = manifest_dir(&ws, 0).unwrap();
    assert_eq!(manifest.files.keys().collect::<Vec<_>>(), vec!["sub/a.txt"]);
}
