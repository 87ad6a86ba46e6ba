//! Small crafted files that ask for huge amounts of memory or time: each must end in one
//! clear error, quickly and without allocating what it asks for.
//!
//! The files are built byte by byte here: pickles opcode by opcode, zip archives header by
//! header, deflate bombs by repeating one compressed mebibyte.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tame_pth::{read_checkpoint, read_tensors, ErrorKind, PthError};

/// A pickle written opcode by opcode (protocol 2).
struct Pickle(Vec<u8>);

impl Pickle {
    fn new() -> Self {
        Self(vec![0x80, 2])
    }

    fn op(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }

    fn str(&mut self, s: &str) -> &mut Self {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.op(s.as_bytes())
    }

    fn int(&mut self, i: usize) -> &mut Self {
        self.0.push(b'J');
        self.op(&i32::try_from(i).unwrap().to_le_bytes())
    }

    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.op(format!("c{module}\n{name}\n").as_bytes())
    }

    fn put(&mut self, id: u32) -> &mut Self {
        self.0.push(b'r');
        self.op(&id.to_le_bytes())
    }

    fn get(&mut self, id: u32) -> &mut Self {
        self.0.push(b'j');
        self.op(&id.to_le_bytes())
    }

    fn ints(&mut self, values: &[usize]) -> &mut Self {
        self.op(b"(");
        for &v in values {
            self.int(v);
        }
        self.op(b"t")
    }

    /// `_rebuild_tensor_v2` of float storage `key` holding `numel` elements.
    fn tensor(&mut self, key: &str, numel: usize, shape: &[usize], stride: &[usize]) -> &mut Self {
        self.global("torch._utils", "_rebuild_tensor_v2").op(b"(");
        self.op(b"(")
            .str("storage")
            .global("torch", "FloatStorage")
            .str(key)
            .str("cpu")
            .int(numel)
            .op(b"tQ");
        self.int(0).ints(shape).ints(stride).op(b"\x89");
        self.global("collections", "OrderedDict").op(b")R");
        self.op(b"tR")
    }

    fn stop(&mut self) -> Vec<u8> {
        self.op(b".");
        std::mem::take(&mut self.0)
    }
}

/// The pickle of `{'w': tensor}` with `tensor` one float tensor of storage `0`.
fn one_tensor(numel: usize, shape: &[usize], stride: &[usize]) -> Vec<u8> {
    Pickle::new()
        .op(b"}")
        .str("w")
        .tensor("0", numel, shape, stride)
        .op(b"s")
        .stop()
}

/// One zip entry: its name, method (0 stored, 8 deflated), bytes as stored, and the
/// uncompressed size and CRC its headers declare.
struct Entry {
    name: String,
    method: u16,
    data: Vec<u8>,
    size: u32,
    crc: u32,
}

impl Entry {
    fn stored(name: &str, data: &[u8]) -> Self {
        Self {
            name: name.into(),
            method: 0,
            size: data.len() as u32,
            crc: crc32(data),
            data: data.to_vec(),
        }
    }

    /// `head` then `mib` MiB of `byte`, deflated; the CRC is not computed (nothing may
    /// read that far).
    fn bomb(name: &str, head: &[u8], byte: u8, mib: u32) -> Self {
        Self {
            name: name.into(),
            method: 8,
            data: deflate_bomb(head, byte, mib),
            size: head.len() as u32 + (mib << 20),
            crc: 0,
        }
    }
}

/// A zip archive as `torch.save` lays it out; `aliases` adds central-directory records
/// under other names that point at the local header of an existing entry.
fn zip(entries: &[Entry], aliases: &[(&str, usize)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    let mut offsets = Vec::new();
    let record = |central: &mut Vec<u8>, e: &Entry, name: &str, offset: usize| {
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&[20, 0, 20, 0, 0, 0]);
        central.extend_from_slice(&e.method.to_le_bytes());
        central.extend_from_slice(&[0, 0, 0x21, 0]);
        central.extend_from_slice(&e.crc.to_le_bytes());
        central.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
        central.extend_from_slice(&e.size.to_le_bytes());
        central.extend_from_slice(&(name.len() as u16).to_le_bytes());
        central.extend_from_slice(&[0; 12]);
        central.extend_from_slice(&(offset as u32).to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    };
    for e in entries {
        offsets.push(out.len());
        record(&mut central, e, &e.name, out.len());
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&[20, 0, 0, 0]);
        out.extend_from_slice(&e.method.to_le_bytes());
        out.extend_from_slice(&[0, 0, 0x21, 0]);
        out.extend_from_slice(&e.crc.to_le_bytes());
        out.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
        out.extend_from_slice(&e.size.to_le_bytes());
        out.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(e.name.as_bytes());
        out.extend_from_slice(&e.data);
    }
    for &(name, of) in aliases {
        record(&mut central, &entries[of], name, offsets[of]);
    }
    let count = (entries.len() + aliases.len()) as u16;
    let start = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&start.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out
}

/// A zip checkpoint: `pickle` as `archive/data.pkl`, then each storage as `archive/data/KEY`.
fn zip_checkpoint(pickle: &[u8], storages: &[(&str, &[u8])]) -> Vec<u8> {
    let mut entries = vec![Entry::stored("archive/data.pkl", pickle)];
    for (key, data) in storages {
        entries.push(Entry::stored(&format!("archive/data/{key}"), data));
    }
    zip(&entries, &[])
}

/// A legacy checkpoint: magic, protocol, sys info, `pickle`, the storage keys, the storages.
fn legacy_checkpoint(pickle: &[u8], storages: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.");
    out.extend_from_slice(b"\x80\x02M\xe9\x03.");
    out.extend(
        Pickle::new()
            .op(b"}")
            .str("little_endian")
            .op(b"\x88s")
            .stop(),
    );
    out.extend_from_slice(pickle);
    let mut keys = Pickle::new();
    keys.op(b"]");
    for (key, _) in storages {
        keys.str(key).op(b"a");
    }
    out.extend(keys.stop());
    for (_, data) in storages {
        out.extend_from_slice(&(data.len() as i64 / 4).to_le_bytes());
        out.extend_from_slice(data);
    }
    out
}

/// A raw deflate stream of `head` then `mib` MiB of `byte`, about a thousandth of that
/// size: after the first, every compressed MiB only refers back to copies of `byte`, so
/// it can repeat.
fn deflate_bomb(head: &[u8], byte: u8, mib: u32) -> Vec<u8> {
    let chunk = vec![byte; 1 << 20];
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(head).unwrap();
    z.write_all(&chunk).unwrap();
    z.flush().unwrap();
    let first = z.get_ref().len();
    z.write_all(&chunk).unwrap();
    z.flush().unwrap();
    let second = z.get_ref().len();
    let all = z.finish().unwrap();
    let mut out = all[..first].to_vec();
    for _ in 1..mib {
        out.extend_from_slice(&all[first..second]);
    }
    out.extend_from_slice(&all[second..]);
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// Writes `bytes` as `name` in `dir`.
fn file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The error of reading `path`, which must come within a few seconds, name the file and
/// contain `expected`.
fn refused(path: &Path, expected: &str) -> PthError {
    let started = Instant::now();
    let err = read_checkpoint(path).unwrap_err();
    let message = err.to_string();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "slow: {message}"
    );
    assert!(
        message.starts_with(&path.display().to_string()),
        "{message}"
    );
    assert!(message.contains(expected), "{message}");
    assert!(!message.contains('\n'), "one line: {message}");
    err
}

#[test]
fn deflate_bomb_as_data_pkl_is_refused_by_its_declared_size() {
    let dir = tempfile::tempdir().unwrap();
    // 1 GiB of NONE opcodes in 1 MB: decoded, each would be a value on the stack.
    let bytes = zip(&[Entry::bomb("archive/data.pkl", b"", b'N', 1024)], &[]);
    assert!(bytes.len() < 2 << 20);
    let path = file(dir.path(), "bomb.pth", &bytes);
    let err = refused(
        &path,
        "zip entry archive/data.pkl declares 1.0 GiB, more than the 64.0 MiB allowed",
    );
    assert!(matches!(err.kind(), ErrorKind::EntryTooLarge { .. }));
}

#[test]
fn deflate_bomb_as_storage_is_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    // One tensor of 2 GiB of zeros, deflated to about 2 MB.
    let numel = 1 << 29;
    let pickle = one_tensor(numel, &[numel], &[1]);
    let entries = [
        Entry::stored("archive/data.pkl", &pickle),
        Entry::bomb("archive/data/0", b"", 0, 2048),
    ];
    let path = file(dir.path(), "bomb.pth", &zip(&entries, &[]));
    let err = refused(
        &path,
        "tensor w brings the data read to 2.0 GiB, more than the",
    );
    assert!(matches!(err.kind(), ErrorKind::TooMuchData { .. }));
}

#[test]
fn zip_entries_sharing_their_data_cannot_multiply_it() {
    let dir = tempfile::tempdir().unwrap();
    // 600 storage names in the central directory, all pointing at one 1 MiB entry, each
    // read by two tensors (so each would be kept for the second): 600 MiB from 1 MiB.
    let numel = 1 << 18;
    let mut p = Pickle::new();
    p.op(b"}");
    for round in 0..2 {
        for i in 0..600 {
            p.str(&format!("w{round}.{i}"))
                .tensor(&i.to_string(), numel, &[1], &[1])
                .op(b"s");
        }
    }
    let data = vec![0u8; numel * 4];
    let entries = [
        Entry::stored("archive/data.pkl", &p.stop()),
        Entry::stored("archive/data/0", &data),
    ];
    let names: Vec<String> = (1..600).map(|i| format!("archive/data/{i}")).collect();
    let aliases: Vec<(&str, usize)> = names.iter().map(|n| (n.as_str(), 1)).collect();
    let path = file(dir.path(), "aliased.pth", &zip(&entries, &aliases));
    let err = refused(&path, "brings the data read to");
    assert!(matches!(err.kind(), ErrorKind::TooMuchData { .. }));
}

#[test]
fn tensors_sharing_one_storage_cannot_multiply_it() {
    let dir = tempfile::tempdir().unwrap();
    // 4096 names for one tensor of a 1 MiB storage, then one stride-0 tensor that repeats
    // its storage 64 times: 4 GiB and 64 MiB of tensors from a 1 MiB file.
    let numel = 1 << 18;
    let storage = vec![0u8; numel * 4];
    let mut shared = Pickle::new();
    shared
        .op(b"}")
        .str("w0")
        .tensor("0", numel, &[numel], &[1])
        .put(0)
        .op(b"s");
    for i in 1..4096 {
        shared.str(&format!("w{i}")).get(0).op(b"s");
    }
    let shared = shared.stop();
    let repeated = one_tensor(numel, &[64, numel], &[0, 1]);
    for (name, bytes) in [
        (
            "shared.zip.pth",
            zip_checkpoint(&shared, &[("0", &storage)]),
        ),
        (
            "shared.legacy.pth",
            legacy_checkpoint(&shared, &[("0", &storage)]),
        ),
    ] {
        let path = file(dir.path(), name, &bytes);
        let err = refused(&path, "brings the data read to");
        assert!(matches!(err.kind(), ErrorKind::TooMuchData { .. }), "{err}");
    }
    // 64 MiB from 1 MiB is within the allowance (stride-0 tensors exist).
    let path = file(
        dir.path(),
        "repeated.zip.pth",
        &zip_checkpoint(&repeated, &[("0", &storage)]),
    );
    assert_eq!(read_tensors(&path, None).unwrap()[0].1.dims(), [64, numel]);
}

#[test]
fn many_views_of_one_storage_read_it_once() {
    let dir = tempfile::tempdir().unwrap();
    // 20000 one-element views of a 16 MiB storage: read once, not once per view (320 GB).
    let numel = 1 << 22;
    let mut p = Pickle::new();
    p.op(b"}")
        .str("w0")
        .tensor("0", numel, &[1], &[1])
        .put(0)
        .op(b"s");
    for i in 1..20_000 {
        p.str(&format!("w{i}")).get(0).op(b"s");
    }
    let storage = vec![0u8; numel * 4];
    let path = file(
        dir.path(),
        "views.pth",
        &zip_checkpoint(&p.stop(), &[("0", &storage)]),
    );
    let started = Instant::now();
    assert_eq!(read_tensors(&path, None).unwrap().len(), 20_000);
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// A zip checkpoint whose data.pkl is a NONE then `mib` MiB of `op`, deflated.
fn flood(dir: &Path, op: u8, mib: u32) -> PathBuf {
    let bytes = zip(&[Entry::bomb("archive/data.pkl", b"N", op, mib)], &[]);
    file(dir, &format!("flood-{op:02x}.pth"), &bytes)
}

#[test]
fn pickle_memo_is_capped() {
    let dir = tempfile::tempdir().unwrap();
    // MEMOIZE, one byte per memo entry: 60 million entries from 60 KB.
    let path = flood(dir.path(), 0x94, 60);
    let err = refused(&path, "pickle memo exceeds 1048576 entries");
    assert!(matches!(err.kind(), ErrorKind::PickleLimit { .. }));
}

#[test]
fn pickle_stack_and_marks_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    // NONE, DUP and MARK: one value or mark per byte, 60 million from 60 KB.
    for op in [b'N', b'(', b'2'] {
        let path = flood(dir.path(), op, 60);
        let err = refused(&path, "pickle stack exceeds 1048576 entries");
        assert!(matches!(err.kind(), ErrorKind::PickleLimit { .. }));
    }
}

#[test]
fn shared_pickle_objects_count_at_each_use() {
    let dir = tempfile::tempdir().unwrap();
    // A dict of 50000 entries under 50000 keys: 2.5e9 entries to walk (the tensor search
    // looks into each), from 1 MB.
    let mut p = Pickle::new();
    p.op(b"}").str("k").put(1).op(b"0(");
    for _ in 0..50_000 {
        p.get(1).op(b"N");
    }
    p.op(b"u").put(0).op(b"0}(");
    for i in 0..50_000 {
        p.str(&format!("{i}")).get(0);
        if i % 1000 == 999 {
            p.op(b"u(");
        }
    }
    p.op(b"u");
    let path = file(dir.path(), "quadratic.pth", &zip_checkpoint(&p.stop(), &[]));
    let err = refused(&path, "pickle expands to more than 4194304 objects");
    assert!(matches!(err.kind(), ErrorKind::PickleLimit { .. }));

    // "Billion laughs": each list holds the previous one twice, 2^40 lists in all.
    let mut p = Pickle::new();
    p.op(b"]").put(0);
    for level in 0..40 {
        p.op(b"(")
            .get(level)
            .get(level)
            .op(b"l")
            .put(level + 1)
            .op(b"0");
    }
    p.op(b"}").str("x").get(40).op(b"s");
    let path = file(dir.path(), "laughs.pth", &zip_checkpoint(&p.stop(), &[]));
    refused(&path, "pickle expands to more than 4194304 objects");

    // One 1 MiB string as the value of 20000 keys: each is copied out as a scalar (20 GB).
    let big = "x".repeat(1 << 20);
    let mut p = Pickle::new();
    p.op(b"}").str("w").tensor("0", 1, &[1], &[1]).op(b"s");
    p.str("big").str(&big).put(0).op(b"s");
    for i in 0..20_000 {
        p.str(&format!("s{i}")).get(0).op(b"s");
    }
    let path = file(
        dir.path(),
        "strings.pth",
        &zip_checkpoint(&p.stop(), &[("0", &[0; 4])]),
    );
    refused(&path, "pickle expands to more than 4194304 objects");
}

#[test]
fn messages_stay_on_one_short_line() {
    let dir = tempfile::tempdir().unwrap();
    // 50000 keys, one of them 1 MiB long, and no tensor: the error lists the keys.
    let mut p = Pickle::new();
    p.op(b"}(").str(&"k".repeat(1 << 20)).op(b"N");
    for i in 0..50_000 {
        p.str(&format!("key{i}")).op(b"N");
        if i % 1000 == 999 {
            p.op(b"u(");
        }
    }
    p.op(b"u");
    let path = file(dir.path(), "keys.pth", &zip_checkpoint(&p.stop(), &[]));
    let err = refused(&path, "and 49981 more; entries holding tensors: none");
    assert!(err.to_string().len() < 1000, "{err}");
}

#[test]
fn tensor_rank_is_capped() {
    let dir = tempfile::tempdir().unwrap();
    // A strided tensor of 1M elements with 100000 extra dimensions of size 1: copying it
    // would step through every dimension for every element (1e11 steps).
    let numel = 1 << 20;
    let mut shape = vec![numel / 2];
    shape.extend(std::iter::repeat_n(1, 100_000));
    let mut stride = vec![2];
    stride.extend(std::iter::repeat_n(1, 100_000));
    let pickle = one_tensor(numel, &shape, &stride);
    let storage = vec![0u8; numel * 4];
    let path = file(
        dir.path(),
        "rank.pth",
        &zip_checkpoint(&pickle, &[("0", &storage)]),
    );
    refused(
        &path,
        "storage 0: tensor with 100001 dimensions, more than 64",
    );
}

#[cfg(unix)]
#[test]
fn only_regular_files_are_read() {
    for path in ["/dev/zero", "/"] {
        let path = Path::new(path);
        if path.exists() {
            let err = refused(path, "not a regular file");
            assert!(matches!(err.kind(), ErrorKind::NotAFile), "{err}");
        }
    }
}
