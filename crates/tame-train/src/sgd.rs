//! `torch.optim.SGD`, step for step.

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp3, Layout, Tensor, Var, WithDType};

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
                if let Some(b) = buf.as_ref().filter(|b| in_place(p, g, b, group)) {
                    // The buffer first: the parameter's pass reads the updated one.
                    let update = Update {
                        group,
                        nesterov: self.nesterov,
                    };
                    let g = g.contiguous()?;
                    b.inplace_op3(&g, p, &Pass(update, Target::Buffer))?;
                    p.inplace_op3(&g, b, &Pass(update, Target::Param))?;
                    continue;
                }
                let mut d = g.clone();
                if group.weight_decay != 0.0 {
                    d = (d + (p * group.weight_decay)?)?;
                }
                if group.momentum != 0.0 {
                    let b = match buf.take() {
                        // Its own copy: later steps may update it in place.
                        None => d.copy()?,
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
                    // A copy: the buffer itself changes in place with the next step.
                    out.push((format!("{}.{name}", group.name), b.copy().expect("a copy")));
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
                // A copy of the caller's tensor, which later steps may update in place.
                let t = t
                    .to_dtype(var.dtype())
                    .and_then(|t| t.to_device(var.device()))
                    .and_then(|t| t.copy())
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

/// Whether a step with momentum buffer `b` runs as two in-place passes ([`Pass`]) instead
/// of candle's operations: f32/f64 on the CPU, with momentum, the three tensors alike. The composed update makes eight full-size tensors per parameter
/// (ResNet-50's mechanism: ~70 ms a step); the passes read and write the values once each.
fn in_place(p: &Tensor, g: &Tensor, b: &Tensor, group: &ParamGroup) -> bool {
    group.momentum != 0.0
        && p.device().is_cpu()
        && matches!(p.dtype(), DType::F32 | DType::F64)
        && [g, b]
            .iter()
            .all(|t| t.dtype() == p.dtype() && t.dims() == p.dims())
        && p.is_contiguous()
        && b.is_contiguous()
}

/// One parameter's step; each pass computes `d = g + wd·p` with the same operations in the
/// same order as the composed update (an f64 factor rounded to T, every product and sum
/// rounded), so that the numbers are the same.
#[derive(Clone, Copy)]
struct Update<'a> {
    group: &'a ParamGroup,
    nesterov: bool,
}

impl Update<'_> {
    fn decayed<T: WithDType>(&self, g: T, p: T) -> T {
        if self.group.weight_decay != 0.0 {
            g + p * T::from_f64(self.group.weight_decay)
        } else {
            g
        }
    }
}

/// Which tensor a [`Pass`] updates in place.
#[derive(Clone, Copy)]
enum Target {
    /// buf = mu·buf + d; operands (g, p).
    Buffer,
    /// p = p − lr·(d + mu·buf) with Nesterov, p − lr·buf without; operands (g, the
    /// updated buf).
    Param,
}

/// One of a parameter's two in-place passes.
struct Pass<'a>(Update<'a>, Target);

impl Pass<'_> {
    fn run<T: WithDType>(&self, dst: &mut [T], g: &[T], other: &[T]) {
        let Pass(update, target) = self;
        let (mu, lr) = (
            T::from_f64(update.group.momentum),
            T::from_f64(update.group.lr),
        );
        match target {
            Target::Buffer => {
                for ((b, &g), &p) in dst.iter_mut().zip(g).zip(other) {
                    *b = *b * mu + update.decayed(g, p);
                }
            }
            Target::Param => {
                for ((p, &g), &b) in dst.iter_mut().zip(g).zip(other) {
                    let step = if update.nesterov {
                        update.decayed(g, *p) + b * mu
                    } else {
                        b
                    };
                    *p -= step * lr;
                }
            }
        }
    }
}

impl InplaceOp3 for Pass<'_> {
    fn name(&self) -> &'static str {
        match self.1 {
            Target::Buffer => "sgd-momentum-buffer",
            Target::Param => "sgd-parameter",
        }
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_layout: &Layout,
        g: &CpuStorage,
        g_layout: &Layout,
        other: &CpuStorage,
        other_layout: &Layout,
    ) -> candle_core::Result<()> {
        let range = |l: &Layout| {
            l.contiguous_offsets().ok_or_else(|| {
                candle_core::Error::Msg(format!("{}: contiguous tensors expected", self.name()))
            })
        };
        let (r0, r1, r2) = (range(dst_layout)?, range(g_layout)?, range(other_layout)?);
        match (dst, g, other) {
            (CpuStorage::F32(d), CpuStorage::F32(g), CpuStorage::F32(o)) => {
                self.run(&mut d[r0.0..r0.1], &g[r1.0..r1.1], &o[r2.0..r2.1]);
            }
            (CpuStorage::F64(d), CpuStorage::F64(g), CpuStorage::F64(o)) => {
                self.run(&mut d[r0.0..r0.1], &g[r1.0..r1.1], &o[r2.0..r2.1]);
            }
            _ => candle_core::bail!("{}: f32 or f64 tensors of one type expected", self.name()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    /// PyTorch's update written out with candle's operations, one parameter at a time.
    fn reference_step(
        p: &Tensor,
        g: &Tensor,
        buf: &mut Option<Tensor>,
        group: &ParamGroup,
        nesterov: bool,
    ) -> Tensor {
        let d = (g + (p * group.weight_decay).unwrap()).unwrap();
        let b = match buf.take() {
            None => d.clone(),
            Some(b) => ((b * group.momentum).unwrap() + &d).unwrap(),
        };
        let d = if nesterov {
            (&d + (&b * group.momentum).unwrap()).unwrap()
        } else {
            b.clone()
        };
        *buf = Some(b);
        (p - (d * group.lr).unwrap()).unwrap()
    }

    #[test]
    fn in_place_steps_equal_the_composed_update_bit_for_bit() {
        let dev = Device::Cpu;
        for dtype in [DType::F32, DType::F64] {
            for nesterov in [true, false] {
                for weight_decay in [5e-4, 0.0] {
                    let start = Tensor::randn(0f32, 1f32, (3, 7), &dev)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap();
                    let var = Var::from_tensor(&start).unwrap();
                    let mut group = ParamGroup {
                        name: "weights".into(),
                        params: vec![("w".into(), var.clone())],
                        lr: 0.1,
                        weight_decay,
                        momentum: 0.9,
                    };
                    let mut sgd = Sgd::new(vec![group.clone()], nesterov);
                    let (mut expected, mut buf) = (start.copy().unwrap(), None);
                    for step in 0..4 {
                        // A gradient that depends on the parameter, as a loss's does.
                        let loss = (var.as_tensor().sin().unwrap() * 3.0)
                            .unwrap()
                            .sum_all()
                            .unwrap();
                        let grads = loss.backward().unwrap();
                        let g = grads.get(var.as_tensor()).unwrap().clone();
                        group.lr = 0.1 / (step + 1) as f64;
                        group.momentum = 0.9 - 0.02 * step as f64;
                        sgd.set_hyper(&[group.lr], Some(group.momentum));
                        expected = reference_step(&expected, &g, &mut buf, &group, nesterov);
                        sgd.step(&grads).unwrap();
                        let diff = (var.as_tensor() - &expected)
                            .unwrap()
                            .abs()
                            .unwrap()
                            .max_all()
                            .unwrap();
                        let what =
                            format!("{dtype:?} nesterov {nesterov} wd {weight_decay} step {step}");
                        assert_eq!(
                            diff.to_dtype(DType::F64)
                                .unwrap()
                                .to_scalar::<f64>()
                                .unwrap(),
                            0.0,
                            "{what}"
                        );
                        let saved = &sgd.momentum_buffers()[0].1;
                        let bdiff = (saved - buf.as_ref().unwrap())
                            .unwrap()
                            .abs()
                            .unwrap()
                            .max_all()
                            .unwrap();
                        assert_eq!(
                            bdiff
                                .to_dtype(DType::F64)
                                .unwrap()
                                .to_scalar::<f64>()
                                .unwrap(),
                            0.0,
                            "{what}: buffer"
                        );
                    }
                }
            }
        }
    }
}
