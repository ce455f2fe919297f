//! A zip archive written front to back, for streaming: each entry's local header goes out
//! before its data (sizes and CRC follow in a data descriptor), and the central directory
//! at the end. Sans-IO: every call returns the bytes to send next, and memory stays bounded
//! by the deflate window whatever the entries' sizes. Zip64 records are written only when
//! a size, an offset or the entry count needs them.

use std::io::Write;

use flate2::Compression;
use flate2::write::DeflateEncoder;

const LOCAL_HEADER: u32 = 0x0403_4b50;
const DATA_DESCRIPTOR: u32 = 0x0807_4b50;
const CENTRAL_HEADER: u32 = 0x0201_4b50;
const END_OF_CENTRAL_DIR: u32 = 0x0605_4b50;
const ZIP64_END_OF_CENTRAL_DIR: u32 = 0x0606_4b50;
const ZIP64_LOCATOR: u32 = 0x0706_4b50;
/// Bit 3: sizes and CRC in a data descriptor; bit 11: the name is UTF-8.
const FLAGS: u16 = 0x0008 | 0x0800;
const DEFLATE: u16 = 8;
/// 1980-01-01 00:00 in MS-DOS format: the archive does not claim file times it lacks.
const DOS_TIME: u16 = 0;
const DOS_DATE: u16 = (1 << 5) | 1;
const U32_MAX: u64 = 0xFFFF_FFFF;

struct Entry {
    name: String,
    offset: u64,
    crc: u32,
    compressed: u64,
    size: u64,
}

struct Current {
    entry: Entry,
    hasher: crc32fast::Hasher,
    encoder: DeflateEncoder<Vec<u8>>,
}

/// Builds the archive; see the module doc.
pub struct ZipStream {
    written: u64,
    entries: Vec<Entry>,
    current: Option<Current>,
}

impl Default for ZipStream {
    fn default() -> Self {
        Self::new()
    }
}

impl ZipStream {
    pub fn new() -> Self {
        Self {
            written: 0,
            entries: Vec::new(),
            current: None,
        }
    }

    /// Starts entry `name` (ending the one before, if any).
    pub fn start(&mut self, name: &str) -> Vec<u8> {
        let mut out = self.finish_entry();
        let mut header = Vec::with_capacity(30 + name.len());
        put32(&mut header, LOCAL_HEADER);
        put16(&mut header, 20);
        put16(&mut header, FLAGS);
        put16(&mut header, DEFLATE);
        put16(&mut header, DOS_TIME);
        put16(&mut header, DOS_DATE);
        put32(&mut header, 0); // CRC, sizes: in the data descriptor
        put32(&mut header, 0);
        put32(&mut header, 0);
        put16(&mut header, name_len(name));
        put16(&mut header, 0);
        header.extend_from_slice(name.as_bytes());
        self.current = Some(Current {
            entry: Entry {
                name: name.to_owned(),
                offset: self.written,
                crc: 0,
                compressed: 0,
                size: 0,
            },
            hasher: crc32fast::Hasher::new(),
            encoder: DeflateEncoder::new(Vec::new(), Compression::fast()),
        });
        out.extend_from_slice(&self.sent(header));
        out
    }

    /// Adds `data` to the current entry; returns the compressed bytes ready so far.
    pub fn write(&mut self, data: &[u8]) -> Vec<u8> {
        let Some(current) = self.current.as_mut() else {
            return Vec::new();
        };
        current.hasher.update(data);
        current.entry.size += data.len() as u64;
        current
            .encoder
            .write_all(data)
            .expect("writing into a Vec cannot fail");
        let out = std::mem::take(current.encoder.get_mut());
        current.entry.compressed += out.len() as u64;
        self.sent(out)
    }

    /// Ends the current entry: the rest of its data and its data descriptor.
    pub fn finish_entry(&mut self) -> Vec<u8> {
        let Some(mut current) = self.current.take() else {
            return Vec::new();
        };
        current
            .encoder
            .try_finish()
            .expect("writing into a Vec cannot fail");
        let mut out = std::mem::take(current.encoder.get_mut());
        let mut entry = current.entry;
        entry.compressed += out.len() as u64;
        entry.crc = current.hasher.finalize();
        put32(&mut out, DATA_DESCRIPTOR);
        put32(&mut out, entry.crc);
        if entry.compressed > U32_MAX || entry.size > U32_MAX {
            put64(&mut out, entry.compressed);
            put64(&mut out, entry.size);
        } else {
            put32(&mut out, entry.compressed as u32);
            put32(&mut out, entry.size as u32);
        }
        self.entries.push(entry);
        self.sent(out)
    }

    /// Ends the archive: the central directory and its end records.
    pub fn finish(&mut self) -> Vec<u8> {
        let ended = self.finish_entry();
        let start = self.written;
        let mut out = Vec::new();
        let mut directory = Vec::new();
        for entry in &self.entries {
            let mut extra = Vec::new();
            if entry.size > U32_MAX {
                put64(&mut extra, entry.size);
            }
            if entry.compressed > U32_MAX {
                put64(&mut extra, entry.compressed);
            }
            if entry.offset > U32_MAX {
                put64(&mut extra, entry.offset);
            }
            let zip64 = !extra.is_empty();
            let version = if zip64 { 45 } else { 20 };
            put32(&mut directory, CENTRAL_HEADER);
            put16(&mut directory, (3 << 8) | version); // made by: Unix
            put16(&mut directory, version);
            put16(&mut directory, FLAGS);
            put16(&mut directory, DEFLATE);
            put16(&mut directory, DOS_TIME);
            put16(&mut directory, DOS_DATE);
            put32(&mut directory, entry.crc);
            put32(&mut directory, entry.compressed.min(U32_MAX) as u32);
            put32(&mut directory, entry.size.min(U32_MAX) as u32);
            put16(&mut directory, name_len(&entry.name));
            put16(
                &mut directory,
                if zip64 { 4 + extra.len() as u16 } else { 0 },
            );
            put16(&mut directory, 0); // comment
            put16(&mut directory, 0); // disk
            put16(&mut directory, 0); // internal attributes
            put32(&mut directory, 0o100_644 << 16); // a regular file, rw-r--r--
            put32(&mut directory, entry.offset.min(U32_MAX) as u32);
            directory.extend_from_slice(entry.name.as_bytes());
            if zip64 {
                put16(&mut directory, 0x0001);
                put16(&mut directory, extra.len() as u16);
                directory.extend_from_slice(&extra);
            }
        }
        let size = directory.len() as u64;
        out.extend_from_slice(&directory);
        let count = self.entries.len() as u64;
        if count >= 0xFFFF || start > U32_MAX || size > U32_MAX {
            let record = start + size;
            put32(&mut out, ZIP64_END_OF_CENTRAL_DIR);
            put64(&mut out, 44);
            put16(&mut out, (3 << 8) | 45);
            put16(&mut out, 45);
            put32(&mut out, 0);
            put32(&mut out, 0);
            put64(&mut out, count);
            put64(&mut out, count);
            put64(&mut out, size);
            put64(&mut out, start);
            put32(&mut out, ZIP64_LOCATOR);
            put32(&mut out, 0);
            put64(&mut out, record);
            put32(&mut out, 1);
        }
        put32(&mut out, END_OF_CENTRAL_DIR);
        put16(&mut out, 0);
        put16(&mut out, 0);
        put16(&mut out, count.min(0xFFFF) as u16);
        put16(&mut out, count.min(0xFFFF) as u16);
        put32(&mut out, size.min(U32_MAX) as u32);
        put32(&mut out, start.min(U32_MAX) as u32);
        put16(&mut out, 0);
        let mut all = ended;
        all.extend_from_slice(&self.sent(out));
        all
    }

    fn sent(&mut self, out: Vec<u8>) -> Vec<u8> {
        self.written += out.len() as u64;
        out
    }
}

/// Names longer than a zip field holds are cut (object keys are far shorter).
fn name_len(name: &str) -> u16 {
    u16::try_from(name.len()).unwrap_or(u16::MAX)
}

fn put16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::ZipStream;
    use proptest::prelude::*;
    use std::io::Read;

    fn archive(files: &[(String, Vec<u8>)], chunk: usize) -> Vec<u8> {
        let mut zip = ZipStream::new();
        let mut out = Vec::new();
        for (name, data) in files {
            out.extend(zip.start(name));
            for piece in data.chunks(chunk.max(1)) {
                out.extend(zip.write(piece));
            }
        }
        out.extend(zip.finish());
        out
    }

    proptest! {
        #[test]
        fn the_zip_crate_reads_back_every_file(
            files in proptest::collection::btree_map("[a-z]{1,8}(/[a-zé]{1,8}){0,2}", proptest::collection::vec(any::<u8>(), 0..5000), 0..6),
            chunk in 1usize..3000,
        ) {
            let files: Vec<(String, Vec<u8>)> = files.into_iter().collect();
            let bytes = archive(&files, chunk);
            let mut reader = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
            prop_assert_eq!(reader.len(), files.len());
            for (name, data) in &files {
                let mut file = reader.by_name(name).unwrap();
                let mut back = Vec::new();
                file.read_to_end(&mut back).unwrap();
                prop_assert_eq!(&back, data);
            }
        }
    }
}
