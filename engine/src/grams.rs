//! Gram matrices of an image larger than a device should hold at once, chunk
//! by chunk. A tile renders a small part of a print but its style targets are
//! the whole picture's Grams at that scale; forwarding the whole picture would
//! cost ~1 KB of activations per pixel (17 GB at 4096²) and undo the point of
//! tiling. A Gram is a sum over pixels, so it is summed over chunks instead.
//!
//! Each chunk is forwarded with [`HALO`] pixels of its neighbours around it:
//! every feature of the chunk's own pixels then sees exactly the input it
//! sees in the whole image (VGG-16's receptive field at conv5_3 reaches 90 px
//! beyond the 16 px cell a feature sits on), and chunk corners on multiples
//! of 16 keep the four poolings' grid. The result equals the whole image's
//! Grams up to the order of floating-point sums.

use tch::Tensor;

use crate::error::{EngineError, Result};
use crate::vgg::{host_bytes, LayerId, Vgg16};

/// Gram matrix of `features` [1,C,h,w]: unnormalised, or divided by C·h·w.
pub fn gram(features: &Tensor, normalise: bool) -> Result<Tensor> {
    let size = features.size();
    let [1, c, h, w] = size[..] else {
        return Err(EngineError::param("features", format!("expected [1,C,H,W], got {size:?}")));
    };
    // NHWC view of a channels-last tensor: [h·w, C] with no copy.
    let flat = features.f_permute([0, 2, 3, 1])?.f_reshape([h * w, c])?;
    let g = flat.f_transpose(0, 1)?.f_matmul(&flat)?;
    if normalise {
        return Ok(g.f_div_scalar((c * h * w) as f64)?);
    }
    Ok(g)
}

/// Context kept around a chunk, in pixels: at least conv5_3's reach (90 px)
/// beyond its cell, a multiple of 16 (the pooling grid).
pub const HALO: i64 = 96;
/// Side of a chunk's own pixels (a multiple of 16): a forward of
/// (512 + 2·96)² pixels, ~0.5 GB of activations in f32.
pub const CHUNK: i64 = 512;

/// The Grams of `image` ([1,3,H,W], network units) at each of `layers`, in
/// their order, normalised as [`gram`] does; chunked when it is larger than
/// one chunk with its halo.
pub fn grams(model: &Vgg16, image: &Tensor, layers: &[LayerId], normalise: bool) -> Result<Vec<Tensor>> {
    if one_forward(image, CHUNK) {
        return whole(model, image, layers, normalise);
    }
    // every tile of a scale asks for the same whole pictures' Grams: a
    // worker computes them once per scale, not once per tile
    let key = Key::of(model, image, layers, normalise)?;
    if let Some(found) = RECENT.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|(k, _)| *k == key) {
        return Ok(found.1.iter().map(Tensor::shallow_clone).collect());
    }
    let made = grams_in_chunks(model, image, layers, normalise, CHUNK)?;
    COMPUTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut recent = RECENT.lock().unwrap_or_else(|p| p.into_inner());
    if recent.len() == RECENT_ENTRIES {
        recent.pop_front();
    }
    recent.push_back((key, made.iter().map(Tensor::shallow_clone).collect()));
    Ok(made)
}

/// Whole pictures' Grams kept for the tiles that follow (a few MB each).
const RECENT_ENTRIES: usize = 8;
static RECENT: std::sync::Mutex<std::collections::VecDeque<(Key, Vec<Tensor>)>> = std::sync::Mutex::new(std::collections::VecDeque::new());
/// Chunked Grams computed (not found in [`RECENT`]), for tests.
static COMPUTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// What a picture's Grams depend on: its values, the model, the layers, the
/// normalisation, where and in what precision they are computed.
#[derive(PartialEq, Eq)]
struct Key {
    image: [u8; 32],
    model: [u8; 32],
    layers: Vec<LayerId>,
    normalise: bool,
    device: tch::Device,
    kind: String,
}

impl Key {
    fn of(model: &Vgg16, image: &Tensor, layers: &[LayerId], normalise: bool) -> Result<Key> {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        hash.update(format!("{:?}", image.size()));
        hash.update(host_bytes(image)?);
        Ok(Key {
            image: hash.finalize().into(),
            model: model.fingerprint()?,
            layers: layers.to_vec(),
            normalise,
            device: image.device(),
            kind: format!("{:?}", image.kind()),
        })
    }
}

/// Whether `image` fits one chunk with its halo (then it is forwarded whole).
fn one_forward(image: &Tensor, chunk: i64) -> bool {
    let size = image.size();
    size[2] <= chunk + 2 * HALO && size[3] <= chunk + 2 * HALO
}

fn whole(model: &Vgg16, image: &Tensor, layers: &[LayerId], normalise: bool) -> Result<Vec<Tensor>> {
    model.forward(image, layers)?.iter().map(|f| gram(f, normalise)).collect()
}

fn grams_in_chunks(model: &Vgg16, image: &Tensor, layers: &[LayerId], normalise: bool, chunk: i64) -> Result<Vec<Tensor>> {
    debug_assert!(chunk % 16 == 0 && HALO % 16 == 0, "chunks and halo keep the pooling grid");
    if one_forward(image, chunk) {
        return whole(model, image, layers, normalise);
    }
    let size = image.size();
    let (h, w) = (size[2], size[3]);
    let mut sums: Vec<Option<Tensor>> = layers.iter().map(|_| None).collect();
    for y0 in (0..h).step_by(chunk as usize) {
        for x0 in (0..w).step_by(chunk as usize) {
            let (y1, x1) = ((y0 + chunk).min(h), (x0 + chunk).min(w));
            let (py0, px0) = ((y0 - HALO).max(0), (x0 - HALO).max(0));
            let (py1, px1) = ((y1 + HALO).min(h), (x1 + HALO).min(w));
            let region = image.f_narrow(2, py0, py1 - py0)?.f_narrow(3, px0, px1 - px0)?;
            let features = model.forward(&region, layers)?;
            for ((sum, feature), layer) in sums.iter_mut().zip(&features).zip(layers) {
                let d = 1i64 << (layer.block() - 1);
                let own = |start: i64, end: i64, padded_start: i64, full: i64, extent: i64| {
                    // the chunk's own cells at this layer; the image's last chunk keeps the
                    // floor the poolings leave (its padded region ends where the image does)
                    let from = (start - padded_start) / d;
                    let to = if end == full { extent } else { (end - padded_start) / d };
                    (from, to - from)
                };
                let fs = feature.size();
                let (ry, rh) = own(y0, y1, py0, h, fs[2]);
                let (rx, rw) = own(x0, x1, px0, w, fs[3]);
                if rh <= 0 || rw <= 0 {
                    continue;
                }
                let part = gram(&feature.f_narrow(2, ry, rh)?.f_narrow(3, rx, rw)?, false)?;
                *sum = Some(match sum.take() {
                    Some(s) => s.f_add(&part)?,
                    None => part,
                });
            }
        }
    }
    sums.into_iter()
        .zip(layers)
        .map(|(sum, layer)| {
            let g = sum.expect("every layer has cells in the first chunk");
            if !normalise {
                return Ok(g);
            }
            let d = 1i64 << (layer.block() - 1);
            let c = g.size()[0];
            Ok(g.f_div_scalar((c * (h / d) * (w / d)) as f64)?)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vgg::{Pooling, BLOCKS, CONV_COUNT};
    use tch::{Device, Kind};

    /// VGG-16's layout (blocks, convolutions, poolings: what the halo is
    /// about) with an eighth of its channels, random weights.
    fn random_vgg(pooling: Pooling) -> Vgg16 {
        tch::manual_seed(7);
        let mut convs = Vec::new();
        let mut channels = 3;
        for block in BLOCKS.iter() {
            for &out in block.iter() {
                let out = out / 8;
                let weight = Tensor::randn([out, channels, 3, 3], (Kind::Double, Device::Cpu)) * (2.0 / (9.0 * channels as f64)).sqrt();
                convs.push((weight, Tensor::randn([out], (Kind::Double, Device::Cpu)) * 0.1));
                channels = out;
            }
        }
        Vgg16::new(convs, pooling, Device::Cpu, Kind::Double)
    }

    #[test]
    fn chunked_grams_equal_the_whole_images_at_every_layer() {
        let layers: Vec<LayerId> = (0..CONV_COUNT).map(LayerId::from_index).collect();
        // sides that are not multiples of 16: the last chunks keep the poolings' floor
        let image = Tensor::randn([1, 3, 237, 301], (Kind::Double, Device::Cpu));
        for pooling in [Pooling::Max, Pooling::Avg] {
            let model = random_vgg(pooling);
            for normalise in [false, true] {
                let whole: Vec<Tensor> = model.forward(&image, &layers).unwrap().iter().map(|f| gram(f, normalise).unwrap()).collect();
                // 64 px chunks: 4 x 5 of them, each forwarded with its 96 px halo
                let chunked = grams_in_chunks(&model, &image, &layers, normalise, 64).unwrap();
                for (layer, (a, b)) in layers.iter().zip(whole.iter().zip(&chunked)) {
                    let scale = f64::try_from(a.abs().max()).unwrap();
                    let error = f64::try_from((a - b).abs().max()).unwrap();
                    assert!(error <= 1e-9 * scale, "{pooling:?} {layer}: {error:e} of {scale:e}");
                }
            }
        }
    }

    #[test]
    fn a_large_pictures_grams_are_computed_once_for_all_its_tiles() {
        use std::sync::atomic::Ordering;
        let layers: Vec<LayerId> = ["relu1_1", "relu3_1", "relu5_1"].iter().map(|n| LayerId::parse(n).unwrap()).collect();
        let model = random_vgg(Pooling::Max);
        // taller than a chunk and its halo: chunked, and kept
        let picture = Tensor::randn([1, 3, 720, 40], (Kind::Double, Device::Cpu));
        let before = COMPUTED.load(Ordering::Relaxed);
        let first = grams(&model, &picture, &layers, true).unwrap();
        let again = grams(&model, &picture, &layers, true).unwrap();
        assert_eq!(COMPUTED.load(Ordering::Relaxed), before + 1, "the second tile found them");
        for (a, b) in first.iter().zip(&again) {
            assert!(a.equal(b));
        }
        // another picture, or the same one unnormalised, is computed anew
        let other = &picture + 0.5;
        let changed = grams(&model, &other, &layers, true).unwrap();
        grams(&model, &picture, &layers, false).unwrap();
        assert_eq!(COMPUTED.load(Ordering::Relaxed), before + 3);
        assert!(!first[2].equal(&changed[2]));
    }

    #[test]
    fn a_halo_too_small_would_show() {
        // the same sum without context around each chunk is not the whole's
        // Gram: the test above can tell a right chunking from a wrong one
        let layers = [LayerId::parse("relu5_1").unwrap()];
        let image = Tensor::randn([1, 3, 192, 192], (Kind::Double, Device::Cpu));
        let model = random_vgg(Pooling::Max);
        let whole = gram(&model.forward(&image, &layers).unwrap()[0], false).unwrap();
        let mut no_halo = Tensor::zeros_like(&whole);
        for y0 in (0..192).step_by(64) {
            for x0 in (0..192).step_by(64) {
                let region = image.narrow(2, y0, 64).narrow(3, x0, 64);
                no_halo += gram(&model.forward(&region, &layers).unwrap()[0], false).unwrap();
            }
        }
        let scale = f64::try_from(whole.abs().max()).unwrap();
        assert!(f64::try_from((whole - no_halo).abs().max()).unwrap() > 1e-3 * scale);
    }
}
