//! Files from the Hugging Face hub, through the standard cache (`HF_HOME`, default
//! `~/.cache/huggingface`), so a cache filled by the Python client is reused.

use std::path::PathBuf;

use crate::{BackboneError, Result};

/// The local path of `file` in hub model repository `repo`, downloading it if it is not cached
/// and `HF_HUB_OFFLINE` is not set.
pub fn model_file(repo: &str, file: &str) -> Result<PathBuf> {
    let cache = hf_hub::Cache::from_env();
    if let Some(path) = cache.model(repo.to_string()).get(file) {
        return Ok(path);
    }
    let how_to = format!(
        "download `{file}` from https://huggingface.co/{repo} and pass it with \
         `--weights /path/to/{file}`, or put it in the Hugging Face cache at {}",
        cache.path().display()
    );
    if std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v != "0" && !v.is_empty()) {
        return Err(BackboneError::Hub(format!(
            "hub:{repo}: `{file}` is not cached and HF_HUB_OFFLINE is set; {how_to}"
        )));
    }
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .build()
        .map_err(|e| BackboneError::Hub(format!("hub:{repo}: {e}; {how_to}")))?;
    api.model(repo.to_string()).get(file).map_err(|e| {
        BackboneError::Hub(format!(
            "hub:{repo}: `{file}` is not cached and could not be downloaded ({e}); {how_to}"
        ))
    })
}
