//! Fuzz harnesses for what the worker reads from outside: the Claude Code CLI's stream-json
//! stdout lines and checkpoint archives restored from the object store.
//!
//! Called by the cargo-fuzz targets in `fuzz/` and, on stable, by `loadtest`'s
//! `fuzz_corpus` test over the checked-in corpora. Not an API.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use serde_json::Value;
use tar::EntryType;

use crate::agent::protocol::{self, Incoming};
use crate::runtime::archive;

/// One stdout line as the driver reads it (lossy UTF-8, trimmed). A line that parses
/// parses the same once re-serialized (when it holds no float: serde_json's default float
/// parsing may move a last digit).
pub fn stream_json(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let text = text.trim();
    let shown = crate::agent::truncate(text, 300);
    assert!(text.starts_with(shown) && shown.chars().count() <= 300);
    let parsed = protocol::parse_line(text);
    let value = serde_json::from_str::<Value>(text);
    assert_eq!(parsed.is_ok(), value.is_ok());
    let (Ok(incoming), Ok(value)) = (parsed, value) else {
        return;
    };
    if let Incoming::Ignored { kind } = &incoming {
        assert!(!matches!(
            kind.as_str(),
            "result" | "control_request" | "control_response" | "control_cancel_request"
        ));
    }
    if !has_float(&value) {
        let again = protocol::parse_line(&value.to_string()).expect("re-serialized JSON parses");
        assert_eq!(again, incoming);
    }
}

fn has_float(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.is_f64(),
        Value::Array(items) => items.iter().any(has_float),
        Value::Object(map) => map.values().any(has_float),
        _ => false,
    }
}

/// The most a structured input may expand to (content of "bomb" entries), so one run
/// stays well under a second.
const MAX_EXPANDED: usize = 256 << 10;

/// A checkpoint archive to restore: `[mode] rest`. Mode 0: `rest` is the gzip checkpoint;
/// 1: `rest` is a tar, gzipped here; 2: `rest` describes entries (see [`entries_tar`]),
/// written with valid header checksums, so the fuzzer gets past them to paths, links and
/// sizes.
///
/// Properties: restoring into a scratch directory never writes outside the destination
/// (a sentinel beside it stays as it was, nothing new appears beside it); an archive
/// [`archive::check`] refuses writes nothing at all; a restored tree holds only
/// `workspace/` and `claude/`, and checkpointing it again gives an archive that restores
/// to the same files.
pub fn checkpoint_restore(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let archive = match mode % 3 {
        0 => rest.to_vec(),
        1 => gzip(rest),
        _ => gzip(&entries_tar(rest)),
    };
    let scene = tempfile::tempdir().expect("a scratch directory");
    let base = scene.path();
    std::fs::create_dir(base.join("sentinel")).expect("sentinel");
    std::fs::write(base.join("sentinel/keep"), "original").expect("sentinel file");
    let root = base.join("root");
    let checked = archive::check(archive.as_slice());
    let restored = archive::restore_dir(archive.as_slice(), &root);
    if checked.is_err() {
        assert!(restored.is_err(), "restored what check refused");
        assert!(!root.exists(), "a refused archive wrote something");
    }
    open_up(base);
    sentinel_untouched(base);
    if restored.is_err() {
        return;
    }
    let mut top: Vec<_> = std::fs::read_dir(&root)
        .expect("restored root")
        .map(|e| e.expect("entry").file_name())
        .collect();
    top.sort();
    assert_eq!(top, [archive::CLAUDE_STATE, archive::WORKSPACE]);
    let again = archive::checkpoint_dir(&root).expect("a restored tree checkpoints");
    let second = base.join("second");
    archive::restore_dir(again.as_slice(), &second).expect("its checkpoint restores");
    open_up(&second);
    // Files above 64 KiB (bombs) are compared by size and modification time: hashing them
    // four times would be most of a run.
    for tree in [archive::WORKSPACE, archive::CLAUDE_STATE] {
        assert_eq!(
            archive::manifest_dir(&root.join(tree), 64 << 10).expect("manifest"),
            archive::manifest_dir(&second.join(tree), 64 << 10).expect("manifest"),
            "a restored checkpoint restores the same files"
        );
    }
}

fn gzip(tar: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(tar).expect("in memory");
    encoder.finish().expect("in memory")
}

/// Makes every directory and file under `dir` readable and writable by its owner again (a
/// restore may set mode 0), never following a link, so the scratch directory can be read
/// and removed by a user other than root.
fn open_up(dir: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if meta.is_file() {
        let mode = meta.permissions().mode() | 0o600;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode));
    }
    if !meta.is_dir() {
        return;
    }
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            open_up(&entry.path());
        }
    }
}

fn sentinel_untouched(base: &Path) {
    let names: Vec<_> = std::fs::read_dir(base.join("sentinel"))
        .expect("sentinel")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["keep"], "written outside the destination");
    assert_eq!(
        std::fs::read_to_string(base.join("sentinel/keep")).expect("sentinel file"),
        "original"
    );
    for entry in std::fs::read_dir(base).expect("scratch") {
        let name = entry.expect("entry").file_name();
        assert!(
            name == "sentinel" || name == "root",
            "written beside the destination: {name:?}"
        );
    }
}

/// A tar built from a compact description, one entry after another:
/// `kind, name_len, name, link_len, link, size_len, size, data_len, data`. `kind`'s low
/// four bits pick the entry type, the next three set the set-id and sticky bits, the high
/// bit makes the content `data` repeated to `size` bytes (a decompression bomb in small); `size` is the header's size field (little-endian, up to
/// 8 bytes; without any, the data's length). Names and link names go into the header as
/// raw bytes (GNU long-name entries when they do not fit), unchecked, so `..`, absolute
/// paths and NULs reach the reader.
pub fn entries_tar(mut data: &[u8]) -> Vec<u8> {
    fn take<'a>(data: &mut &'a [u8]) -> &'a [u8] {
        let Some((&len, rest)) = data.split_first() else {
            return &[];
        };
        let len = usize::from(len).min(rest.len());
        let (taken, rest) = rest.split_at(len);
        *data = rest;
        taken
    }
    const KINDS: [EntryType; 10] = [
        EntryType::Regular,
        EntryType::Directory,
        EntryType::Symlink,
        EntryType::Link,
        EntryType::Regular,
        EntryType::Directory,
        EntryType::Fifo,
        EntryType::XGlobalHeader,
        EntryType::XHeader,
        EntryType::GNUSparse,
    ];
    let mut out = Vec::new();
    let mut expanded = 0usize;
    while let Some((&kind, rest)) = data.split_first() {
        data = rest;
        let name = take(&mut data);
        let link = take(&mut data);
        let size_bytes = take(&mut data);
        let content = take(&mut data);
        let mut size = [0u8; 8];
        let n = size_bytes.len().min(8);
        size[..n].copy_from_slice(&size_bytes[..n]);
        let declared = if n == 0 {
            content.len() as u64
        } else {
            u64::from_le_bytes(size)
        };
        let bomb = kind & 0x80 != 0;
        let body: Vec<u8> = if bomb {
            let len = usize::try_from(declared)
                .unwrap_or(usize::MAX)
                .min(MAX_EXPANDED.saturating_sub(expanded));
            expanded += len;
            if content.is_empty() {
                vec![0; len]
            } else {
                content.iter().copied().cycle().take(len).collect()
            }
        } else {
            content.to_vec()
        };
        if name.len() > 100 {
            long_name(&mut out, EntryType::GNULongName, name);
        }
        if link.len() > 100 {
            long_name(&mut out, EntryType::GNULongLink, link);
        }
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(KINDS[usize::from(kind & 0x0f) % KINDS.len()]);
        header.set_mode(0o644 | (u32::from(kind & 0x70) << 5));
        header.set_mtime(1_700_000_000);
        header.set_size(if bomb { body.len() as u64 } else { declared });
        let old = header.as_old_mut();
        let n = name.len().min(100);
        old.name[..n].copy_from_slice(&name[..n]);
        let n = link.len().min(100);
        old.linkname[..n].copy_from_slice(&link[..n]);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&body);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

fn long_name(out: &mut Vec<u8>, kind: EntryType, name: &[u8]) {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(name.len() as u64 + 1);
    header.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(name);
    out.push(0);
    out.resize(out.len().next_multiple_of(512), 0);
}
