//! Frame-level steps of a stylised video, shared by the local `video` command
//! and the farm's video jobs: the flow between two consecutive frames at the
//! render size (stored as safetensors), a frame rendered from the previous
//! frame's output, the cross-fade of overlapping segments, and the
//! temporal-consistency measure.

use std::path::Path;

use image::RgbImage;
use tch::{Device, Kind, Tensor};

use crate::error::{EngineError, Result};
use crate::flow::{frame_pair, warping_error, FlowParams, FramePair};
use crate::image_io::{fit_long_side, resize, to_tensor};
use crate::problem::raw;
use crate::safetensors::SafeTensors;

/// A frame at the render size (long side `size`).
pub fn at_size(frame: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = fit_long_side(frame.width(), frame.height(), size);
    resize(frame, w, h)
}

/// The flow from `current` back to `previous` and its mask, both frames first
/// brought to the render size `size`, computed on `device`.
pub fn pair_for(previous: &RgbImage, current: &RgbImage, size: u32, device: Device) -> Result<FramePair> {
    if previous.dimensions() != current.dimensions() {
        return Err(EngineError::param("frames", format!("consecutive frames differ in size: {:?} and {:?}", previous.dimensions(), current.dimensions())));
    }
    let a = to_tensor(&at_size(previous, size), Kind::Float, device);
    let b = to_tensor(&at_size(current, size), Kind::Float, device);
    let pair = frame_pair(&a, &b, &FlowParams::default())?;
    Ok(FramePair { backward: pair.backward.f_to_device(Device::Cpu)?, mask: pair.mask.f_to_device(Device::Cpu)? })
}

/// A pair as safetensors bytes (`backward` [1,2,H,W], `mask` [1,1,H,W], f32).
pub fn pair_to_bytes(pair: &FramePair) -> Result<Vec<u8>> {
    let mut file = SafeTensors::default();
    file.tensors.insert("backward".into(), raw(&pair.backward)?);
    file.tensors.insert("mask".into(), raw(&pair.mask)?);
    file.metadata.insert("format".into(), "stylefarm-flow-1".into());
    Ok(file.to_bytes())
}

/// Reads what [`pair_to_bytes`] wrote, checking the shapes agree.
pub fn pair_from_bytes(bytes: &[u8], what: &str) -> Result<FramePair> {
    let bad = |reason: String| EngineError::param(what, reason);
    let file = SafeTensors::parse(bytes).map_err(bad)?;
    let tensor = |name: &str, channels: usize| -> Result<Tensor> {
        let t = file.tensors.get(name).ok_or_else(|| bad(format!("no `{name}` tensor")))?;
        match t.shape[..] {
            [1, c, h, w] if c == channels && h > 0 && w > 0 && t.data.len() == c * h * w => {
                if t.data.iter().any(|v| !v.is_finite()) {
                    return Err(bad(format!("`{name}` has values that are not finite")));
                }
                Ok(Tensor::from_slice(&t.data).view([1, c as i64, h as i64, w as i64]))
            }
            ref shape => Err(bad(format!("`{name}` has shape {shape:?}, expected [1,{channels},H,W]"))),
        }
    };
    let backward = tensor("backward", 2)?;
    let mask = tensor("mask", 1)?;
    if backward.size()[2..] != mask.size()[2..] {
        return Err(bad(format!("flow {:?} and mask {:?} differ in size", backward.size(), mask.size())));
    }
    Ok(FramePair { backward, mask })
}

pub fn save_pair(pair: &FramePair, path: &Path) -> Result<()> {
    std::fs::write(path, pair_to_bytes(pair)?).map_err(|e| EngineError::Output { path: path.to_path_buf(), reason: e.to_string() })
}

pub fn load_pair(path: &Path) -> Result<FramePair> {
    let bytes = std::fs::read(path).map_err(|e| EngineError::param("flow", format!("reading {}: {e}", path.display())))?;
    pair_from_bytes(&bytes, "flow")
}

/// The weighted sum of same-sized images (weights summing to 1).
pub fn blend(copies: &[(&RgbImage, f64)]) -> Result<RgbImage> {
    let Some((first, _)) = copies.first() else {
        return Err(EngineError::param("blend", "nothing to blend"));
    };
    if copies.iter().any(|(img, _)| img.dimensions() != first.dimensions()) {
        return Err(EngineError::param("blend", "the copies of a frame differ in size"));
    }
    let mut sum = Tensor::zeros([1, 3, first.height() as i64, first.width() as i64], (Kind::Float, Device::Cpu));
    for (img, w) in copies {
        sum += to_tensor(img, Kind::Float, Device::Cpu) * *w;
    }
    crate::image_io::to_image(&sum)
}

/// The temporal-consistency error between two consecutive output frames: the
/// previous output warped onto the current one by the input frames' flow,
/// mean squared difference (0..1 units) over the pixels the mask trusts.
pub fn output_error(previous_out: &RgbImage, current_out: &RgbImage, pair: &FramePair) -> Result<f64> {
    let size = pair.backward.size();
    let (h, w) = (size[2] as u32, size[3] as u32);
    let prev = to_tensor(&resize(previous_out, w, h), Kind::Float, Device::Cpu);
    let cur = to_tensor(&resize(current_out, w, h), Kind::Float, Device::Cpu);
    warping_error(&prev, &cur, pair)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picture(w: u32, h: u32, shift: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let v = (((x + shift) as f32 * 0.37).sin() * 60.0 + (y as f32 * 0.23).cos() * 60.0 + 128.0) as u8;
            image::Rgb([v, v / 2, 255 - v])
        })
    }

    #[test]
    fn a_pair_round_trips_and_bad_bytes_name_the_problem() {
        let pair = pair_for(&picture(40, 30, 0), &picture(40, 30, 1), 32, Device::Cpu).unwrap();
        assert_eq!(pair.backward.size(), [1, 2, 24, 32]);
        let back = pair_from_bytes(&pair_to_bytes(&pair).unwrap(), "flow").unwrap();
        assert!(back.backward.allclose(&pair.backward, 0.0, 0.0, false));
        assert!(back.mask.allclose(&pair.mask, 0.0, 0.0, false));
        let err = pair_from_bytes(b"not safetensors", "flow[3]").err().expect("refused");
        assert!(err.to_string().contains("flow[3]"), "{err}");
    }

    #[test]
    fn blending_weighs_the_copies() {
        let black = RgbImage::new(2, 2);
        let white = RgbImage::from_pixel(2, 2, image::Rgb([200, 200, 200]));
        let mixed = blend(&[(&black, 0.25), (&white, 0.75)]).unwrap();
        assert_eq!(mixed.get_pixel(1, 1).0, [150, 150, 150]);
        assert!(blend(&[(&black, 0.5), (&RgbImage::new(3, 2), 0.5)]).is_err());
    }

    #[test]
    fn a_moving_picture_is_consistent_under_its_own_flow_and_a_flicker_is_not() {
        let (a, b) = (picture(64, 48, 0), picture(64, 48, 2));
        let pair = pair_for(&a, &b, 64, Device::Cpu).unwrap();
        let consistent = output_error(&a, &b, &pair).unwrap();
        let flicker = RgbImage::from_fn(64, 48, |x, y| {
            let p = b.get_pixel(x, y).0;
            image::Rgb([p[0].saturating_add(40), p[1], p[2].saturating_sub(40)])
        });
        let flickering = output_error(&a, &flicker, &pair).unwrap();
        assert!(consistent * 10.0 < flickering, "consistent {consistent}, flicker {flickering}");
    }
}
