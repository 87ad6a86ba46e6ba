use candle_core::Tensor;

use crate::{BackboneError, Result};

/// A validated request for taps (by node name) and optionally the logits.
#[derive(Clone, Debug)]
pub struct TapRequest {
    names: Vec<String>,
    logits: bool,
}

impl TapRequest {
    /// Checks every name against `valid`; the error lists the valid names.
    pub fn new(model: &str, valid: &[String], names: &[String], logits: bool) -> Result<Self> {
        if let Some(unknown) = names.iter().find(|n| !valid.contains(n)) {
            return Err(BackboneError::UnknownTap {
                model: model.to_string(),
                name: unknown.clone(),
                valid: valid.join(" "),
            });
        }
        Ok(Self {
            names: names.to_vec(),
            logits,
        })
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn wants_logits(&self) -> bool {
        self.logits
    }

    /// Starts collecting the outputs of one forward pass.
    pub fn collector(&self) -> TapCollector<'_> {
        TapCollector {
            request: self,
            taps: vec![None; self.names.len()],
            missing: self.names.len(),
        }
    }
}

/// Receives every node output of a forward pass and keeps the requested ones.
pub struct TapCollector<'a> {
    request: &'a TapRequest,
    taps: Vec<Option<Tensor>>,
    missing: usize,
}

impl TapCollector<'_> {
    /// Offers the output of node `name`; keeps it if it was requested.
    pub fn offer(&mut self, name: &str, output: &Tensor) {
        for (slot, wanted) in self.taps.iter_mut().zip(&self.request.names) {
            if wanted == name && slot.is_none() {
                *slot = Some(output.clone());
                self.missing -= 1;
            }
        }
    }

    /// True when every tap is collected and no logits are wanted: the pass can stop here.
    pub fn done(&self) -> bool {
        self.missing == 0 && !self.request.logits
    }

    /// The collected taps (in request order) and the logits if they were asked for.
    pub fn finish(self, logits: Option<Tensor>) -> Result<crate::ForwardOutput> {
        let taps = self
            .taps
            .into_iter()
            .zip(&self.request.names)
            .map(|(t, name)| {
                t.ok_or_else(|| {
                    candle_core::Error::Msg(format!("tap `{name}` was not produced")).into()
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(crate::ForwardOutput {
            taps,
            logits: logits.filter(|_| self.request.logits),
        })
    }
}
