//! Optical flow between two frames, on the engine's tensors (CPU or GPU), with no
//! learned weights: coarse-to-fine Horn–Schunck with warping. At each pyramid
//! level the second image is warped by the current flow and the linearised
//! brightness-constancy + smoothness equations are solved for the increment by
//! Jacobi iterations; a few warps per level let it follow motions far larger than
//! a pixel.
//!
//! [`reliability`] is the mask of Ruder, Dosovitskiy and Brox (2016): a pixel is
//! trusted unless the forward–backward check fails (disocclusion), it sits on a
//! motion boundary, or its match falls outside the other frame.
//!
//! Conventions: images are `[1,C,H,W]` with values in 0..1; a flow is `[1,2,H,W]`
//! (x then y displacement, in pixels) on the grid of the frame it is computed
//! for: `flow(a, b)` is `w` with `a(p) ≈ b(p + w(p))`.

use tch::{Device, Kind, Tensor};

use crate::error::{EngineError, Result};

/// Knobs of the flow solver. The defaults are what the tests and the video
/// measurements ran with.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowParams {
    /// Smoothness weight (Horn–Schunck α) for intensities in 0..1. 0.2: on
    /// `make bench-video`'s clips (photos moved by a known zoom and rotation,
    /// ~0.35 px a frame at 96 px) α = 0.03 followed the frames' noise (mean
    /// end-point error 0.14–0.19 px against the true motion) and a video held
    /// to that warp shimmered; 0.2 gives 0.03–0.05 px, below OpenCV's
    /// Farneback on the same frames (0.055–0.094; docs/video.md).
    pub alpha: f64,
    /// Each coarser level is this fraction of the next finer one.
    pub pyramid_scale: f64,
    /// The coarsest level's short side is at least this.
    pub min_side: i64,
    /// Warps (re-linearisations) per level.
    pub warps: u32,
    /// Jacobi iterations per warp.
    pub iterations: u32,
    /// Gaussian pre-smoothing of both images at each level (σ in pixels).
    pub sigma: f64,
    /// Image-driven smoothness: the flow is smoothed less between neighbours
    /// whose intensities differ by more than about this (0..1), so it keeps a
    /// moving object's edge instead of spreading its motion over the
    /// background. 0: classic Horn–Schunck, smooth everywhere. [`frame_pair`]
    /// uses it for the forward–backward check only (0.03: the disoccluded strip
    /// of the tests' moving square is 25 % trusted, against 98 % with 0).
    pub edge: f64,
}

impl Default for FlowParams {
    fn default() -> Self {
        FlowParams { alpha: 0.2, pyramid_scale: 0.5, min_side: 12, warps: 4, iterations: 80, sigma: 1.0, edge: 0.03 }
    }
}

fn shape4(t: &Tensor, what: &str) -> Result<(i64, i64, i64, i64)> {
    match t.size()[..] {
        [n, c, h, w] => Ok((n, c, h, w)),
        ref other => Err(EngineError::param(what, format!("expected [N,C,H,W], got {other:?}"))),
    }
}

/// Mean of the colour channels: `[1,C,H,W]` → `[1,1,H,W]`.
pub fn gray(image: &Tensor) -> Result<Tensor> {
    Ok(image.f_mean_dim(1, true, Kind::Float)?)
}

/// Convolution of every channel with the same small kernel `[kh,kw]`, edges
/// replicated so the output keeps the input's size.
fn filter(image: &Tensor, kernel: &Tensor) -> Result<Tensor> {
    let (_, c, _, _) = shape4(image, "image")?;
    let (kh, kw) = (kernel.size()[0], kernel.size()[1]);
    let padded = image.f_replication_pad2d([kw / 2, kw / 2, kh / 2, kh / 2])?;
    let weight = kernel.f_to_kind(image.kind())?.f_to_device(image.device())?.f_view([1, 1, kh, kw])?.f_repeat([c, 1, 1, 1])?;
    Ok(padded.f_conv2d(&weight, None::<Tensor>, [1, 1], [0, 0], [1, 1], c)?)
}

fn kernel_1d(values: &[f32]) -> Tensor {
    Tensor::from_slice(values)
}

/// Gaussian blur with standard deviation `sigma` pixels (separable).
pub fn blur(image: &Tensor, sigma: f64) -> Result<Tensor> {
    if sigma <= 0.0 {
        return Ok(image.shallow_clone());
    }
    let radius = (3.0 * sigma).ceil() as i64;
    let taps: Vec<f32> = (-radius..=radius).map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp() as f32).collect();
    let sum: f32 = taps.iter().sum();
    let taps: Vec<f32> = taps.iter().map(|t| t / sum).collect();
    let row = kernel_1d(&taps).f_view([1, -1])?;
    let col = kernel_1d(&taps).f_view([-1, 1])?;
    filter(&filter(image, &row)?, &col)
}

/// x and y derivatives by the five-point stencil (−1, 8, 0, −8, 1)/12.
fn gradients(image: &Tensor) -> Result<(Tensor, Tensor)> {
    let taps = [1.0 / 12.0, -8.0 / 12.0, 0.0, 8.0 / 12.0, -1.0 / 12.0];
    let dx = filter(image, &kernel_1d(&taps).f_view([1, 5])?)?;
    let dy = filter(image, &kernel_1d(&taps).f_view([5, 1])?)?;
    Ok((dx, dy))
}

/// Horn–Schunck's neighbourhood: the eight neighbours' offsets and weights
/// (1/6 on the sides, 1/12 on the corners).
const NEIGHBOURS: [(i64, i64, f64); 8] = [
    (-1, -1, 1.0 / 12.0),
    (0, -1, 1.0 / 6.0),
    (1, -1, 1.0 / 12.0),
    (-1, 0, 1.0 / 6.0),
    (1, 0, 1.0 / 6.0),
    (-1, 1, 1.0 / 12.0),
    (0, 1, 1.0 / 6.0),
    (1, 1, 1.0 / 12.0),
];

/// `t` (`[1,C,H,W]`) read at `p + (dx, dy)`, edges replicated.
fn shifted(t: &Tensor, dx: i64, dy: i64) -> Result<Tensor> {
    let (_, _, h, w) = shape4(t, "field")?;
    Ok(t.f_replication_pad2d([1, 1, 1, 1])?.f_narrow(3, 1 + dx, w)?.f_narrow(2, 1 + dy, h)?)
}

/// Where the flow may be smoothed.
enum Smoothness {
    /// Classic Horn–Schunck: every neighbour with its weight (one 3×3 filter).
    Uniform,
    /// Per neighbour, its Horn–Schunck weight lowered by `exp(−(ΔI/edge)²/2)`
    /// across an intensity step ΔI of the image.
    Edges {
        weights: Vec<Tensor>,
        /// Σ of the weights at each pixel: 1 where the image is flat.
        total: Tensor,
    },
}

impl Smoothness {
    fn new(image: &Tensor, edge: f64) -> Result<Smoothness> {
        if edge <= 0.0 {
            return Ok(Smoothness::Uniform);
        }
        let mut weights = Vec::with_capacity(NEIGHBOURS.len());
        for &(dx, dy, k) in &NEIGHBOURS {
            let step = shifted(image, dx, dy)?.f_sub(image)?;
            weights.push(step.f_square()?.f_mul_scalar(-0.5 / (edge * edge))?.f_exp()?.f_mul_scalar(k)?);
        }
        let mut total = weights[0].shallow_clone();
        for w in &weights[1..] {
            total = total.f_add(w)?;
        }
        Ok(Smoothness::Edges { weights, total })
    }

    /// The weighted mean of `field`'s neighbours (`field` itself where no
    /// neighbour counts).
    fn mean(&self, field: &Tensor) -> Result<Tensor> {
        match self {
            Smoothness::Uniform => {
                let mut kernel = [0.0; 9];
                for &(dx, dy, k) in &NEIGHBOURS {
                    kernel[((dy + 1) * 3 + dx + 1) as usize] = k;
                }
                filter(field, &Tensor::from_slice(&kernel).f_view([3, 3])?)
            }
            Smoothness::Edges { weights, total } => {
                let mut sum = field.f_zeros_like()?;
                for (&(dx, dy, _), w) in NEIGHBOURS.iter().zip(weights) {
                    sum = sum.f_add(&shifted(field, dx, dy)?.f_mul(w)?)?;
                }
                Ok(sum.f_div(&total.f_clamp_min(1e-6)?)?)
            }
        }
    }

    /// Horn–Schunck's denominator `|∇I|² + α²Σw`: the smoothness pulls less
    /// where the neighbours are cut off.
    fn denominator(&self, gradient2: Tensor, alpha2: f64) -> Result<Tensor> {
        match self {
            Smoothness::Uniform => Ok(gradient2 + alpha2),
            Smoothness::Edges { total, .. } => Ok(gradient2.f_add(&total.f_mul_scalar(alpha2)?)?),
        }
    }
}

/// The sampling grid `p + w(p)` in grid_sample's normalised coordinates.
fn grid(flow: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = shape4(flow, "flow")?;
    let opts = (Kind::Float, flow.device());
    let xs = Tensor::f_arange(w, opts)?.f_view([1, 1, w])?.f_expand([1, h, w], false)?;
    let ys = Tensor::f_arange(h, opts)?.f_view([1, h, 1])?.f_expand([1, h, w], false)?;
    let flow = flow.f_to_kind(Kind::Float)?;
    let x = (xs + flow.f_select(1, 0)?) * (2.0 / (w - 1).max(1) as f64) - 1.0;
    let y = (ys + flow.f_select(1, 1)?) * (2.0 / (h - 1).max(1) as f64) - 1.0;
    Ok(Tensor::f_stack(&[x, y], 3)?)
}

/// `image` sampled at `p + flow(p)` (bilinear, edges clamped): the frame
/// `flow` points into, brought onto the grid `flow` is defined on.
pub fn warp(image: &Tensor, flow: &Tensor) -> Result<Tensor> {
    let (n, _, _, _) = shape4(image, "image")?;
    let g = grid(flow)?.f_to_kind(image.kind())?.f_expand([n, -1, -1, -1], false)?;
    // interpolation 0 = bilinear, padding 1 = border, corners aligned to pixel centres
    Ok(image.f_grid_sampler(&g, 0, 1, true)?)
}

/// 1 where `p + flow(p)` lies inside the frame, 0 outside: `[1,1,H,W]`.
pub fn inside(flow: &Tensor) -> Result<Tensor> {
    let g = grid(flow)?;
    let ok = g.f_abs()?.f_le(1.0 + 1e-6)?.f_all_dim(3, false)?;
    Ok(ok.f_to_kind(Kind::Float)?.f_unsqueeze(1)?)
}

/// A flow resampled to `h`×`w`, its vectors scaled with the grid.
pub fn resize_flow(flow: &Tensor, h: i64, w: i64) -> Result<Tensor> {
    let (_, _, fh, fw) = shape4(flow, "flow")?;
    if (fh, fw) == (h, w) {
        return Ok(flow.shallow_clone());
    }
    let resized = flow.f_upsample_bilinear2d([h, w], true, None, None)?;
    let scale = Tensor::from_slice(&[(w - 1).max(1) as f32 / (fw - 1).max(1) as f32, (h - 1).max(1) as f32 / (fh - 1).max(1) as f32])
        .f_to_device(flow.device())?
        .f_view([1, 2, 1, 1])?;
    Ok(resized * scale)
}

fn downsample(image: &Tensor, h: i64, w: i64) -> Result<Tensor> {
    Ok(image.f_upsample_bilinear2d([h, w], true, None, None)?)
}

/// The flow `w` from `a` to `b` (`a(p) ≈ b(p + w(p))`), both `[1,C,H,W]` in 0..1
/// of the same size: `[1,2,H,W]`.
pub fn flow(a: &Tensor, b: &Tensor, params: &FlowParams) -> Result<Tensor> {
    let (_, _, h, w) = shape4(a, "a")?;
    if b.size() != a.size() {
        return Err(EngineError::param("b", format!("frames differ in size: {:?} and {:?}", a.size(), b.size())));
    }
    if !(params.pyramid_scale > 0.0 && params.pyramid_scale < 1.0) || params.alpha <= 0.0 || params.edge.is_nan() || params.edge < 0.0 {
        return Err(EngineError::param("flow", "pyramid_scale must be in (0, 1), alpha positive and edge ≥ 0"));
    }
    tch::no_grad(|| {
        let a = gray(&a.f_to_kind(Kind::Float)?)?;
        let b = gray(&b.f_to_kind(Kind::Float)?)?;
        // level sizes, finest first
        let mut sizes = vec![(h, w)];
        loop {
            let (lh, lw) = *sizes.last().expect("one level");
            let (nh, nw) = ((lh as f64 * params.pyramid_scale).round() as i64, (lw as f64 * params.pyramid_scale).round() as i64);
            if nh.min(nw) < params.min_side {
                break;
            }
            sizes.push((nh, nw));
        }
        let alpha2 = params.alpha * params.alpha;
        let mut u = Tensor::f_zeros([1, 2, sizes.last().expect("one level").0, sizes.last().expect("one level").1], (Kind::Float, a.device()))?;
        for &(lh, lw) in sizes.iter().rev() {
            u = resize_flow(&u, lh, lw)?;
            let a_l = blur(&downsample(&a, lh, lw)?, params.sigma)?;
            let b_l = blur(&downsample(&b, lh, lw)?, params.sigma)?;
            let smooth = Smoothness::new(&a_l, params.edge)?;
            for _ in 0..params.warps {
                let b_w = warp(&b_l, &u)?;
                let (bx, by) = gradients(&b_w)?;
                let (ax, ay) = gradients(&a_l)?;
                // gradients averaged over both frames, as in the symmetric linearisation
                let ix = (bx + ax) * 0.5;
                let iy = (by + ay) * 0.5;
                let it = &b_w - &a_l;
                let denom = smooth.denominator(&ix * &ix + &iy * &iy, alpha2)?;
                let (u0, v0) = (u.f_select(1, 0)?.f_unsqueeze(1)?, u.f_select(1, 1)?.f_unsqueeze(1)?);
                let (mut uu, mut vv) = (u0.copy(), v0.copy());
                for _ in 0..params.iterations {
                    let ub = smooth.mean(&uu)?;
                    let vb = smooth.mean(&vv)?;
                    let residual = (&ix * (&ub - &u0) + &iy * (&vb - &v0) + &it) / &denom;
                    uu = ub - &ix * &residual;
                    vv = vb - &iy * &residual;
                }
                u = Tensor::f_cat(&[uu, vv], 1)?;
            }
        }
        Ok(u)
    })
}

/// The mask of pixels of frame `a` whose flow `ab` (a → b, on a's grid) can be
/// trusted, given `ba` (b → a, on b's grid): `[1,1,H,W]` of 0 and 1. Untrusted:
/// the forward–backward check fails or the match falls outside `b`
/// ([`consistent`]), or a motion boundary ([`smooth_motion`]).
pub fn reliability(ab: &Tensor, ba: &Tensor) -> Result<Tensor> {
    Ok(consistent(ab, ba)?.f_mul(&smooth_motion(ab)?)?)
}

/// 1 where the forward–backward check passes (`|w̃ + ŵ|² ≤ 0.01(|w̃|² + |ŵ|²) +
/// 0.5`, with ŵ = `ab` and w̃ = `ba` read at `p + ŵ(p)`) and the match lies
/// inside `b`: a disocclusion fails it.
pub fn consistent(ab: &Tensor, ba: &Tensor) -> Result<Tensor> {
    tch::no_grad(|| {
        let forward = ab.f_to_kind(Kind::Float)?;
        let back_at = warp(&ba.f_to_kind(Kind::Float)?, &forward)?;
        let ok = squared_norm(&(&back_at + &forward))?.f_le_tensor(&((squared_norm(&back_at)? + squared_norm(&forward)?) * 0.01 + 0.5))?;
        Ok(ok.f_to_kind(Kind::Float)? * inside(&forward)?)
    })
}

/// 1 away from motion boundaries of the flow `ab`: `|∇u|² + |∇v|² ≤ 0.01|ŵ|² + 0.002`.
pub fn smooth_motion(ab: &Tensor) -> Result<Tensor> {
    tch::no_grad(|| {
        let forward = ab.f_to_kind(Kind::Float)?;
        let (ux, uy) = gradients(&forward.f_narrow(1, 0, 1)?)?;
        let (vx, vy) = gradients(&forward.f_narrow(1, 1, 1)?)?;
        let variation = ux.f_square()? + uy.f_square()? + vx.f_square()? + vy.f_square()?;
        Ok(variation.f_le_tensor(&(squared_norm(&forward)? * 0.01 + 0.002))?.f_to_kind(Kind::Float)?)
    })
}

/// `|w|²` per pixel of a `[1,2,H,W]` flow: `[1,1,H,W]`.
fn squared_norm(flow: &Tensor) -> Result<Tensor> {
    Ok(flow.f_square()?.f_sum_dim_intlist(1, true, Kind::Float)?)
}

/// What a frame needs from its predecessor: the flow from it back to the
/// previous frame and the mask of pixels where that flow is trusted.
pub struct FramePair {
    /// Frame t → frame t−1, on frame t's grid.
    pub backward: Tensor,
    /// `[1,1,H,W]`: 1 where [`FramePair::backward`] is trusted.
    pub mask: Tensor,
}

/// The flow back to the previous frame and the mask for warping t−1 onto t.
/// Two questions, two solvers. *Where* a pixel comes from is the smooth flow
/// (`params` with `edge` 0: a photo's noise averages out; the motion-boundary
/// test reads it too, since the edge-keeping flow is steep inside textures).
/// *Whether* it has a match at all is the forward–backward check on flows that
/// keep motion boundaries (`params.edge`), which the smooth flow blurs over a
/// disocclusion. And the warped previous frame must look like the current one
/// ([`matches`]).
pub fn frame_pair(previous: &Tensor, current: &Tensor, params: &FlowParams) -> Result<FramePair> {
    let smooth = FlowParams { edge: 0.0, ..params.clone() };
    let backward = flow(current, previous, &smooth)?;
    let consistent = if params.edge > 0.0 {
        consistent(&flow(current, previous, params)?, &flow(previous, current, params)?)?
    } else {
        consistent(&backward, &flow(previous, current, params)?)?
    };
    let mask = consistent * smooth_motion(&backward)? * matches(previous, current, &backward)?;
    Ok(FramePair { backward, mask })
}

/// The largest mean squared difference per channel value (images in 0..1) at
/// which `previous` warped onto `current` still counts as the same surface: a
/// difference of 0.1, several times a video's noise and resampling.
const MATCH_THRESHOLD: f64 = 0.01;

/// `[1,1,H,W]` of 0 and 1: 1 where `previous` warped by `backward` (current →
/// previous) shows what `current` shows. A smooth flow carries its motion
/// across a disocclusion, where the forward–backward check can pass; what it
/// brings there is the occluder, which this catches.
pub fn matches(previous: &Tensor, current: &Tensor, backward: &Tensor) -> Result<Tensor> {
    tch::no_grad(|| Ok(warped_difference(previous, current, backward)?.f_le(MATCH_THRESHOLD)?.f_to_kind(Kind::Float)?))
}

/// `[1,1,H,W]`: the mean squared difference per channel value between
/// `current` and `previous` warped onto it by `backward`.
fn warped_difference(previous: &Tensor, current: &Tensor, backward: &Tensor) -> Result<Tensor> {
    let warped = warp(&previous.f_to_kind(Kind::Float)?, backward)?;
    Ok((warped - current.f_to_kind(Kind::Float)?).f_square()?.f_mean_dim(1, true, Kind::Float)?)
}

/// Mean squared difference per channel value between `current` and `previous`
/// warped onto it, over the pixels `mask` trusts (the temporal-consistency
/// measure of Ruder et al.). Images in 0..1.
pub fn warping_error(previous: &Tensor, current: &Tensor, pair: &FramePair) -> Result<f64> {
    tch::no_grad(|| {
        let diff = warped_difference(previous, current, &pair.backward)?;
        let weight = pair.mask.f_sum(Kind::Float)?.double_value(&[]);
        if weight == 0.0 {
            return Ok(0.0);
        }
        Ok((diff * &pair.mask).f_sum(Kind::Float)?.double_value(&[]) / weight)
    })
}

/// A tensor on the CPU as f32 values (for storage).
pub fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    let flat = t.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?.f_contiguous()?.f_view([-1])?;
    Ok(Vec::<f32>::try_from(&flat)?)
}

#[cfg(test)]
mod tests;
