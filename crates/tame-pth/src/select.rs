//! Finding the state dict inside the unpickled object.

use std::collections::HashMap;

use crate::error::ErrorKind;
use crate::pickle::Value;
use crate::tensor::TensorSpec;

/// The entry tried when the top-level dict itself holds no tensors.
pub(crate) const AUTO_KEY: &str = "state_dict";

/// The string-keyed entries of a dict in insertion order; a repeated key keeps
/// its first position and its last value, as in Python.
pub(crate) fn entries(v: &Value) -> Option<Vec<(&str, &Value)>> {
    let mut out: Vec<(&str, &Value)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (k, v) in v.dict_pairs()? {
        let Some(k) = k.as_str() else { continue };
        match index.get(k) {
            Some(&i) => out[i].1 = v,
            None => {
                index.insert(k, out.len());
                out.push((k, v));
            }
        }
    }
    Some(out)
}

/// The tensors among a dict's entries, in order.
fn tensors(entries: &[(&str, &Value)]) -> Result<Vec<(String, TensorSpec)>, ErrorKind> {
    let mut out = Vec::new();
    for (name, value) in entries {
        if let Some(spec) = TensorSpec::from_value(value)? {
            out.push((name.to_string(), spec));
        }
    }
    Ok(out)
}

fn keys(entries: &[(&str, &Value)]) -> Vec<String> {
    entries.iter().map(|(k, _)| k.to_string()).collect()
}

/// Keys whose value is a dict holding at least one tensor.
fn holding_tensors(dict: &[(&str, &Value)]) -> Vec<String> {
    dict.iter()
        .filter(|(_, v)| {
            entries(v).is_some_and(|inner| {
                inner
                    .iter()
                    .any(|(_, t)| matches!(TensorSpec::from_value(t), Ok(Some(_))))
            })
        })
        .map(|(k, _)| k.to_string())
        .collect()
}

fn dict_at<'v>(v: &'v Value, at: &str) -> Result<Vec<(&'v str, &'v Value)>, ErrorKind> {
    entries(v).ok_or_else(|| ErrorKind::NotADict {
        at: at.to_string(),
        found: v.describe(),
    })
}

/// The tensors of the state dict at `key`, or found by the automatic rule when `key` is
/// `None`: the top-level dict if it holds tensors, else its [`AUTO_KEY`] entry.
pub(crate) fn state_dict(
    root: &Value,
    key: Option<&str>,
) -> Result<Vec<(String, TensorSpec)>, ErrorKind> {
    let top = dict_at(root, "the top-level object")?;
    let (at, dict) = match key {
        Some(key) => {
            let value = top
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| *v)
                .ok_or_else(|| ErrorKind::KeyNotFound {
                    key: key.to_string(),
                    keys: keys(&top),
                })?;
            let at = format!("entry {key:?}");
            let dict = dict_at(value, &at)?;
            (at, dict)
        }
        None => {
            let found = tensors(&top)?;
            if !found.is_empty() {
                return Ok(found);
            }
            match top.iter().find(|(k, _)| *k == AUTO_KEY) {
                Some((_, value)) if entries(value).is_some() => {
                    (format!("entry {AUTO_KEY:?}"), dict_at(value, AUTO_KEY)?)
                }
                _ => ("the top-level dict".to_string(), top),
            }
        }
    };
    let found = tensors(&dict)?;
    if found.is_empty() {
        return Err(ErrorKind::NoTensors {
            at,
            keys: keys(&dict),
            holding_tensors: holding_tensors(&dict),
        });
    }
    Ok(found)
}
