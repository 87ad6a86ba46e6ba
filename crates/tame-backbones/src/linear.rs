//! The fully connected layer of the classifiers, by torchvision's names (`weight` of
//! (out, in), `bias`); the arithmetic in [`tame_ops::linear`] (candle_nn's `Linear` packs
//! the whole weight again on every pass of more than one image, and runs one image on one
//! thread).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

pub struct Dense {
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    /// PyTorch's `Linear(inputs, outputs)`, reading `<vb>.weight` and `<vb>.bias`.
    pub fn new(vb: VarBuilder, inputs: usize, outputs: usize) -> Result<Self> {
        Ok(Self {
            weight: vb.get((outputs, inputs), "weight")?,
            bias: vb.get(outputs, "bias")?,
        })
    }

    /// `x` (batch, inputs) -> (batch, outputs).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        tame_ops::linear(x, &self.weight, &self.bias)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Module, Var};
    use candle_nn::VarMap;

    #[test]
    fn matches_candle_linear_forward_and_backward() -> Result<()> {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F64, &dev);
        let dense = Dense::new(vb.pp("fc"), 37, 11)?;
        let linear = candle_nn::Linear::new(dense.weight.clone(), Some(dense.bias.clone()));
        for batch in [1, 3, 8] {
            let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (batch, 37), &dev)?)?;
            let (ours, theirs) = (dense.forward(&x)?, linear.forward(&x)?);
            assert_eq!(ours.dims(), [batch, 11]);
            let diff = (&ours - &theirs)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(diff < 1e-12, "batch {batch}: {diff}");
            let r = Tensor::randn(0f64, 1.0, (batch, 11), &dev)?;
            let [a, b] = [&ours, &theirs].map(|y| (y * &r)?.sum_all()?.backward());
            let (a, b) = (a?, b?);
            for t in [x.as_tensor(), &dense.weight, &dense.bias] {
                let (ga, gb) = (a.get(t).unwrap(), b.get(t).unwrap());
                let diff = (ga - gb)?.abs()?.max_all()?.to_scalar::<f64>()?;
                assert!(diff < 1e-12, "batch {batch}: {diff}");
            }
        }
        Ok(())
    }
}
