//! What a job costs, estimated from its parameters alone (the coordinator matches
//! jobs to devices with it; no libtorch needed).

use crate::layers::BLOCKS;
use crate::params::RenderParams;

/// Fixed cost of a device that runs jobs: weights (~60 MB for the conv base),
/// cuDNN workspaces, the allocator's slack.
pub const BASE_BYTES: u64 = 768 << 20;

/// Bytes a render needs on its device at its finest scale.
///
/// Per pixel of the image: each VGG activation up to the deepest layer used
/// (channels / 4^block-1 floats, pooled), kept for the backward pass, its
/// gradient and the ReLU mask — about 3 copies — plus the image, its gradient and
/// the optimiser's history (2 vectors per L-BFGS history entry, 3 channels).
/// The measured peak of a 512 px keras job on an H100 was 1.4–2.4 GiB with cuDNN
/// autotuning; this formula gives 1.9 GiB.
pub fn device_bytes(params: &RenderParams) -> u64 {
    let pixels = (params.size as u64).pow(2);
    let depth = params.depth();
    let mut floats_per_pixel = 0.0f64;
    let mut index = 0;
    for (block, convs) in BLOCKS.iter().enumerate() {
        let downsample = 4f64.powi(block as i32);
        for &channels in convs.iter() {
            if index >= depth {
                break;
            }
            floats_per_pixel += channels as f64 / downsample;
            index += 1;
        }
    }
    let activations = floats_per_pixel * 3.0;
    let history = match &params.optimizer {
        crate::params::Optimizer::Lbfgs { history_size, .. } => 2.0 * *history_size as f64 * 3.0,
        crate::params::Optimizer::Adam { .. } => 2.0 * 3.0,
    };
    let per_pixel_bytes = (activations + history + 12.0) * 4.0;
    BASE_BYTES + (per_pixel_bytes * pixels as f64) as u64
}

/// Bytes per pixel of the whole scale that a tile's render holds beside its
/// own: the content as loaded and in network units, a style image at that
/// scale, the start picture upsampled and the crop taken from it (3-channel
/// f32 images, about six).
pub const WHOLE_SCALE_BYTES_PER_PIXEL: u64 = 6 * 3 * 4;

/// Activations of one chunk forwarded (without gradients) for a whole
/// picture's Grams, the engine's `grams::CHUNK` plus its halo each side:
/// (512 + 2·96)² pixels, the style layers' outputs kept (122 floats a pixel)
/// and the widest layer in and out (2 × 64).
pub const CHUNK_FORWARD_BYTES: u64 = (512 + 2 * 96) * (512 + 2 * 96) * (122 + 128) * 4;

/// Bytes a tile of at most `tile_side` pixels a side needs, rendering one
/// scale of `params.size` (its whole, [`WHOLE_SCALE_BYTES_PER_PIXEL`]):
/// the tile's own render, or the chunked forward for its style targets when
/// that is larger (they come one after the other), plus the whole scale's
/// images.
pub fn tile_bytes(params: &RenderParams, tile_side: u32) -> u64 {
    let render = device_bytes(&RenderParams { size: tile_side, scales: 1, scale_iterations: Vec::new(), ..params.clone() }) - BASE_BYTES;
    let whole = (params.size as u64).pow(2);
    BASE_BYTES + render.max(CHUNK_FORWARD_BYTES) + WHOLE_SCALE_BYTES_PER_PIXEL * whole
}

/// Fixed part of the default per-attempt time limit (start-up, weights, encoding).
pub const TIME_LIMIT_BASE_MS: u64 = 10 * 60_000;
/// Per pixel and iteration, generous for a slow CPU: this project's 2-core VM
/// takes ~8 µs per pixel per keras evaluation (1.4 s at 512×341), and a
/// strong-Wolfe iteration may take a few evaluations.
pub const TIME_LIMIT_NS_PER_PIXEL_ITERATION: u64 = 40_000;

/// The default per-attempt time limit: a base plus a per-pixel-iteration
/// budget summed over every scale, so a hung render cannot hold a device for
/// ever while a big honest one is not cut short.
pub fn default_time_limit_ms(params: &RenderParams) -> u64 {
    TIME_LIMIT_BASE_MS.saturating_add(pixel_iterations(params).saturating_mul(TIME_LIMIT_NS_PER_PIXEL_ITERATION) / 1_000_000)
}

/// A render's work: pixels × iterations summed over its scales (the long
/// side squared, an upper bound for any aspect ratio). Quotas and the time
/// limit count it.
pub fn pixel_iterations(params: &RenderParams) -> u64 {
    let params = &params.resolved();
    let scales = params.scales.max(1);
    (0..scales as usize)
        .map(|i| {
            let side = (params.size >> (scales as usize - 1 - i)).max(1) as u64;
            side * side * params.iterations_at(i) as u64
        })
        .fold(0u64, u64::saturating_add)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::Preset;

    #[test]
    fn grows_with_size_and_history() {
        let mut p = RenderParams::preset(Preset::Keras);
        p.size = 512;
        let at_512 = device_bytes(&p);
        assert!((1u64 << 30..3u64 << 30).contains(&at_512), "{at_512}");
        p.size = 1024;
        let at_1024 = device_bytes(&p);
        assert!(at_1024 - BASE_BYTES > 3 * (at_512 - BASE_BYTES), "{at_1024} vs {at_512}");
        let gatys = RenderParams { size: 512, ..RenderParams::preset(Preset::Gatys) };
        assert!(device_bytes(&gatys) > at_512, "history 100 costs more than history 10");
    }

    #[test]
    fn a_tile_costs_its_render_and_its_whole_scales_images() {
        let whole = RenderParams { size: 4096, scales: 1, ..RenderParams::preset(Preset::Gatys) };
        let tile = tile_bytes(&whole, 1024);
        let alone = device_bytes(&RenderParams { size: 1024, ..whole.clone() });
        assert_eq!(tile - alone, 72 * 4096 * 4096, "the whole scale's images");
        // a small tile is bounded below by the chunked forward of its style targets
        assert_eq!(tile_bytes(&whole, 256), BASE_BYTES + CHUNK_FORWARD_BYTES + 72 * 4096 * 4096);
        assert!(tile < device_bytes(&whole) / 4, "tiles are what makes a 4096 px print fit");
    }
}
