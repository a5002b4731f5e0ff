//! Building blocks of the shipped convolutional models, in NCHW, on the kernels that `bench`
//! measures ([`crate::kernels::conv`]): one convolution path for serving, training and the
//! benchmarks, with the bias and the ReLU fused into the convolution. On other devices and
//! dtypes those kernels fall back to candle's own `conv2d` / `conv_transpose2d`.
//! - [`Conv3x3`]: 3×3, stride 1, zero padding 1;
//! - [`Down2x2`]: a learnable 2×2 stride-2 convolution (halves H and W);
//! - [`Up2x2`]: a learnable 2×2 stride-2 transposed convolution (doubles H and W);
//! - [`ResBlock`]: `x + conv(relu(conv(x)))`.
//!
//! Weights are stored in candle's layouts (`[cout, cin, k, k]`, transposed `[cin, cout, k, k]`).
//! Files written before this layout (by the former NHWC gather-then-matmul layers, "v1") held
//! every kernel as a matrix: `[k²·cin, cout]` with rows in (ky, kx, ci) order, transposed
//! `[cin, k²·cout]` with columns in (ky, kx, co) order. A rank-2 kernel can only be such a file's, so it is converted
//! when loaded ([`Kernel::from_v1`]); nothing else has to mark a file's layout. Loaders that set
//! variables by name instead of building through a `VarBuilder` (a checkpoint with its AdamW
//! moments) convert the map first with [`upgrade_v1`].

use std::cell::RefCell;
use std::collections::HashMap;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::kernels::conv::{conv2d_act, conv_transpose2d_act, Act};

/// How a layer's kernel is laid out: a convolution's `[cout, cin, k, k]` or a transposed
/// convolution's `[cin, cout, k, k]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Conv,
    Transposed,
}

impl Kernel {
    /// The kernel's shape in candle's layout.
    pub fn shape(self, cin: usize, cout: usize, k: usize) -> (usize, usize, usize, usize) {
        match self {
            Kernel::Conv => (cout, cin, k, k),
            Kernel::Transposed => (cin, cout, k, k),
        }
    }

    /// The shape a v1 file stored this kernel in (see the module doc).
    pub fn v1_shape(self, cin: usize, cout: usize, k: usize) -> (usize, usize) {
        match self {
            Kernel::Conv => (k * k * cin, cout),
            Kernel::Transposed => (cin, k * k * cout),
        }
    }

    /// Converts a v1 kernel (or anything of its shape stored beside it, e.g. the AdamW
    /// moments of a checkpoint) to candle's layout; a pure permutation of the values.
    pub fn from_v1(self, t: &Tensor, cin: usize, cout: usize, k: usize) -> Result<Tensor> {
        if t.dims2()? != self.v1_shape(cin, cout, k) {
            candle_core::bail!(
                "v1 kernel of shape {:?}, expected {:?}",
                t.shape(),
                self.v1_shape(cin, cout, k)
            );
        }
        let t = match self {
            // rows (ky, kx, ci), columns co → [co, ci, ky, kx]
            Kernel::Conv => t.reshape((k, k, cin, cout))?.permute((3, 2, 0, 1))?,
            // rows ci, columns (ky, kx, co) → [ci, co, ky, kx]
            Kernel::Transposed => t.reshape((cin, k, k, cout))?.permute((0, 3, 1, 2))?,
        };
        // Contiguous once here: the kernels would otherwise copy it on every call.
        t.contiguous()
    }

    /// A layer's `weight` from `vb`: converted if the file holds a v1 kernel, else as stored
    /// (or newly initialised with `init`).
    fn load(self, vb: &VarBuilder, dims: (usize, usize, usize), init: Init) -> Result<Tensor> {
        let (cin, cout, k) = dims;
        if vb.contains_tensor("weight") {
            let stored = vb.get_unchecked("weight")?;
            if stored.rank() == 2 {
                let name = match vb.prefix() {
                    p if p.is_empty() => "weight".to_string(),
                    p => format!("{p}.weight"),
                };
                V1_SEEN.with(|s| {
                    if let Some(seen) = s.borrow_mut().as_mut() {
                        seen.push((name, self, dims));
                    }
                });
                return self.from_v1(&stored, cin, cout, k);
            }
        }
        vb.get_with_hints(self.shape(cin, cout, k), "weight", init)
    }
}

/// A v1 kernel a layer met while loading: its name, kind and `(cin, cout, k)`.
type V1Kernel = (String, Kernel, (usize, usize, usize));

thread_local! {
    /// While [`upgrade_v1`] builds a network on this thread, the v1 kernels its layers convert.
    /// Only the layers know which of their kernels are transposed (a v1 file's shapes alone
    /// cannot tell, e.g. `[64, 64]` for both a 16→64 2×2 convolution and a 64→16 transposed
    /// one), so the network is built once and its layers report what they converted.
    static V1_SEEN: RefCell<Option<Vec<V1Kernel>>> = const { RefCell::new(None) };
}

/// Converts the v1 kernels of a weights or checkpoint map in place, each kernel `NAME` and the
/// AdamW moments saved beside it (`optim.m.NAME`, `optim.v.NAME`) by the same permutation, for
/// loaders that set variables by name. `build` constructs the network over the builder it is
/// given (e.g. `|vb| Net::new(vb, &cfg.model).map(drop)`). Returns how many kernels were
/// converted (0 for a file already in candle's layout, which is left as it is).
pub fn upgrade_v1(
    tensors: &mut HashMap<String, Tensor>,
    build: impl FnOnce(VarBuilder<'static>) -> Result<()>,
) -> Result<usize> {
    let weights: HashMap<String, Tensor> = tensors
        .iter()
        .filter(|(k, _)| !k.starts_with("optim."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let dev = weights
        .values()
        .next()
        .map(|t| t.device().clone())
        .unwrap_or(Device::Cpu);
    V1_SEEN.with(|s| *s.borrow_mut() = Some(Vec::new()));
    let built = build(VarBuilder::from_tensors(weights, DType::F32, &dev));
    let seen = V1_SEEN.with(|s| s.borrow_mut().take()).unwrap_or_default();
    built?;
    for (name, kind, (cin, cout, k)) in &seen {
        for key in [
            name.clone(),
            format!("optim.m.{name}"),
            format!("optim.v.{name}"),
        ] {
            if let Some(t) = tensors.get(&key) {
                let t = kind.from_v1(t, *cin, *cout, *k)?;
                tensors.insert(key, t);
            }
        }
    }
    Ok(seen.len())
}

pub(crate) fn kaiming(fan_in: usize) -> Init {
    // He-normal for ReLU nets.
    Init::Randn {
        mean: 0.,
        stdev: (2.0 / fan_in as f64).sqrt(),
    }
}

fn bias(vb: &VarBuilder, cout: usize) -> Result<Tensor> {
    vb.get_with_hints(cout, "bias", Init::Const(0.))
}

/// NHWC (the models' interface) → NCHW (their layers). One channel: a free reshape.
pub fn to_nchw(x: &Tensor) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    if c == 1 {
        return x.reshape((b, 1, h, w));
    }
    x.permute((0, 3, 1, 2))?.contiguous()
}

/// NCHW → NHWC, the inverse of [`to_nchw`].
pub fn to_nhwc(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if c == 1 {
        return x.reshape((b, h, w, 1));
    }
    x.permute((0, 2, 3, 1))?.contiguous()
}

/// A 3×3 convolution, stride 1, zero padding 1. Weight `[cout, cin, 3, 3]`.
#[derive(Debug, Clone)]
pub struct Conv3x3 {
    w: Tensor,
    b: Tensor,
}

impl Conv3x3 {
    pub fn new(vb: VarBuilder, cin: usize, cout: usize) -> Result<Self> {
        Self::with_gain(vb, cin, cout, 1.0)
    }

    /// `gain` scales the initial weights; a small gain makes a residual branch start near zero.
    pub fn with_gain(vb: VarBuilder, cin: usize, cout: usize, gain: f64) -> Result<Self> {
        let init = Init::Randn {
            mean: 0.,
            stdev: gain * (2.0 / (9 * cin) as f64).sqrt(),
        };
        Ok(Self {
            w: Kernel::Conv.load(&vb, (cin, cout, 3), init)?,
            b: bias(&vb, cout)?,
        })
    }

    /// The convolution followed by `act`, fused.
    pub fn forward_act(&self, x: &Tensor, act: Act) -> Result<Tensor> {
        conv2d_act(x, &self.w, Some(&self.b), 1, 1, act)
    }
}

impl Module for Conv3x3 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, Act::Identity)
    }
}

/// A learnable 2×2 stride-2 convolution (halves H and W). Weight `[cout, cin, 2, 2]`.
#[derive(Debug, Clone)]
pub struct Down2x2 {
    w: Tensor,
    b: Tensor,
}

impl Down2x2 {
    pub fn new(vb: VarBuilder, cin: usize, cout: usize) -> Result<Self> {
        Ok(Self {
            w: Kernel::Conv.load(&vb, (cin, cout, 2), kaiming(4 * cin))?,
            b: bias(&vb, cout)?,
        })
    }

    pub fn forward_act(&self, x: &Tensor, act: Act) -> Result<Tensor> {
        conv2d_act(x, &self.w, Some(&self.b), 2, 0, act)
    }
}

impl Module for Down2x2 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, Act::Identity)
    }
}

/// A learnable 2×2 stride-2 transposed convolution (doubles H and W). Weight `[cin, cout, 2,
/// 2]`.
#[derive(Debug, Clone)]
pub struct Up2x2 {
    w: Tensor,
    b: Tensor,
}

impl Up2x2 {
    pub fn new(vb: VarBuilder, cin: usize, cout: usize) -> Result<Self> {
        Self::with_gain(vb, cin, cout, 1.0)
    }

    /// `gain` scales the initial weights (small for an output layer that should start near 0).
    pub fn with_gain(vb: VarBuilder, cin: usize, cout: usize, gain: f64) -> Result<Self> {
        let init = Init::Randn {
            mean: 0.,
            stdev: gain * (2.0 / cin as f64).sqrt(),
        };
        Ok(Self {
            w: Kernel::Transposed.load(&vb, (cin, cout, 2), init)?,
            b: bias(&vb, cout)?,
        })
    }

    pub fn forward_act(&self, x: &Tensor, act: Act) -> Result<Tensor> {
        conv_transpose2d_act(x, &self.w, Some(&self.b), (2, 0, 0), act)
    }
}

impl Module for Up2x2 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, Act::Identity)
    }
}

/// `x + conv(relu(conv(x)))`, the residual block of the denoiser's levels.
#[derive(Debug, Clone)]
pub struct ResBlock {
    c1: Conv3x3,
    c2: Conv3x3,
}

impl ResBlock {
    pub fn new(vb: VarBuilder, c: usize) -> Result<Self> {
        Ok(Self {
            c1: Conv3x3::new(vb.pp("conv1"), c, c)?,
            // Start each block close to the identity so the deep stack trains from step one.
            c2: Conv3x3::with_gain(vb.pp("conv2"), c, c, 0.1)?,
        })
    }
}

impl Module for ResBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.c1.forward_act(x, Act::Relu)?;
        x + self.c2.forward(&h)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;

    /// A seeded random tensor (candle's own `randn` draws from an unseeded RNG).
    fn seeded(seed: u64, shape: &[usize]) -> Result<Tensor> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
    }

    /// A builder over a v1 file's tensors: `weight` (v1 layout) and `bias`.
    fn v1_builder(w: &Tensor, b: &Tensor) -> VarBuilder<'static> {
        let t = HashMap::from([
            ("weight".to_string(), w.clone()),
            ("bias".into(), b.clone()),
        ]);
        VarBuilder::from_tensors(t, DType::F32, &Device::Cpu)
    }

    // The v1 formulas, as the former NHWC layers computed them (NHWC in and out).

    /// v1 3×3: zero-pad, gather the 9 shifted views along channels (ky, kx, ci), one matmul.
    fn v1_conv3x3(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (n, h, wd, _) = x.dims4()?;
        let xp = x.pad_with_zeros(1, 1, 1)?.pad_with_zeros(2, 1, 1)?;
        let mut cols = vec![];
        for dy in 0..3 {
            for dx in 0..3 {
                cols.push(xp.narrow(1, dy, h)?.narrow(2, dx, wd)?.contiguous()?);
            }
        }
        let cols = Tensor::cat(&cols, 3)?;
        let k = cols.dim(3)?;
        let y = cols.reshape((n * h * wd, k))?.matmul(w)?.broadcast_add(b)?;
        y.reshape((n, h, wd, w.dim(1)?))
    }

    /// v1 2×2 stride 2: each output pixel's block as (ky, kx, ci), one matmul.
    fn v1_down(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (n, h, wd, c) = x.dims4()?;
        let x = x
            .reshape((n, h / 2, 2, wd / 2, 2, c))?
            .permute((0, 1, 3, 2, 4, 5))?
            .contiguous()?
            .reshape((n * h / 2 * wd / 2, 4 * c))?;
        let y = x.matmul(w)?.broadcast_add(b)?;
        y.reshape((n, h / 2, wd / 2, w.dim(1)?))
    }

    /// v1 2×2 stride-2 transposed: one matmul, then each pixel's (ky, kx, co) block scattered.
    fn v1_up(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (n, h, wd, c) = x.dims4()?;
        let co = w.dim(1)? / 4;
        let y = x.reshape((n * h * wd, c))?.matmul(w)?;
        y.reshape((n, h, wd, 2, 2, co))?
            .permute((0, 1, 3, 2, 4, 5))?
            .contiguous()?
            .reshape((n, 2 * h, 2 * wd, co))?
            .broadcast_add(b)
    }

    /// Each layer, loaded from a v1 file, gives the v1 formula's output; and its converted
    /// kernel is candle's layout (checked against candle's own conv on the same input).
    #[test]
    fn v1_weights_give_the_v1_outputs() -> Result<()> {
        let (cin, cout) = (3, 5);
        let x = seeded(1, &[2, 6, 8, cin])?;
        let xn = to_nchw(&x)?;
        let b = seeded(2, &[cout])?;
        let b4 = b.reshape((1, cout, 1, 1))?;

        let w = seeded(3, &[9 * cin, cout])?;
        let conv = Conv3x3::new(v1_builder(&w, &b), cin, cout)?;
        let ours = to_nhwc(&conv.forward(&xn)?)?;
        assert!(max_diff(&ours, &v1_conv3x3(&x, &w, &b)?)? < 1e-5);
        let candle = xn.conv2d(&conv.w, 1, 1, 1, 1)?.broadcast_add(&b4)?;
        assert!(max_diff(&ours, &to_nhwc(&candle)?)? < 1e-5);

        let w = seeded(4, &[4 * cin, cout])?;
        let down = Down2x2::new(v1_builder(&w, &b), cin, cout)?;
        let ours = to_nhwc(&down.forward(&xn)?)?;
        assert!(max_diff(&ours, &v1_down(&x, &w, &b)?)? < 1e-5);
        let candle = xn.conv2d(&down.w, 0, 2, 1, 1)?.broadcast_add(&b4)?;
        assert!(max_diff(&ours, &to_nhwc(&candle)?)? < 1e-5);

        let w = seeded(5, &[cin, 4 * cout])?;
        let up = Up2x2::new(v1_builder(&w, &b), cin, cout)?;
        let ours = to_nhwc(&up.forward(&xn)?)?;
        assert!(max_diff(&ours, &v1_up(&x, &w, &b)?)? < 1e-5);
        let candle = xn.conv_transpose2d(&up.w, 0, 0, 2, 1)?.broadcast_add(&b4)?;
        assert!(max_diff(&ours, &to_nhwc(&candle)?)? < 1e-5);
        Ok(())
    }

    /// The residual block from v1 weights: `x + conv2(relu(conv1(x)))` by the v1 formula.
    #[test]
    fn resblock_from_v1_weights_matches_v1() -> Result<()> {
        let c = 4;
        let (w1, b1, w2, b2) = (
            seeded(6, &[9 * c, c])?,
            seeded(7, &[c])?,
            seeded(8, &[9 * c, c])?,
            seeded(9, &[c])?,
        );
        let t = HashMap::from([
            ("conv1.weight".to_string(), w1.clone()),
            ("conv1.bias".into(), b1.clone()),
            ("conv2.weight".into(), w2.clone()),
            ("conv2.bias".into(), b2.clone()),
        ]);
        let block = ResBlock::new(VarBuilder::from_tensors(t, DType::F32, &Device::Cpu), c)?;
        let x = seeded(10, &[2, 5, 7, c])?;
        let ours = to_nhwc(&block.forward(&to_nchw(&x)?)?)?;
        let v1 = (&x + v1_conv3x3(&v1_conv3x3(&x, &w1, &b1)?.relu()?, &w2, &b2)?)?;
        assert!(max_diff(&ours, &v1)? < 1e-5);
        Ok(())
    }

    /// New weights are created in candle's layout and the spatial sizes halve and double.
    #[test]
    fn new_layers_have_candle_layouts_and_shapes() -> Result<()> {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let down = Down2x2::new(vb.pp("d"), 4, 6)?;
        let up = Up2x2::new(vb.pp("u"), 6, 4)?;
        let conv = Conv3x3::new(vb.pp("c"), 4, 3)?;
        assert_eq!(down.w.dims(), &[6, 4, 2, 2]);
        assert_eq!(up.w.dims(), &[6, 4, 2, 2]);
        assert_eq!(conv.w.dims(), &[3, 4, 3, 3]);
        let x = seeded(11, &[2, 4, 8, 12])?;
        let d = down.forward(&x)?;
        assert_eq!(d.dims(), &[2, 6, 4, 6]);
        assert_eq!(up.forward(&d)?.dims(), &[2, 4, 8, 12]);
        assert_eq!(conv.forward(&x)?.dims(), &[2, 3, 8, 12]);
        Ok(())
    }

    /// The layers train: gradients reach the input and the weights through the fused ops.
    #[test]
    fn gradients_reach_input_and_weights() -> Result<()> {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let block = ResBlock::new(vb.pp("r"), 3)?;
        let down = Down2x2::new(vb.pp("d"), 3, 4)?;
        let up = Up2x2::new(vb.pp("u"), 4, 3)?;
        let x = Var::from_tensor(&seeded(12, &[2, 3, 4, 6])?)?;
        let y = up.forward(&down.forward_act(&block.forward(&x)?, Act::Relu)?)?;
        let g = y.sqr()?.sum_all()?.backward()?;
        assert!(g.get(&x).is_some());
        for v in vm.all_vars() {
            assert!(g.get(&v).is_some());
        }
        Ok(())
    }

    /// A checkpoint map: each v1 kernel and its two moments converted by its layer's kind (here
    /// the shapes alone could not tell: both v1 kernels are 16×16), biases and the step left
    /// alone; a second pass finds nothing to convert.
    #[test]
    fn upgrade_v1_converts_kernels_and_moments_by_kind() -> Result<()> {
        let mut t = HashMap::new();
        for (i, name) in ["d", "u"].into_iter().enumerate() {
            for (j, prefix) in ["", "optim.m.", "optim.v."].into_iter().enumerate() {
                let seed = 20 + 3 * i as u64 + j as u64;
                t.insert(format!("{prefix}{name}.weight"), seeded(seed, &[16, 16])?);
                let cout = if name == "d" { 16 } else { 4 };
                t.insert(format!("{prefix}{name}.bias"), seeded(seed + 10, &[cout])?);
            }
        }
        t.insert("train.step".into(), Tensor::new(&[7f32], &Device::Cpu)?);
        let old = t.clone();
        let build = |vb: VarBuilder<'static>| -> Result<()> {
            Down2x2::new(vb.pp("d"), 4, 16)?;
            Up2x2::new(vb.pp("u"), 16, 4)?;
            Ok(())
        };
        assert_eq!(upgrade_v1(&mut t, build)?, 2);
        for prefix in ["", "optim.m.", "optim.v."] {
            let d = format!("{prefix}d.weight");
            let u = format!("{prefix}u.weight");
            let want_d = Kernel::Conv.from_v1(&old[&d], 4, 16, 2)?;
            let want_u = Kernel::Transposed.from_v1(&old[&u], 16, 4, 2)?;
            assert_eq!(max_diff(&t[&d], &want_d)?, 0.0);
            assert_eq!(max_diff(&t[&u], &want_u)?, 0.0);
            let b = format!("{prefix}d.bias");
            assert_eq!(max_diff(&t[&b], &old[&b])?, 0.0);
        }
        assert_eq!(t["train.step"].to_vec1::<f32>()?, vec![7.0]);
        let again = t.clone();
        assert_eq!(upgrade_v1(&mut t, build)?, 0);
        assert_eq!(max_diff(&t["u.weight"], &again["u.weight"])?, 0.0);
        Ok(())
    }

    /// to_nchw and to_nhwc are inverse, for one and several channels.
    #[test]
    fn layout_round_trip() -> Result<()> {
        for c in [1, 3] {
            let x = seeded(13, &[2, 4, 5, c])?;
            let n = to_nchw(&x)?;
            assert_eq!(n.dims(), &[2, c, 4, 5]);
            assert_eq!(max_diff(&to_nhwc(&n)?, &x)?, 0.0);
        }
        Ok(())
    }
}
