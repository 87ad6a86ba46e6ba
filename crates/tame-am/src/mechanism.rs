use std::collections::HashMap;
use std::sync::atomic::AtomicI64;
use std::sync::PoisonError;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::layers::{BatchNorm, Conv1x1};
use crate::{AmConfig, AmError, Mismatch, Version, NUM_CLASSES};

/// The TAME attention mechanism: reads backbone taps, outputs per-class explanation logits.
///
/// Trainable parameters are candle [`Var`]s, registered in a [`VarMap`] under their reference
/// names (`attn.convs.0.weight`, ...); batch-norm running statistics are kept apart from
/// them (they are state, not parameters).
pub struct AttentionMechanism {
    config: AmConfig,
    convs: Vec<Conv1x1>,
    bns: Vec<BatchNorm>,
    fuser: Conv1x1,
    var_map: VarMap,
}

/// The outputs of a mechanism's branches for one batch, each (B, C_i, H_i, W_i) at its tap's
/// resolution, from [`AttentionMechanism::branches`].
#[derive(Clone, Debug)]
pub struct Branches {
    maps: Vec<Tensor>,
}

impl Branches {
    /// The branch outputs, in tap order.
    pub fn maps(&self) -> &[Tensor] {
        &self.maps
    }
}

/// How the seeded initialisation fills a tensor.
#[derive(Clone, Copy)]
enum Init {
    Uniform(f32),
    Const(f32),
}

/// Where the values of a new mechanism come from.
enum Source<'a> {
    /// PyTorch's default initialisation, drawn from a seeded generator.
    Seeded(Box<StdRng>),
    /// Tensors by reference name, already checked against the layout.
    Tensors(&'a HashMap<String, Tensor>),
}

impl Source<'_> {
    fn tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        init: Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor, AmError> {
        let t = match self {
            Source::Tensors(map) => map[name].to_dtype(dtype)?.to_device(dev)?,
            Source::Seeded(rng) => {
                let n: usize = shape.iter().product();
                let values: Vec<f32> = match init {
                    Init::Uniform(bound) => {
                        (0..n).map(|_| rng.random_range(-bound..bound)).collect()
                    }
                    Init::Const(v) => vec![v; n],
                };
                Tensor::from_vec(values, shape, dev)?.to_dtype(dtype)?
            }
        };
        Ok(t)
    }

    fn batches_tracked(&self, name: &str) -> Result<i64, AmError> {
        Ok(match self {
            Source::Tensors(map) => map[name].to_dtype(DType::F64)?.to_scalar::<f64>()? as i64,
            Source::Seeded(_) => 0,
        })
    }
}

/// Builds the layers in the reference's registration order (convs, batch norms, fuser), which
/// is also the order in which the seeded initialisation draws its values.
struct Builder<'a> {
    source: Source<'a>,
    dtype: DType,
    device: Device,
    var_map: VarMap,
}

impl Builder<'_> {
    fn var(&mut self, name: String, shape: &[usize], init: Init) -> Result<Var, AmError> {
        let t = self
            .source
            .tensor(&name, shape, init, self.dtype, &self.device)?;
        let var = Var::from_tensor(&t)?;
        self.var_map
            .data()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name, var.clone());
        Ok(var)
    }

    fn state(&mut self, name: String, shape: &[usize], init: Init) -> Result<Var, AmError> {
        let t = self
            .source
            .tensor(&name, shape, init, self.dtype, &self.device)?;
        Ok(Var::from_tensor(&t)?)
    }

    /// PyTorch's `Conv2d.reset_parameters`: `kaiming_uniform_(a=sqrt(5))` for the weight and
    /// U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the bias, which is the same bound for both.
    fn conv(&mut self, prefix: &str, out: usize, inp: usize) -> Result<Conv1x1, AmError> {
        let bound = Init::Uniform(1.0 / (inp as f32).sqrt());
        Ok(Conv1x1 {
            weight: self.var(format!("{prefix}.weight"), &[out, inp, 1, 1], bound)?,
            bias: self.var(format!("{prefix}.bias"), &[out], bound)?,
        })
    }

    fn batch_norm(&mut self, prefix: &str, c: usize) -> Result<BatchNorm, AmError> {
        Ok(BatchNorm {
            weight: self.var(format!("{prefix}.weight"), &[c], Init::Const(1.0))?,
            bias: self.var(format!("{prefix}.bias"), &[c], Init::Const(0.0))?,
            running_mean: self.state(format!("{prefix}.running_mean"), &[c], Init::Const(0.0))?,
            running_var: self.state(format!("{prefix}.running_var"), &[c], Init::Const(1.0))?,
            batches_tracked: AtomicI64::new(
                self.source
                    .batches_tracked(&format!("{prefix}.num_batches_tracked"))?,
            ),
        })
    }
}

impl AttentionMechanism {
    /// A freshly initialised mechanism, distributed as PyTorch's default initialisation of the
    /// reference (uniform conv weights and biases with bound 1/sqrt(fan_in); batch norms at
    /// scale 1, shift 0, running mean 0, running variance 1). The same seed gives the same
    /// values.
    pub fn new(
        config: &AmConfig,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, AmError> {
        Self::build(
            config,
            Source::Seeded(Box::new(StdRng::seed_from_u64(seed))),
            dtype,
            device,
        )
    }

    /// A mechanism holding the given state-dict tensors, converted to `dtype` on `device`.
    ///
    /// Names may carry `module.`, `attn_mech.` or no `attn.` prefix. Every tensor of
    /// [`AmConfig::state_layout`] must be present with its shape, and nothing else; otherwise
    /// the error ([`AmError::State`]) names the first difference.
    pub fn from_tensors(
        config: &AmConfig,
        tensors: impl IntoIterator<Item = (String, Tensor)>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, AmError> {
        let mut order = Vec::new();
        let mut map = HashMap::new();
        for (name, t) in tensors {
            let name = reference_name(&name);
            order.push(name.clone());
            map.insert(name, t);
        }
        let layout = config.state_layout();
        for (name, shape) in &layout {
            let t = map
                .get(name)
                .ok_or_else(|| Mismatch::Missing(name.clone()))?;
            if t.dims() != shape.as_slice() {
                return Err(Mismatch::Shape {
                    name: name.clone(),
                    expected: shape.clone(),
                    got: t.dims().to_vec(),
                }
                .into());
            }
            // Batch norms count their batches in integers; everything else is a float.
            if !t.dtype().is_float() && !name.ends_with("num_batches_tracked") {
                return Err(Mismatch::NotFloat {
                    name: name.clone(),
                    dtype: t.dtype(),
                }
                .into());
            }
            if !tame_ops::all_finite(t)? {
                return Err(Mismatch::NonFinite(name.clone()).into());
            }
        }
        if let Some(extra) = order.iter().find(|n| !layout.iter().any(|(l, _)| l == *n)) {
            return Err(Mismatch::Unexpected(extra.clone()).into());
        }
        Self::build(config, Source::Tensors(&map), dtype, device)
    }

    fn build(
        config: &AmConfig,
        source: Source,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, AmError> {
        let mut b = Builder {
            source,
            dtype,
            device: device.clone(),
            var_map: VarMap::new(),
        };
        let convs = (0..config.taps().len())
            .map(|i| {
                let inp = config.taps()[i].channels;
                b.conv(&format!("attn.convs.{i}"), config.branch_channels(i), inp)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bns = (0..config.batch_norms())
            .map(|i| b.batch_norm(&format!("attn.bns.{i}"), config.batch_norm_channels(i)))
            .collect::<Result<Vec<_>, _>>()?;
        let fuser = b.conv("attn.fuser", NUM_CLASSES, config.fused_channels())?;
        Ok(Self {
            config: config.clone(),
            convs,
            bns,
            fuser,
            var_map: b.var_map,
        })
    }

    /// What the mechanism was built for.
    pub fn config(&self) -> &AmConfig {
        &self.config
    }

    /// The trainable parameters, registered under their reference names.
    pub fn var_map(&self) -> &VarMap {
        &self.var_map
    }

    /// The trainable parameters with their reference names, in the order of the reference's
    /// `named_parameters()`: every conv's weight and bias, every batch norm's weight and bias,
    /// then the fuser's.
    pub fn parameters(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (i, c) in self.convs.iter().enumerate() {
            out.push((format!("attn.convs.{i}.weight"), c.weight.clone()));
            out.push((format!("attn.convs.{i}.bias"), c.bias.clone()));
        }
        for (i, bn) in self.bns.iter().enumerate() {
            out.push((format!("attn.bns.{i}.weight"), bn.weight.clone()));
            out.push((format!("attn.bns.{i}.bias"), bn.bias.clone()));
        }
        out.push(("attn.fuser.weight".into(), self.fuser.weight.clone()));
        out.push(("attn.fuser.bias".into(), self.fuser.bias.clone()));
        out
    }

    /// The parameters whose name contains `weight` (conv weights and batch-norm scales): the
    /// reference's weight-decayed optimizer group.
    pub fn weight_parameters(&self) -> Vec<(String, Var)> {
        self.parameters()
            .into_iter()
            .filter(|(n, _)| n.contains("weight"))
            .collect()
    }

    /// The parameters whose name contains `bias`: the reference's group without weight decay
    /// and with twice the learning rate.
    pub fn bias_parameters(&self) -> Vec<(String, Var)> {
        self.parameters()
            .into_iter()
            .filter(|(n, _)| n.contains("bias"))
            .collect()
    }

    /// The full state (parameters, running statistics, `num_batches_tracked` as an `I64`
    /// scalar) under the reference names, in the order of [`AmConfig::state_layout`].
    pub fn state_dict(&self) -> Result<Vec<(String, Tensor)>, AmError> {
        let mut out = Vec::new();
        for (i, c) in self.convs.iter().enumerate() {
            out.push((
                format!("attn.convs.{i}.weight"),
                c.weight.as_detached_tensor(),
            ));
            out.push((format!("attn.convs.{i}.bias"), c.bias.as_detached_tensor()));
        }
        for (i, bn) in self.bns.iter().enumerate() {
            let p = format!("attn.bns.{i}");
            out.push((format!("{p}.weight"), bn.weight.as_detached_tensor()));
            out.push((format!("{p}.bias"), bn.bias.as_detached_tensor()));
            out.push((
                format!("{p}.running_mean"),
                bn.running_mean.as_detached_tensor(),
            ));
            out.push((
                format!("{p}.running_var"),
                bn.running_var.as_detached_tensor(),
            ));
            let tracked = Tensor::new(bn.batches_tracked(), bn.weight.device())?;
            out.push((format!("{p}.num_batches_tracked"), tracked));
        }
        out.push((
            "attn.fuser.weight".into(),
            self.fuser.weight.as_detached_tensor(),
        ));
        out.push((
            "attn.fuser.bias".into(),
            self.fuser.bias.as_detached_tensor(),
        ));
        Ok(out)
    }

    /// The outputs of every branch for `taps`, each at its tap's resolution (before the
    /// resize to S x S): what [`class_logits`](Self::class_logits) and
    /// [`per_sample_class_logits`](Self::per_sample_class_logits) read.
    ///
    /// `taps` are the (B, C_i, H_i, W_i) feature maps in the configured order. In train mode
    /// batch norms use batch statistics and update their running statistics.
    pub fn branches(&self, taps: &[Tensor], train: bool) -> Result<Branches, AmError> {
        let expected = self.config.taps();
        if taps.len() != expected.len() {
            return Err(AmError::TapCount {
                expected: expected.len(),
                got: taps.len(),
            });
        }
        let batch = taps[0].dims().first().copied().unwrap_or(0);
        let mut maps = Vec::with_capacity(taps.len());
        for (i, (x, shape)) in taps.iter().zip(expected).enumerate() {
            let want = [batch, shape.channels, shape.height, shape.width];
            if x.dims() != want || batch == 0 {
                return Err(AmError::TapShape {
                    index: i,
                    expected: [shape.channels, shape.height, shape.width],
                    got: x.dims().to_vec(),
                });
            }
            let x = x.reshape((batch, shape.channels, shape.height * shape.width))?;
            let mut y = self.convs[i].forward(&x)?;
            let version = self.config.version();
            y = match self.bns.get(i) {
                // TAME's relu(bn(conv(x)) + x) with the addition and the ReLU in the batch
                // norm's pass.
                Some(bn) if version == Version::Tame => bn.forward_add_relu(&y, &x, train)?,
                bn => {
                    if let Some(bn) = bn {
                        y = bn.forward(&y, train)?;
                    }
                    if version.has_skip() {
                        y = (y + &x)?;
                    }
                    match version {
                        Version::SigmoidInFeatureBranch => candle_nn::ops::sigmoid(&y)?,
                        _ => y.relu()?,
                    }
                }
            };
            maps.push(y.reshape((batch, (), shape.height, shape.width))?);
        }
        Ok(Branches { maps })
    }

    /// The fused features (B, F, S, S) of the reference: every branch resized to S x S and
    /// concatenated on the channel axis (F = [`AmConfig::fused_channels`]).
    pub fn fused_features(&self, taps: &[Tensor], train: bool) -> Result<Tensor, AmError> {
        let side = self.config.side();
        let resized = self
            .branches(taps, train)?
            .maps
            .iter()
            .map(|y| tame_ops::resize_bilinear(y, side, side))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::cat(&resized, 1)?)
    }

    /// The logit maps **c** of all [`NUM_CLASSES`] classes, (B, 1000, S, S), computed as the
    /// reference does (the fuser over the [`fused_features`](Self::fused_features)); the
    /// explanation maps are `candle_nn::ops::sigmoid(&c)`.
    pub fn forward(&self, taps: &[Tensor], train: bool) -> Result<Tensor, AmError> {
        let features = self.fused_features(taps, train)?;
        let (b, f, s, _) = features.dims4()?;
        let flat = features.reshape((b, f, s * s))?;
        Ok(self.fuser.forward(&flat)?.reshape((b, NUM_CLASSES, s, s))?)
    }

    /// The logit maps of the classes `classes` for every sample, (B, k, S, S): channel j is
    /// channel `classes[j]` of [`forward`](Self::forward)'s output, computed from only those k
    /// rows of the fuser. With `classes` = the batch's labels this is the reference's `a[:, y]`.
    pub fn class_logits(&self, branches: &Branches, classes: &[u32]) -> Result<Tensor, AmError> {
        self.check_branches(branches)?;
        let idx = self.class_index(classes, self.fuser.weight.device())?;
        let k = classes.len();
        let rows = self
            .fuser
            .matrix()?
            .index_select(&idx, 0)?
            .reshape((1, k, ()))?;
        let bias = self.fuser.bias.as_tensor().index_select(&idx, 0)?;
        self.selected_logits(branches, &rows, &bias.reshape((1, k, 1, 1))?)
    }

    /// The logit maps of a class list per sample, (B, k, S, S): channel j of sample i is
    /// channel `classes[i][j]` of [`forward`](Self::forward)'s output for that sample. Every
    /// list must have the same length k. With one label per sample this gives each image's
    /// own map, (B, 1, S, S).
    pub fn per_sample_class_logits(
        &self,
        branches: &Branches,
        classes: &[Vec<u32>],
    ) -> Result<Tensor, AmError> {
        self.check_branches(branches)?;
        let b = branches.maps[0].dim(0)?;
        if classes.len() != b {
            return Err(AmError::BadInput(format!(
                "{} class lists for a batch of {b}",
                classes.len()
            )));
        }
        let k = classes.first().map_or(0, Vec::len);
        if let Some(bad) = classes.iter().find(|c| c.len() != k) {
            return Err(AmError::BadInput(format!(
                "class lists of different lengths ({k} and {})",
                bad.len()
            )));
        }
        let flat_classes: Vec<u32> = classes.concat();
        let idx = self.class_index(&flat_classes, self.fuser.weight.device())?;
        let rows = self
            .fuser
            .matrix()?
            .index_select(&idx, 0)?
            .reshape((b, k, ()))?;
        let bias = self.fuser.bias.as_tensor().index_select(&idx, 0)?;
        self.selected_logits(branches, &rows, &bias.reshape((b, k, 1, 1))?)
    }

    /// Σ_i resize(rows_i · branch_i) + bias for fuser `rows` (1 or B, k, F) and their `bias`
    /// (1 or B, k, 1, 1), rows_i being the columns of branch i. The same numbers as the
    /// fuser over the resized concatenation (both maps are linear, and each resize weighs
    /// its inputs by weights that sum to one), but only k channels of each branch are
    /// resized, not all F.
    fn selected_logits(
        &self,
        branches: &Branches,
        rows: &Tensor,
        bias: &Tensor,
    ) -> Result<Tensor, AmError> {
        let side = self.config.side();
        let k = rows.dim(1)?;
        let mut offset = 0;
        let mut sum: Option<Tensor> = None;
        for y in &branches.maps {
            let (b, c, h, w) = y.dims4()?;
            let part = rows.narrow(2, offset, c)?.contiguous()?;
            let maps = part
                .broadcast_matmul(&y.reshape((b, c, h * w))?)?
                .reshape((b, k, h, w))?;
            let maps = tame_ops::resize_bilinear(&maps, side, side)?;
            sum = Some(match sum {
                Some(s) => (s + maps)?,
                None => maps,
            });
            offset += c;
        }
        let sum = sum.ok_or(AmError::NoTaps)?;
        Ok(sum.broadcast_add(bias)?)
    }

    /// `branches` came from a mechanism of this configuration.
    fn check_branches(&self, branches: &Branches) -> Result<(), AmError> {
        let expected: Vec<usize> = (0..self.config.taps().len())
            .map(|i| self.config.branch_channels(i))
            .collect();
        let got: Vec<usize> = branches.maps.iter().map(|m| m.dims()[1]).collect();
        if got != expected {
            return Err(AmError::BadInput(format!(
                "branch outputs of {got:?} channels for a mechanism of {expected:?}"
            )));
        }
        Ok(())
    }

    fn class_index(&self, classes: &[u32], device: &Device) -> Result<Tensor, AmError> {
        if let Some(&bad) = classes.iter().find(|&&c| c as usize >= NUM_CLASSES) {
            return Err(AmError::ClassIndex {
                index: bad.into(),
                classes: NUM_CLASSES,
            });
        }
        Ok(tame_ops::host::upload_slice(classes, device)?)
    }
}

/// The reference name of a state-dict entry: without `module.`/`attn_mech.` prefixes, with
/// the `attn.` one that `attn_mech.state_dict()` writes.
fn reference_name(name: &str) -> String {
    let mut n = name;
    while let Some(rest) = n.strip_prefix("module.") {
        n = rest;
    }
    let n = n.strip_prefix("attn_mech.").unwrap_or(n);
    let n = n.strip_prefix("attn.").unwrap_or(n);
    format!("attn.{n}")
}
