//! Temporal consistency for video frames (Ruder, Dosovitskiy and Brox 2016): a
//! frame starts from the previous frame's stylised output warped onto it by the
//! optical flow, and a short-term temporal loss keeps it close to that warped
//! image wherever the flow is trusted.

use image::RgbImage;
use tch::{Device, Kind, Tensor};

use crate::error::{EngineError, Result};
use crate::flow::{warp, FramePair};
use crate::image_io::to_tensor;

/// The previous frame's output brought onto this frame, and how much to trust it.
pub struct TemporalPrior {
    /// `[1,3,H,W]` RGB in 0..1 at the frame's render size.
    pub warped: Tensor,
    /// `[1,1,H,W]` in 0..1: 1 where the flow is trusted.
    pub mask: Tensor,
    /// Weight of the temporal loss (see [`TemporalTerm`]).
    pub weight: f64,
}

impl TemporalPrior {
    /// `previous` (the previous frame's stylised output) warped onto the current
    /// frame by `pair`, resampled to the pair's grid first if its size differs.
    pub fn new(previous: &RgbImage, pair: &FramePair, weight: f64) -> Result<TemporalPrior> {
        let weight = checked_weight(weight)?;
        let size = pair.backward.size();
        let (h, w) = (size[2], size[3]);
        let prev = to_tensor(previous, Kind::Float, Device::Cpu);
        let prev = if (prev.size()[2], prev.size()[3]) == (h, w) { prev } else { prev.f_upsample_bilinear2d([h, w], false, None, None)? };
        let warped = warp(&prev, &pair.backward.f_to_device(Device::Cpu)?)?;
        Ok(TemporalPrior { warped, mask: pair.mask.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?, weight })
    }

    /// Holds a frame near `image` everywhere (no motion, every pixel trusted):
    /// the start of a seam frame, from the cross-fade of two segments' copies.
    pub fn hold(image: &RgbImage, weight: f64) -> Result<TemporalPrior> {
        let (w, h) = (image.width() as i64, image.height() as i64);
        let still =
            FramePair { backward: Tensor::f_zeros([1, 2, h, w], (Kind::Float, Device::Cpu))?, mask: Tensor::f_ones([1, 1, h, w], (Kind::Float, Device::Cpu))? };
        TemporalPrior::new(image, &still, weight)
    }

    /// The warped image and mask at `h`×`w` on `device` in `kind`.
    pub fn at(&self, h: i64, w: i64, kind: Kind, device: Device) -> Result<(Tensor, Tensor)> {
        let resize = |t: &Tensor| -> Result<Tensor> {
            let t = t.f_to_device(device)?.f_to_kind(kind)?;
            if (t.size()[2], t.size()[3]) == (h, w) {
                return Ok(t);
            }
            Ok(t.f_upsample_bilinear2d([h, w], false, None, None)?)
        };
        Ok((resize(&self.warped)?, resize(&self.mask)?))
    }
}

/// The short-term temporal loss of one scale: `weight / D · Σ c(p)·(x(p) − ω(p))²`
/// over the D = 3·H·W values of the image, `x` and the warped previous output
/// `ω` in network units, `c` the mask. `weight` here is absolute; a video's
/// `temporal_weight` is relative ([`TemporalTerm::relative`]).
pub struct TemporalTerm {
    pub target: Tensor,
    pub mask: Tensor,
    pub weight: f64,
}

impl TemporalTerm {
    /// The term for a frame whose other losses (content, style, tv) total
    /// `others` at its start, with `relative` weight: straying from the warped
    /// previous frame everywhere by as much as the content frame's own spread
    /// (its variance in network units) costs `relative × others`. So one
    /// weight holds the same balance at every size, preset and style, where
    /// an absolute weight meant strong at one size and nothing at another
    /// (the style loss's scale moves by 30× between 64 and 256 px).
    pub fn relative(target: Tensor, mask: Tensor, relative: f64, others: f64, content: &Tensor) -> Result<TemporalTerm> {
        let relative = checked_weight(relative)?;
        let spread = content.f_var(false)?.double_value(&[]);
        let weight = if others.is_finite() && others > 0.0 && spread > 0.0 { relative * others / spread } else { 0.0 };
        tracing::debug!(relative, others, spread, weight, "temporal term");
        Ok(TemporalTerm { target, mask, weight })
    }

    pub fn loss(&self, image: &Tensor) -> Result<Tensor> {
        let values = image.numel() as f64;
        let diff = image.f_sub(&self.target)?.f_square()?.f_mul(&self.mask)?;
        Ok(diff.f_sum(image.kind())?.f_mul_scalar(self.weight / values)?)
    }
}

/// A video's `temporal_weight`: a finite number ≥ 0.
fn checked_weight(weight: f64) -> Result<f64> {
    if weight.is_finite() && weight >= 0.0 {
        Ok(weight)
    } else {
        Err(EngineError::param("temporal_weight", format!("{weight} is not a finite number ≥ 0")))
    }
}

/// The start of a frame: the warped previous output where the mask trusts it,
/// `fallback` (the content, in network units) elsewhere.
pub fn start_image(warped_net: &Tensor, mask: &Tensor, fallback: &Tensor) -> Result<Tensor> {
    let keep = mask.f_expand_as(warped_net)?;
    Ok(warped_net.f_mul(&keep)?.f_add(&fallback.f_mul(&(keep.f_neg()? + 1.0))?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loss_counts_only_trusted_pixels() {
        let x = Tensor::ones([1, 3, 2, 2], (Kind::Double, Device::Cpu));
        let target = Tensor::zeros([1, 3, 2, 2], (Kind::Double, Device::Cpu));
        let mask = Tensor::from_slice(&[1.0f64, 0.0, 0.0, 1.0]).view([1, 1, 2, 2]);
        let term = TemporalTerm { target, mask, weight: 6.0 };
        // 2 trusted pixels × 3 channels × 1² of 12 values, times 6
        assert_eq!(term.loss(&x).unwrap().double_value(&[]), 3.0);
    }

    #[test]
    fn a_relative_weight_scales_with_the_other_losses_and_the_contents_spread() {
        let flat = || Tensor::zeros([1, 3, 2, 2], (Kind::Double, Device::Cpu));
        let mask = || Tensor::ones([1, 1, 2, 2], (Kind::Double, Device::Cpu));
        // values 0, 2, 4, 6 (each thrice): variance 5
        let content = Tensor::from_slice(&[0.0f64, 2.0, 4.0, 6.0]).view([1, 1, 2, 2]).repeat([1, 3, 1, 1]);
        let term = TemporalTerm::relative(flat(), mask(), 2.0, 10.0, &content).unwrap();
        assert!((term.weight - 2.0 * 10.0 / 5.0).abs() < 1e-12, "{}", term.weight);
        // straying by the content's spread everywhere costs weight × the other losses
        let strayed = Tensor::full([1, 3, 2, 2], 5f64.sqrt(), (Kind::Double, Device::Cpu));
        assert!((term.loss(&strayed).unwrap().double_value(&[]) - 2.0 * 10.0).abs() < 1e-9);
        // ten times the other losses (another size or preset): ten times the weight
        let tenfold = TemporalTerm::relative(flat(), mask(), 2.0, 100.0, &content).unwrap();
        assert!((tenfold.weight / term.weight - 10.0).abs() < 1e-9);
        assert_eq!(TemporalTerm::relative(flat(), mask(), 2.0, 10.0, &flat()).unwrap().weight, 0.0, "a flat frame: no scale to hold to");
        assert!(TemporalTerm::relative(flat(), mask(), f64::NAN, 10.0, &content).is_err());
    }

    #[test]
    fn the_start_falls_back_where_the_flow_is_not_trusted() {
        let warped = Tensor::full([1, 3, 1, 2], 5.0, (Kind::Float, Device::Cpu));
        let content = Tensor::full([1, 3, 1, 2], -1.0, (Kind::Float, Device::Cpu));
        let mask = Tensor::from_slice(&[1.0f32, 0.0]).view([1, 1, 1, 2]);
        let start = start_image(&warped, &mask, &content).unwrap();
        assert_eq!(Vec::<f32>::try_from(start.view([-1])).unwrap(), vec![5.0, -1.0, 5.0, -1.0, 5.0, -1.0]);
    }

    #[test]
    fn a_negative_weight_is_refused() {
        let pair =
            FramePair { backward: Tensor::zeros([1, 2, 4, 4], (Kind::Float, Device::Cpu)), mask: Tensor::ones([1, 1, 4, 4], (Kind::Float, Device::Cpu)) };
        let err = TemporalPrior::new(&RgbImage::new(4, 4), &pair, -1.0).err().expect("refused");
        assert!(err.to_string().contains("temporal_weight"), "{err}");
    }
}
