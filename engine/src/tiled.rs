//! A tiled render on one machine ([`render_tiled`]), the way the farm runs one
//! across workers: the plan of [`stylefarm_core::tiling::plan`], job by job.
//! It is the reference the farm's tiles are checked against, and what
//! `stylefarm-worker render --tile-size` runs. [`blend_tiles`] assembles a
//! scale's tiles (the farm's assembly job calls it too).

use image::RgbImage;
use stylefarm_core::tiling::{blend_rgb8, plan, Rect, TileTask};
use tch::{Device, Kind};

use crate::error::{EngineError, Result};
use crate::params::RenderParams;
use crate::render::{render_loaded, render_via, Evaluator, Progress, Start, TileStart};
use crate::weights::VggWeights;

/// Blends a scale's tiles (each at its rect) into its `width`×`height` image.
pub fn blend_tiles(width: u32, height: u32, overlap: u32, tiles: &[(Rect, &RgbImage)]) -> Result<RgbImage> {
    for (i, (rect, image)) in tiles.iter().enumerate() {
        if (image.width(), image.height()) != (rect.width, rect.height) {
            return Err(EngineError::param(format!("tiles[{i}]"), format!("is {}x{}, its place {rect:?}", image.width(), image.height())));
        }
    }
    let raw: Vec<(Rect, &[u8])> = tiles.iter().map(|(r, image)| (*r, image.as_raw().as_slice())).collect();
    let pixels = blend_rgb8(width, height, overlap, &raw).map_err(|e| EngineError::param(e.field, e.reason))?;
    RgbImage::from_raw(width, height, pixels).ok_or_else(|| EngineError::param("tiles", "the blend has the wrong length"))
}

/// What a tiled render made: the image, and how many tiles each tiled scale had.
pub struct Tiled {
    pub image: RgbImage,
    /// Tiles per tiled scale, coarsest first (empty: it fitted whole).
    pub tiles: Vec<u32>,
    /// The tiles of the finest scale, where they sit.
    pub last_tiles: Vec<Rect>,
}

/// Renders `params` with tiles of at most `tile` pixels a side, one job of
/// the farm's plan after another; a job that fits whole renders whole.
pub fn render_tiled(
    content: &RgbImage,
    styles: &[RgbImage],
    weights: &VggWeights,
    params: &RenderParams,
    tile: u32,
    device: Device,
    progress: &mut dyn Progress,
) -> Result<Tiled> {
    let params = params.resolved();
    let Some(jobs) = plan(&params, (content.width(), content.height()), tile).map_err(|e| EngineError::param(e.field, e.reason))? else {
        let out = render_loaded(content, styles, Start::Init(None), weights, &params, device, progress)?;
        return Ok(Tiled { image: out.image, tiles: Vec::new(), last_tiles: Vec::new() });
    };
    let mut made: Vec<Option<RgbImage>> = Vec::with_capacity(jobs.len());
    let mut summary = (Vec::new(), Vec::new());
    for job in &jobs {
        let input = |k: usize| made[job.depends_on[k] as usize].as_ref().expect("dependencies come first");
        let image = match &job.task {
            None => render_loaded(content, styles, Start::Init(None), weights, &job.params, device, progress)?.image,
            Some(TileTask::Tile { rect, width, height, from_previous, .. }) => {
                let start = TileStart { rect: *rect, width: *width, height: *height, previous: from_previous.then(|| input(0).clone()) };
                render_via(Evaluator::Own(Kind::Float), content, styles, Start::Tile(&start), weights, &job.params, device, progress)?.image
            }
            Some(TileTask::Assemble { width, height, tiles, overlap, plan, .. }) => {
                let placed: Vec<(Rect, &RgbImage)> = tiles.iter().enumerate().map(|(k, r)| (*r, input(k))).collect();
                summary = (plan.tiles.clone(), tiles.clone());
                blend_tiles(*width, *height, *overlap, &placed)?
            }
        };
        made.push(Some(image));
    }
    let image = made.pop().flatten().expect("a plan ends with its assembly");
    Ok(Tiled { image, tiles: summary.0, last_tiles: summary.1 })
}
