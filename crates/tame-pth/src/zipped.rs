//! The zip format (PyTorch >= 1.6): `PREFIX/data.pkl` holds the object and
//! each storage is the raw little-endian entry `PREFIX/data/KEY`.

use std::io::{Cursor, Read};

use zip::result::ZipError;
use zip::{CompressionMethod, ZipArchive};

use crate::budget::DataBudget;
use crate::error::{short, ErrorKind};
use crate::pickle::{self, Value};

/// Deflate expands data at most about 1032-fold: a larger claimed size is corrupt.
const MAX_DEFLATE_RATIO: u64 = 1032;
/// `data.pkl` may declare this much, or the file's size if larger: it describes the
/// tensors (a few MB at most) while their data lies in other entries, and `torch.save`
/// stores it uncompressed.
const MAX_PICKLE_BYTES: u64 = 64 << 20;
/// `byteorder` holds "little" or "big".
const MAX_BYTEORDER_BYTES: u64 = 16;

/// The unpickled object and the archive its storages are read from.
pub(crate) struct Zipped<'a> {
    pub root: Value,
    archive: ZipArchive<Cursor<&'a [u8]>>,
    prefix: String,
}

/// How much of an entry to read.
enum Want {
    /// All of it, if it declares at most this many bytes.
    Whole(u64),
    /// Its first bytes.
    Prefix(u64),
}

pub(crate) fn parse(data: &[u8]) -> Result<Zipped<'_>, ErrorKind> {
    let mut archive = ZipArchive::new(Cursor::new(data))?;
    let prefix = find_prefix(&archive)?;
    let byteorder = format!("{prefix}byteorder");
    if archive.index_for_name(&byteorder).is_some()
        && read_entry(&mut archive, &byteorder, Want::Whole(MAX_BYTEORDER_BYTES))? != b"little"
    {
        return Err(ErrorKind::Unsupported("big-endian data".into()));
    }
    let pickle_limit = MAX_PICKLE_BYTES.max(data.len() as u64);
    let pickle_bytes = read_entry(
        &mut archive,
        &format!("{prefix}data.pkl"),
        Want::Whole(pickle_limit),
    )?;
    let root = pickle::load(&pickle_bytes, &mut 0)?.value;
    Ok(Zipped {
        root,
        archive,
        prefix,
    })
}

impl Zipped<'_> {
    /// The first `len` bytes of storage `key`, counted in `budget` before they are read.
    pub(crate) fn storage(
        &mut self,
        key: &str,
        len: usize,
        budget: &mut DataBudget,
    ) -> Result<Vec<u8>, ErrorKind> {
        budget.charge(|| format!("storage {}", short(key)), len as u64)?;
        let name = format!("{}data/{key}", self.prefix);
        read_entry(&mut self.archive, &name, Want::Prefix(len as u64))
    }
}

/// The folder holding `data.pkl`: `torch.save` names it after the file.
fn find_prefix(archive: &ZipArchive<Cursor<&[u8]>>) -> Result<String, ErrorKind> {
    for name in archive.file_names() {
        let name = name?;
        if name == "data.pkl" {
            return Ok(String::new());
        }
        if let Some(dir) = name.strip_suffix("/data.pkl") {
            if !dir.is_empty() && !dir.contains('/') {
                return Ok(format!("{dir}/"));
            }
        }
    }
    Err(ErrorKind::BadMagic("zip archive without data.pkl".into()))
}

/// Reads an entry, or its first bytes, never trusting the declared sizes for the
/// allocation: the buffer grows only with data actually decompressed.
fn read_entry(
    archive: &mut ZipArchive<Cursor<&[u8]>>,
    name: &str,
    want: Want,
) -> Result<Vec<u8>, ErrorKind> {
    let entry = match archive.by_name(name) {
        Err(ZipError::FileNotFound) => {
            return Err(ErrorKind::Malformed(format!(
                "missing zip entry {}",
                short(name)
            )))
        }
        entry => entry?,
    };
    let declared = entry.size();
    let want = match want {
        Want::Whole(limit) if declared > limit => {
            return Err(ErrorKind::EntryTooLarge {
                name: short(name).into_owned(),
                declared,
                limit,
            })
        }
        Want::Whole(_) => declared,
        Want::Prefix(len) => len,
    };
    let bound = match entry.compression() {
        CompressionMethod::Stored => entry.compressed_size(),
        _ => entry.compressed_size().saturating_mul(MAX_DEFLATE_RATIO),
    };
    if want > declared || want > bound {
        return Err(ErrorKind::Malformed(format!(
            "zip entry {} holds {declared} bytes, {want} needed",
            short(name)
        )));
    }
    let mut buf = Vec::new();
    entry.take(want).read_to_end(&mut buf)?;
    if buf.len() as u64 != want {
        return Err(ErrorKind::Truncated("zip entry"));
    }
    Ok(buf)
}
