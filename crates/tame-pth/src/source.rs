//! Format detection and access to storage bytes, whichever the format.

use std::borrow::Cow;

use crate::budget::DataBudget;
use crate::error::{short, ErrorKind};
use crate::legacy::{self, Legacy};
use crate::pickle::Value;
use crate::zipped::{self, Zipped};

/// An opened checkpoint: its unpickled object and its storages.
pub(crate) enum Source<'a> {
    Legacy(Legacy<'a>),
    Zip(Zipped<'a>),
}

impl<'a> Source<'a> {
    /// Picks the format from the leading bytes: a zip local header or a pickle `PROTO`.
    pub(crate) fn open(data: &'a [u8]) -> Result<Self, ErrorKind> {
        match data {
            [b'P', b'K', 3, 4, ..] => Ok(Self::Zip(zipped::parse(data)?)),
            [0x80, ..] => Ok(Self::Legacy(legacy::parse(data)?)),
            // The little-endian length of a JSON header, then its `{`.
            [_, _, _, _, _, _, _, _, b'{', ..] => Err(ErrorKind::BadMagic(
                "it looks like a safetensors file".into(),
            )),
            _ => Err(ErrorKind::BadMagic(format!(
                "starts with {:02x?}, neither a zip archive nor a pickle",
                &data[..data.len().min(4)]
            ))),
        }
    }

    pub(crate) fn root(&self) -> &Value {
        match self {
            Self::Legacy(l) => &l.root,
            Self::Zip(z) => &z.root,
        }
    }

    /// The raw bytes of storage `key`: at least its first `len` bytes unless it is shorter,
    /// counted in `budget` where they must be read out of the file.
    pub(crate) fn storage(
        &mut self,
        key: &str,
        len: usize,
        budget: &mut DataBudget,
    ) -> Result<Cow<'a, [u8]>, ErrorKind> {
        match self {
            Self::Legacy(l) => l
                .storages
                .get(key)
                .map(|b| Cow::Borrowed(*b))
                .ok_or_else(|| ErrorKind::Malformed(format!("storage {} has no data", short(key)))),
            Self::Zip(z) => z.storage(key, len, budget).map(Cow::Owned),
        }
    }
}
