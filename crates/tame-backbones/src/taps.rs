use candle_core::{DType, Tensor, Var};

use crate::{BackboneError, Result};

/// A validated request for taps (by node name) and optionally the logits.
#[derive(Clone, Debug)]
pub struct TapRequest {
    names: Vec<String>,
    logits: bool,
    gradients: bool,
    /// The dtype the taps and logits are handed out in, when the network computes in
    /// another (a backbone in lower precision); `None`: as computed.
    hand_out: Option<DType>,
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
            gradients: false,
            hand_out: None,
        })
    }

    /// Makes the requested taps leaves of the autograd graph: the pass continues from a `Var`
    /// copy of each, so that after `backward` on the outputs `grads.get(&tap)` is the gradient
    /// with respect to the tap (candle keeps the gradients of variables only), and
    /// back-propagation stops there. Only backbones whose forward uses
    /// [`TapCollector::pass`] honour it.
    pub fn with_tap_gradients(mut self) -> Self {
        self.gradients = true;
        self
    }

    /// Hands the taps and logits out in `dtype` whatever the network computes in (a tap with
    /// a gradient included: its leaf is in `dtype`).
    pub(crate) fn handing_out(mut self, dtype: DType) -> Self {
        self.hand_out = Some(dtype);
        self
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

    /// Offers `output` as node `name` and returns the tensor the pass continues with: `output`,
    /// or its `Var` copy when `name` is requested under [`TapRequest::with_tap_gradients`].
    pub fn pass(&mut self, name: &str, output: Tensor) -> Result<Tensor> {
        if !(self.request.gradients && self.wants(name)) {
            self.offer(name, &output);
            return Ok(output);
        }
        // The leaf in the dtype handed out, the pass going on from its copy in the network's
        // own: the gradient reaches the very tensor the caller receives.
        let leaf = Var::from_tensor(&self.handed_out(&output)?)?
            .as_tensor()
            .clone();
        self.offer(name, &leaf);
        Ok(leaf.to_dtype(output.dtype())?)
    }

    /// `t` in the dtype the request hands out.
    fn handed_out(&self, t: &Tensor) -> Result<Tensor> {
        Ok(match self.request.hand_out {
            Some(dtype) => t.to_dtype(dtype)?,
            None => t.clone(),
        })
    }

    /// Whether node `name` is one of the requested taps.
    pub fn wants(&self, name: &str) -> bool {
        self.request.names.iter().any(|n| n == name)
    }

    /// True when every tap is collected and no logits are wanted: the pass can stop here.
    pub fn done(&self) -> bool {
        self.missing == 0 && !self.request.logits
    }

    /// The collected taps (in request order) and the logits if they were asked for, in the
    /// dtype the request hands out.
    pub fn finish(self, logits: Option<Tensor>) -> Result<crate::ForwardOutput> {
        let taps = self
            .taps
            .iter()
            .zip(&self.request.names)
            .map(|(t, name)| match t {
                Some(t) => self.handed_out(t),
                None => {
                    Err(candle_core::Error::Msg(format!("tap `{name}` was not produced")).into())
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let logits = match logits.filter(|_| self.request.logits) {
            Some(l) => Some(self.handed_out(&l)?),
            None => None,
        };
        Ok(crate::ForwardOutput { taps, logits })
    }
}
