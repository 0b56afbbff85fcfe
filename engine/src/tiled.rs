//! A tiled render on one machine ([`render_tiled`]), the way the farm runs one
//! across workers: the plan of [`stylefarm_core::tiling::plan`], job by job.
//! It is the reference the farm's tiles are checked against, and what
//! `stylefarm-worker render --tile-size` runs. [`blend_tiles`] assembles a
//! scale's tiles (the farm's assembly job calls it too).

use image::{ImageBuffer, Pixel, RgbImage};
use stylefarm_core::print::Sample;
use stylefarm_core::tiling::{blend_rgb, plan, Rect, TileTask};
use tch::{Device, Kind};

use crate::error::{EngineError, Result};
use crate::image_io::{to_8bit_image, Rgb16Image};
use crate::params::RenderParams;
use crate::render::{render_loaded, render_via, Evaluator, Progress, RenderOutput, Start, TileStart};
use crate::weights::VggWeights;

/// An image of 8 or 16 bits per channel, as tiles are blended.
pub type Samples<P> = ImageBuffer<P, Vec<<P as Pixel>::Subpixel>>;

/// Blends a scale's tiles (each at its rect) into its `width`×`height`
/// image, 8 or 16 bits per channel.
pub fn blend_tiles<P>(width: u32, height: u32, overlap: u32, tiles: &[(Rect, &Samples<P>)]) -> Result<Samples<P>>
where
    P: Pixel,
    P::Subpixel: Sample,
{
    for (i, (rect, image)) in tiles.iter().enumerate() {
        if (image.width(), image.height()) != (rect.width, rect.height) {
            return Err(EngineError::param(format!("tiles[{i}]"), format!("is {}x{}, its place {rect:?}", image.width(), image.height())));
        }
    }
    let raw: Vec<(Rect, &[P::Subpixel])> = tiles.iter().map(|(r, image)| (*r, image.as_raw().as_slice())).collect();
    let samples = blend_rgb(width, height, overlap, &raw).map_err(|e| EngineError::param(e.field, e.reason))?;
    ImageBuffer::from_raw(width, height, samples).ok_or_else(|| EngineError::param("tiles", "the blend has the wrong length"))
}

/// A scale's tiles blended: at 16 bits when every tile kept them (the last
/// scale of a print), the 8-bit image then rounded from the blend.
pub fn blend_scale(width: u32, height: u32, overlap: u32, tiles: &[(Rect, &RgbImage, Option<&Rgb16Image>)]) -> Result<(RgbImage, Option<Rgb16Image>)> {
    let deep: Option<Vec<(Rect, &Rgb16Image)>> = tiles.iter().map(|(r, _, deep)| deep.map(|d| (*r, d))).collect();
    match deep {
        Some(deep) if !deep.is_empty() => {
            let print = blend_tiles(width, height, overlap, &deep)?;
            Ok((to_8bit_image(&print), Some(print)))
        }
        _ => {
            let placed: Vec<(Rect, &RgbImage)> = tiles.iter().map(|(r, image, _)| (*r, *image)).collect();
            Ok((blend_tiles(width, height, overlap, &placed)?, None))
        }
    }
}

/// What a tiled render made: the image, and how many tiles each tiled scale had.
pub struct Tiled {
    pub image: RgbImage,
    /// The image at 16 bits, when the job asks for a print master.
    pub print: Option<Rgb16Image>,
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
        return Ok(Tiled { image: out.image, print: out.print, tiles: Vec::new(), last_tiles: Vec::new() });
    };
    let mut made: Vec<(RgbImage, Option<Rgb16Image>)> = Vec::with_capacity(jobs.len());
    let mut summary = (Vec::new(), Vec::new());
    for job in &jobs {
        let input = |k: usize| &made[job.depends_on[k] as usize];
        let both = |out: RenderOutput| (out.image, out.print);
        let image = match &job.task {
            None => both(render_loaded(content, styles, Start::Init(None), weights, &job.params, device, progress)?),
            Some(TileTask::Tile { rect, width, height, from_previous, .. }) => {
                let start = TileStart { rect: *rect, width: *width, height: *height, previous: from_previous.then(|| input(0).0.clone()) };
                both(render_via(Evaluator::Own(Kind::Float), content, styles, Start::Tile(&start), weights, &job.params, device, progress)?)
            }
            Some(TileTask::Assemble { width, height, tiles, overlap, plan, .. }) => {
                let placed: Vec<(Rect, &RgbImage, Option<&Rgb16Image>)> =
                    tiles.iter().enumerate().map(|(k, r)| (*r, &input(k).0, input(k).1.as_ref())).collect();
                summary = (plan.tiles.clone(), tiles.clone());
                blend_scale(*width, *height, *overlap, &placed)?
            }
        };
        made.push(image);
    }
    let (image, print) = made.pop().expect("a plan ends with its assembly");
    Ok(Tiled { image, print, tiles: summary.0, last_tiles: summary.1 })
}
