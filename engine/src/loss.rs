//! The style-transfer objective: content, style and total-variation terms over
//! VGG-16 features, with the targets computed once per scale.
//!
//! The optimised image is stored as one flat NHWC-ordered vector, so that its
//! `[1,3,H,W]` view is channels-last with no copy, and its gradient comes back
//! flat for the optimiser with no copy either.

use tch::Tensor;

use crate::error::{EngineError, Result};
use crate::optim::{Evaluation, Objective};
use crate::params::{ContentLoss, RenderParams, StyleLoss};
use crate::temporal::TemporalTerm;
use crate::vgg::{LayerId, Vgg16};

/// Names of the values an evaluation reports, in order.
pub const LOSS_NAMES: [&str; 4] = ["total", "content", "style", "tv"];

pub use crate::grams::gram;

/// Σ(Δx² + Δy²)^exponent over the (H-1)×(W-1) grid, per channel.
pub fn total_variation(image: &Tensor, exponent: f64) -> Result<Tensor> {
    let size = image.size();
    let [_, _, h, w] = size[..] else {
        return Err(EngineError::param("image", format!("expected [N,C,H,W], got {size:?}")));
    };
    if h < 2 || w < 2 {
        return Ok(Tensor::zeros([], (image.kind(), image.device())));
    }
    let corner = image.f_narrow(2, 0, h - 1)?.f_narrow(3, 0, w - 1)?;
    let down = image.f_narrow(2, 1, h - 1)?.f_narrow(3, 0, w - 1)?;
    let right = image.f_narrow(2, 0, h - 1)?.f_narrow(3, 1, w - 1)?;
    let sum_sq = (&corner - down).f_square()?.f_add(&(&corner - right).f_square()?)?;
    let terms = if exponent == 1.0 { sum_sq } else { sum_sq.f_pow_tensor_scalar(exponent)? };
    Ok(terms.f_sum(image.kind())?)
}

/// The `[1,3,H,W]` channels-last view of a flat NHWC vector of an H×W image.
pub fn image_view(flat: &Tensor, height: i64, width: i64) -> Result<Tensor> {
    Ok(flat.f_view([1, height, width, 3])?.f_permute([0, 3, 1, 2])?)
}

/// One job's objective at one scale without the network: its targets, weights
/// and image size. [`StyleObjective`] pairs it with a model; a
/// [`crate::batch::BatchEvaluator`] evaluates several of them in one pass.
pub struct LossSpec {
    /// Every layer the losses read, sorted, without repeats.
    layers: Vec<LayerId>,
    content: Vec<(usize, Tensor)>,
    style: Vec<(usize, Tensor, f64)>,
    content_weight: f64,
    content_loss: ContentLoss,
    style_loss: StyleLoss,
    tv_weight: f64,
    tv_exponent: f64,
    height: i64,
    width: i64,
    /// A video frame's pull towards the previous frame's warped output.
    temporal: Option<TemporalTerm>,
    /// A tile's part of its whole image's pixels (1: the image is whole); see [`StyleObjective::with_share`].
    share: f64,
}

impl LossSpec {
    /// The layers [`LossSpec::losses_from`] wants, in the order it wants them.
    pub fn layers(&self) -> &[LayerId] {
        &self.layers
    }

    pub fn height(&self) -> i64 {
        self.height
    }

    pub fn width(&self) -> i64 {
        self.width
    }

    /// The `[1,3,H,W]` channels-last view of a flat NHWC vector.
    pub fn image_view(&self, flat: &Tensor) -> Result<Tensor> {
        image_view(flat, self.height, self.width)
    }

    /// [total, content, style, tv] as a 1-D tensor (differentiable), from the
    /// image [1,3,H,W] and its activations at [`LossSpec::layers`] (same order).
    pub fn losses_from(&self, features: &[Tensor], image: &Tensor) -> Result<Tensor> {
        let zero = || Tensor::zeros([], (image.kind(), image.device()));
        let mut content = zero();
        for (slot, target) in &self.content {
            let diff_sq = features[*slot].f_sub(target)?.f_square()?;
            let term = match self.content_loss {
                ContentLoss::Sum => diff_sq.f_sum(image.kind())?,
                ContentLoss::Mse => diff_sq.f_mean(image.kind())?,
            };
            content += term;
        }
        // a tile's loss is its share of the loss of a whole image made of
        // copies of it: sums stay as they are, means and Grams are taken over the whole
        let share = self.share;
        let content = match self.content_loss {
            ContentLoss::Mse if share != 1.0 => content * (self.content_weight * share),
            _ => content * self.content_weight,
        };
        let pixels = (self.height * self.width) as f64 / share;
        let mut style = zero();
        for (slot, target, weight) in &self.style {
            let g = gram(&features[*slot], self.style_loss == StyleLoss::Mse)?;
            let term = match self.style_loss {
                StyleLoss::Keras => {
                    let g = if share == 1.0 { g } else { g.f_div_scalar(share)? };
                    g.f_sub(target)?.f_square()?.f_sum(image.kind())?.f_div_scalar(4.0 * 9.0 * pixels * pixels)?
                }
                StyleLoss::Mse => g.f_sub(target)?.f_square()?.f_mean(image.kind())?,
            };
            style += term * (*weight * share);
        }
        let tv = if self.tv_weight == 0.0 { zero() } else { total_variation(image, self.tv_exponent)? * self.tv_weight };
        let mut total = &content + &style + &tv;
        if let Some(term) = &self.temporal {
            // part of the total only: the trace keeps content, style and tv apart
            total += term.loss(image)?;
        }
        Ok(Tensor::f_stack(&[total, content, style, tv], 0)?)
    }
}

/// The objective of one scale of one job.
pub struct StyleObjective {
    model: Vgg16,
    spec: LossSpec,
}

impl StyleObjective {
    /// `content` and each of `styles` are [1,3,h,w] in network units; `blend` sums to 1.
    pub fn new(model: Vgg16, params: &RenderParams, content: &Tensor, styles: &[Tensor], blend: &[f64]) -> Result<StyleObjective> {
        let mut layers: Vec<LayerId> = params.content_layers.iter().chain(&params.style_layers).copied().collect();
        layers.sort();
        layers.dedup();
        let slot = |l: &LayerId| layers.iter().position(|x| x == l).expect("collected above");
        let normalise = params.style_loss == StyleLoss::Mse;
        let (content_targets, style_targets) = tch::no_grad(|| -> Result<_> {
            let features = model.forward(content, &layers)?;
            let content_targets: Vec<(usize, Tensor)> = params.content_layers.iter().map(|l| (slot(l), features[slot(l)].detach())).collect();
            let mut grams: Vec<Option<Tensor>> = params.style_layers.iter().map(|_| None).collect();
            for (style, &weight) in styles.iter().zip(blend) {
                // chunked when large: a tile's targets are a whole print's
                for (acc, g) in grams.iter_mut().zip(crate::grams::grams(&model, style, &params.style_layers, normalise)?) {
                    let g = g.f_mul_scalar(weight)?;
                    *acc = Some(match acc.take() {
                        Some(sum) => sum + g,
                        None => g,
                    });
                }
            }
            let weights = params.style_layer_effective_weights();
            let style_targets =
                params.style_layers.iter().zip(grams).zip(weights).map(|((l, g), w)| (slot(l), g.expect("at least one style"), w)).collect::<Vec<_>>();
            Ok((content_targets, style_targets))
        })?;
        let size = content.size();
        let spec = LossSpec {
            layers,
            content: content_targets,
            style: style_targets,
            content_weight: params.content_weight,
            content_loss: params.content_loss,
            style_loss: params.style_loss,
            tv_weight: params.tv_weight,
            tv_exponent: params.tv_exponent,
            height: size[2],
            width: size[3],
            temporal: None,
            share: 1.0,
        };
        Ok(StyleObjective { model, spec })
    }

    /// Makes this the objective of a tile that is `share` (0..=1) of its whole
    /// image's pixels: its loss becomes its part of the whole's, so that each
    /// pixel's gradient is what it would be in the whole image if every tile
    /// looked like this one (content and style targets are the whole's, at
    /// the whole's size: the content cropped, the style's Grams whole).
    pub fn with_share(mut self, share: f64) -> Result<StyleObjective> {
        if !(share > 0.0 && share <= 1.0) {
            return Err(EngineError::param("tile", format!("a share of {share} is outside 0..=1")));
        }
        self.spec.share = share;
        Ok(self)
    }

    /// Adds the short-term temporal loss (a video frame's; target and mask at this scale's size).
    pub fn with_temporal(mut self, term: TemporalTerm) -> Result<StyleObjective> {
        let want = [1, 3, self.spec.height, self.spec.width];
        if term.target.size() != want || term.mask.size() != [1, 1, self.spec.height, self.spec.width] {
            return Err(EngineError::param(
                "temporal",
                format!("target {:?} and mask {:?} do not fit the image {want:?}", term.target.size(), term.mask.size()),
            ));
        }
        self.spec.temporal = Some(term);
        Ok(self)
    }

    /// A tile's style targets, made its own: the whole style's Grams, each
    /// moved by how the tile's Gram differs from the whole's in `whole` (the
    /// scale before's picture at this scale, [1,3,H,W]) cropped to `tile`.
    /// The whole's targets still hold on average over the tiles, while a
    /// dark corner is not pushed to hold the whole painting's light colours
    /// on its own. Call after [`StyleObjective::with_share`].
    pub fn with_local_style(mut self, whole: &Tensor, tile: &Tensor) -> Result<StyleObjective> {
        let (share, normalise) = (self.spec.share, self.spec.style_loss == StyleLoss::Mse);
        tch::no_grad(|| -> Result<()> {
            // the whole picture chunk by chunk: a tile's device holds a tile's worth
            let of_whole = crate::grams::grams(&self.model, whole, &self.spec.layers, normalise)?;
            let of_tile = self.model.forward(tile, &self.spec.layers)?;
            for (slot, target, _) in &mut self.spec.style {
                let g_whole = &of_whole[*slot];
                let g_tile = gram(&of_tile[*slot], normalise)?;
                // a Gram over the tile's pixels, as over the whole's (see `losses_from`)
                let g_tile = if normalise { g_tile } else { g_tile.f_div_scalar(share)? };
                *target = target.f_add(&g_tile.f_sub(g_whole)?)?;
            }
            Ok(())
        })?;
        Ok(self)
    }

    /// The job's part, for evaluating it together with others.
    pub fn into_spec(self) -> LossSpec {
        self.spec
    }

    pub fn spec(&self) -> &LossSpec {
        &self.spec
    }

    pub fn height(&self) -> i64 {
        self.spec.height
    }

    pub fn width(&self) -> i64 {
        self.spec.width
    }

    /// The `[1,3,H,W]` channels-last view of a flat NHWC vector.
    pub fn image_view(&self, flat: &Tensor) -> Result<Tensor> {
        self.spec.image_view(flat)
    }

    /// A `[1,3,H,W]` image as the flat NHWC vector the optimiser works on.
    pub fn flatten(image: &Tensor) -> Result<Tensor> {
        Ok(image.f_permute([0, 2, 3, 1])?.f_contiguous()?.f_view([-1])?)
    }

    /// [total, content, style, tv] as a 1-D tensor (differentiable).
    pub fn losses(&self, image: &Tensor) -> Result<Tensor> {
        let features = self.model.forward(image, &self.spec.layers)?;
        self.spec.losses_from(&features, image)
    }
}

impl Objective for StyleObjective {
    fn evaluate(&mut self, x: &Tensor) -> Result<Evaluation> {
        let leaf = x.detach().set_requires_grad(true);
        let values = self.losses(&self.image_view(&leaf)?)?;
        values.get(0).f_backward()?;
        let grad = leaf.grad();
        if !grad.defined() {
            return Err(EngineError::param("loss", "no gradient reached the image (all weights zero?)"));
        }
        Ok(Evaluation { values: values.detach(), grad })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn gram_matches_the_definition() {
        let f = Tensor::randn([1, 4, 3, 5], (Kind::Double, Device::Cpu));
        let g = gram(&crate::vgg::channels_last(&f), false).unwrap();
        let flat = f.view([4, 15]);
        let expect = flat.matmul(&flat.transpose(0, 1));
        assert!(f64::try_from((g - expect).abs().max()).unwrap() < 1e-12);
    }

    #[test]
    fn total_variation_of_a_ramp() {
        // x[i,j] = j: Δx = 0, Δy = 1 on every one of (H-1)(W-1) cells per channel.
        let img = Tensor::arange(4, (Kind::Double, Device::Cpu)).view([1, 1, 1, 4]).expand([1, 2, 3, 4], true);
        let tv = f64::try_from(total_variation(&img, 1.25).unwrap()).unwrap();
        assert!((tv - 2.0 * 2.0 * 3.0).abs() < 1e-12, "{tv}");
    }
}
