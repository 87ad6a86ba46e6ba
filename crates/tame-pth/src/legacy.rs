//! The legacy (pre-1.6, non-zip) format: five pickles followed by raw storage data.
//!
//! Layout: magic number, protocol version (1001), sys-info dict, the object,
//! the list of storage keys; then for each key an `i64` element count and the
//! storage's little-endian elements.

use std::collections::HashMap;

use crate::error::{short, ErrorKind};
use crate::pickle::{self, Value};
use crate::tensor::{StorageKind, StorageRef};

/// `0x1950a86a20f9469cfc6c` as little-endian two's complement bytes.
const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const PROTOCOL_VERSION: i64 = 1001;

/// The unpickled object and each storage's raw bytes.
pub(crate) struct Legacy<'a> {
    pub root: Value,
    pub storages: HashMap<String, &'a [u8]>,
}

pub(crate) fn parse(data: &[u8]) -> Result<Legacy<'_>, ErrorKind> {
    let mut pos = 0;
    let magic = pickle::load(data, &mut pos)?.value;
    if !matches!(&magic, Value::BigInt(b) if **b == MAGIC) {
        return Err(ErrorKind::BadMagic(format!(
            "legacy magic number expected, found {}",
            magic.describe()
        )));
    }
    let protocol = pickle::load(data, &mut pos)?.value;
    if protocol.as_int() != Some(PROTOCOL_VERSION) {
        return Err(ErrorKind::Unsupported(format!(
            "legacy protocol {}",
            protocol.describe()
        )));
    }
    check_sys_info(&pickle::load(data, &mut pos)?.value)?;
    let object = pickle::load(data, &mut pos)?;
    let kinds = storage_kinds(&object.persistent_ids)?;
    let keys = pickle::load(data, &mut pos)?.value;
    let keys = match &keys {
        Value::List(n) => n.items(),
        other => {
            return Err(ErrorKind::Malformed(format!(
                "storage key list expected, found {}",
                other.describe()
            )))
        }
    };
    let mut storages = HashMap::new();
    for key in keys {
        let key = key
            .as_str()
            .ok_or_else(|| ErrorKind::Malformed("non-string storage key".into()))?;
        let (kind, numel) = kinds.get(key).copied().ok_or_else(|| {
            ErrorKind::Malformed(format!(
                "storage {} has data but no tensor uses it",
                short(key)
            ))
        })?;
        let bytes = storage_data(data, &mut pos, kind.elem_size())?;
        if bytes.len() / kind.elem_size() != numel {
            return Err(ErrorKind::Malformed(format!(
                "storage {} holds {} elements, its id says {numel}",
                short(key),
                bytes.len() / kind.elem_size()
            )));
        }
        storages.insert(key.to_string(), bytes);
    }
    Ok(Legacy {
        root: object.value,
        storages,
    })
}

/// Refuses big-endian files: their data would need byte swapping.
fn check_sys_info(info: &Value) -> Result<(), ErrorKind> {
    let pairs = info
        .dict_pairs()
        .ok_or_else(|| ErrorKind::Malformed("sys-info dict expected".into()))?;
    for (k, v) in pairs {
        if k.as_str() == Some("little_endian") && matches!(v, Value::Bool(false)) {
            return Err(ErrorKind::Unsupported("big-endian data".into()));
        }
    }
    Ok(())
}

/// Element type and count of every storage the object refers to.
fn storage_kinds(pids: &[Value]) -> Result<HashMap<String, (StorageKind, usize)>, ErrorKind> {
    let mut kinds = HashMap::new();
    for pid in pids {
        let storage = StorageRef::from_pid(pid)?;
        let entry = (storage.kind, storage.numel);
        if *kinds.entry(storage.key.clone()).or_insert(entry) != entry {
            return Err(ErrorKind::Malformed(format!(
                "storage {} is declared twice differently",
                short(&storage.key)
            )));
        }
    }
    Ok(kinds)
}

/// One storage's bytes: an `i64` element count, then the elements.
fn storage_data<'a>(data: &'a [u8], pos: &mut usize, elem: usize) -> Result<&'a [u8], ErrorKind> {
    let truncated = || ErrorKind::Truncated("storage data");
    let count = data
        .get(*pos..)
        .and_then(<[u8]>::first_chunk::<8>)
        .ok_or_else(truncated)?;
    let count = i64::from_le_bytes(*count);
    let n = usize::try_from(count)
        .map_err(|_| ErrorKind::Malformed(format!("negative storage size {count}")))?;
    let rest = &data[*pos + 8..];
    // The count is untrusted: compare it with what is left before multiplying.
    if n > rest.len() / elem {
        return Err(truncated());
    }
    let len = n * elem;
    *pos += 8 + len;
    Ok(&rest[..len])
}
