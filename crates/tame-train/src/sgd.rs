//! `torch.optim.SGD`, step for step.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::TrainError;

/// Parameters sharing a learning rate, weight decay and momentum.
#[derive(Clone)]
pub struct ParamGroup {
    /// Name of the group (`weights`, `biases`).
    pub name: String,
    /// The parameters with their names.
    pub params: Vec<(String, Var)>,
    /// Learning rate.
    pub lr: f64,
    /// L2 penalty added to the gradient (`d = g + wd * p`).
    pub weight_decay: f64,
    /// Momentum factor.
    pub momentum: f64,
}

/// PyTorch's SGD with momentum (dampening 0), optionally Nesterov:
///
/// `d = g + wd * p; buf = d` on a parameter's first step, else `buf = mu * buf + d`;
/// `d = d + mu * buf` (Nesterov) or `d = buf`; `p -= lr * d`.
///
/// A parameter without a gradient is left alone, as PyTorch does.
pub struct Sgd {
    groups: Vec<ParamGroup>,
    nesterov: bool,
    /// Momentum buffer of each parameter, indexed as `groups[g].params[i]`.
    buffers: Vec<Vec<Option<Tensor>>>,
}

impl Sgd {
    /// An optimizer over `groups`; every buffer starts empty.
    pub fn new(groups: Vec<ParamGroup>, nesterov: bool) -> Self {
        let buffers = groups.iter().map(|g| vec![None; g.params.len()]).collect();
        Self {
            groups,
            nesterov,
            buffers,
        }
    }

    /// The parameter groups.
    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Sets the learning rate and momentum of every group (what a scheduler does).
    pub fn set_hyper(&mut self, lrs: &[f64], momentum: Option<f64>) {
        for (g, &lr) in self.groups.iter_mut().zip(lrs) {
            g.lr = lr;
            if let Some(m) = momentum {
                g.momentum = m;
            }
        }
    }

    /// One update from the gradients in `grads`.
    pub fn step(&mut self, grads: &GradStore) -> Result<(), TrainError> {
        for (group, buffers) in self.groups.iter().zip(&mut self.buffers) {
            for ((_, var), buf) in group.params.iter().zip(buffers.iter_mut()) {
                let Some(g) = grads.get(var.as_tensor()) else {
                    continue;
                };
                let p = var.as_tensor();
                let mut d = g.clone();
                if group.weight_decay != 0.0 {
                    d = (d + (p * group.weight_decay)?)?;
                }
                if group.momentum != 0.0 {
                    let b = match buf.take() {
                        None => d.clone(),
                        Some(b) => ((b * group.momentum)? + &d)?,
                    };
                    d = if self.nesterov {
                        (d + (&b * group.momentum)?)?
                    } else {
                        b.clone()
                    };
                    *buf = Some(b);
                }
                var.set(&(p - (d * group.lr)?)?)?;
            }
        }
        Ok(())
    }

    /// The momentum buffers that exist, named `<group>.<parameter>`.
    pub fn momentum_buffers(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (group, buffers) in self.groups.iter().zip(&self.buffers) {
            for ((name, _), buf) in group.params.iter().zip(buffers) {
                if let Some(b) = buf {
                    out.push((format!("{}.{name}", group.name), b.clone()));
                }
            }
        }
        out
    }

    /// Restores momentum buffers saved by [`momentum_buffers`](Self::momentum_buffers).
    ///
    /// Either every parameter gets its buffer or none does (an optimizer that has not
    /// stepped yet); a missing, unknown or mis-shaped buffer is an error and changes nothing.
    pub fn set_momentum_buffers(&mut self, saved: &[(String, Tensor)]) -> Result<(), String> {
        if saved.is_empty() {
            self.buffers.iter_mut().flatten().for_each(|b| *b = None);
            return Ok(());
        }
        let mut new = Vec::with_capacity(self.groups.len());
        let mut used = 0;
        for group in &self.groups {
            let mut row = Vec::with_capacity(group.params.len());
            for (name, var) in &group.params {
                let key = format!("{}.{name}", group.name);
                let (_, t) = saved
                    .iter()
                    .find(|(n, _)| *n == key)
                    .ok_or_else(|| format!("no momentum buffer for {key}"))?;
                if t.dims() != var.dims() {
                    return Err(format!(
                        "momentum buffer {key} has shape {:?}, the parameter {:?}",
                        t.dims(),
                        var.dims()
                    ));
                }
                let t = t
                    .to_dtype(var.dtype())
                    .and_then(|t| t.to_device(var.device()))
                    .map_err(|e| e.to_string())?;
                row.push(Some(t));
                used += 1;
            }
            new.push(row);
        }
        if used != saved.len() {
            return Err(format!(
                "{} momentum buffers for {used} parameters",
                saved.len()
            ));
        }
        self.buffers = new;
        Ok(())
    }
}
