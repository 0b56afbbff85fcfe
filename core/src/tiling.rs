//! Prints larger than a device: a job whose finest scales do not fit is
//! planned as a graph of jobs. Its coarse scales render whole, as one job;
//! each finer scale renders as overlapping tiles, each its own job started from
//! the scale before (upscaled, cropped), with style targets from the whole
//! style at that scale and its share of the whole's loss; an assembly job per
//! scale blends the tiles with feathered weights. The geometry, the blend and
//! the plan live here (no libtorch); the coordinator plans, the worker renders
//! and assembles.

use serde::{Deserialize, Serialize};

use crate::error::{ParamError, Result};
use crate::params::RenderParams;
pub use crate::params::{MIN_OVERLAP, MIN_TILE_SIZE};
use crate::print::{PrintFormat, Sample};

/// Most tiles one scale of one job may be split into.
pub const MAX_TILES_PER_SCALE: usize = 1024;

/// `width`×`height` scaled so that its long side is `long_side` (at least 1 px each).
pub fn fit_long_side(width: u32, height: u32, long_side: u32) -> (u32, u32) {
    let long = width.max(height) as f64;
    let scale = long_side as f64 / long;
    let w = ((width as f64 * scale).round() as u32).max(1);
    let h = ((height as f64 * scale).round() as u32).max(1);
    (w, h)
}

/// A tile's place in its scale's image, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Rect {
    pub fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }
}

/// The overlap tiles of side `tile` share: the params' own, else an eighth of the tile, at least 32.
pub fn overlap_for(params: &RenderParams, tile: u32) -> u32 {
    if params.tile_overlap != 0 {
        return params.tile_overlap;
    }
    (tile / 8).max(32).min(tile / 4).max(MIN_OVERLAP)
}

/// Spans `(start, length)` of at most `tile` pixels covering `0..len`: the
/// fewest that overlap by at least `overlap`, all of one length (no longer
/// than needed), spread evenly.
pub fn spans(len: u32, tile: u32, overlap: u32) -> Vec<(u32, u32)> {
    if len <= tile {
        return vec![(0, len)];
    }
    let step = tile.saturating_sub(overlap).max(1);
    let count = (len - overlap).div_ceil(step).max(2);
    let length = (len + (count - 1) * overlap).div_ceil(count).min(tile);
    let room = (len - length) as f64;
    (0..count).map(|i| (((room * i as f64) / (count - 1) as f64).round() as u32, length)).collect()
}

/// The tiles of a `width`×`height` image, row by row.
pub fn grid(width: u32, height: u32, tile: u32, overlap: u32) -> Vec<Rect> {
    let (xs, ys) = (spans(width, tile, overlap), spans(height, tile, overlap));
    ys.iter().flat_map(|&(y, h)| xs.iter().map(move |&(x, w)| Rect { x, y, width: w, height: h })).collect()
}

/// A tile's blending weight at pixel (`x`, `y`) of its scale's `width`×`height`
/// image, for tiles that overlap by at least `overlap`: towards each edge it
/// shares with a neighbour, 0 on the outer quarter of the overlap (where the
/// network saw the tile's edge), then rising linearly to 1 over the middle
/// half; the image's own borders do not fall.
pub fn feather(rect: &Rect, (width, height): (u32, u32), overlap: u32, x: u32, y: u32) -> f32 {
    let margin = (overlap / 4) as f32;
    let ramp = (overlap as f32 - 2.0 * margin).max(1.0);
    let axis = |pos: u32, start: u32, len: u32, whole: u32| -> f32 {
        let mut w = 1.0f32;
        if start > 0 {
            w = w.min(((pos - start) as f32 + 0.5 - margin) / ramp);
        }
        if start + len < whole {
            w = w.min(((start + len - pos) as f32 - 0.5 - margin) / ramp);
        }
        w.clamp(0.0, 1.0)
    };
    axis(x, rect.x, rect.width, width) * axis(y, rect.y, rect.height, height)
}

/// Blends RGB tiles (`rect`, its samples row by row, 3 a pixel, 8 or 16
/// bits) into the `width`×`height` image ([`feather`]ed for tiles overlapping
/// by at least `overlap`): each pixel is the weighted mean of the tiles that
/// cover it, so where one tile alone covers a pixel it is that tile's pixel
/// exactly. A pixel no tile covers (or only with weight 0) is an error.
pub fn blend_rgb<S: Sample>(width: u32, height: u32, overlap: u32, tiles: &[(Rect, &[S])]) -> Result<Vec<S>> {
    let (w, h) = (width as usize, height as usize);
    let mut sum = vec![0f32; w * h * 3];
    let mut weight = vec![0f32; w * h];
    for (i, (rect, pixels)) in tiles.iter().enumerate() {
        if rect.x + rect.width > width || rect.y + rect.height > height || pixels.len() != rect.pixels() as usize * 3 {
            return Err(ParamError::new(format!("tiles[{i}]"), format!("{rect:?} with {} samples does not fit a {width}x{height} image", pixels.len())));
        }
        for ty in 0..rect.height {
            let y = rect.y + ty;
            for tx in 0..rect.width {
                let x = rect.x + tx;
                let f = feather(rect, (width, height), overlap, x, y);
                let at = y as usize * w + x as usize;
                let src = (ty as usize * rect.width as usize + tx as usize) * 3;
                weight[at] += f;
                for c in 0..3 {
                    sum[at * 3 + c] += f * pixels[src + c].to_f32();
                }
            }
        }
    }
    if let Some(at) = weight.iter().position(|&f| f <= 0.0) {
        return Err(ParamError::new("tiles", format!("pixel ({}, {}) is in no tile", at % w, at / w)));
    }
    Ok(sum.iter().enumerate().map(|(i, s)| S::from_f32(s / weight[i / 3])).collect())
}

/// Where tiles meet in a `width`×`height` image: every interior tile edge,
/// as (vertical lines' x, horizontal lines' y), sorted, without repeats.
pub fn seam_lines(tiles: &[Rect], width: u32, height: u32) -> (Vec<u32>, Vec<u32>) {
    let mut xs: Vec<u32> = tiles.iter().flat_map(|r| [r.x, r.x + r.width]).filter(|&x| x > 0 && x < width).collect();
    let mut ys: Vec<u32> = tiles.iter().flat_map(|r| [r.y, r.y + r.height]).filter(|&y| y > 0 && y < height).collect();
    xs.sort_unstable();
    xs.dedup();
    ys.sort_unstable();
    ys.dedup();
    (xs, ys)
}

/// The seam measure: the mean absolute step between the pixels either side
/// of each line (x−1 | x across a vertical line, y−1 | y across a horizontal
/// one), over every channel and the line's length, in 8-bit levels. A seam
/// shows as a step larger than the picture's own on the same lines.
pub fn seam_gradient(rgb: &[u8], width: u32, (xs, ys): &(Vec<u32>, Vec<u32>)) -> f64 {
    let w = width as usize;
    let height = rgb.len() / 3 / w.max(1);
    let at = |x: usize, y: usize, c: usize| f64::from(rgb[(y * w + x) * 3 + c]);
    let (mut sum, mut count) = (0.0, 0usize);
    for &x in xs {
        for y in 0..height {
            for c in 0..3 {
                sum += (at(x as usize, y, c) - at(x as usize - 1, y, c)).abs();
                count += 1;
            }
        }
    }
    for &y in ys {
        for x in 0..w {
            for c in 0..3 {
                sum += (at(x, y as usize, c) - at(x, y as usize - 1, c)).abs();
                count += 1;
            }
        }
    }
    if count == 0 {
        return 0.0;
    }
    sum / count as f64
}

/// What one job of a tiled render does (its `task_json`). Its dependencies'
/// committed outputs reach the worker in `depends_on` order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TileTask {
    /// One tile of scale `scale` (0 = coarsest) of the whole `width`×`height`
    /// image; the job's params are that scale's (one scale, its size and
    /// iterations). Inputs: the scale before's whole image, when `from_previous`.
    Tile { scale: u32, rect: Rect, width: u32, height: u32, from_previous: bool },
    /// Blends scale `scale`'s tiles into its `width`×`height` image. Inputs:
    /// the tiles in `tiles` order, then the scale before's job (its trace
    /// continues into this one's), when there is one.
    #[serde(rename = "tile_assemble")]
    Assemble { scale: u32, width: u32, height: u32, tiles: Vec<Rect>, overlap: u32, plan: TilingSummary },
}

impl TileTask {
    pub fn parse(json: &str) -> Result<TileTask> {
        serde_json::from_str(json).map_err(|e| ParamError::new("task", format!("not a tile task: {e}")))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a task serialises")
    }

    pub fn label(&self) -> String {
        match self {
            TileTask::Tile { scale, rect, .. } => format!("tile {}x{}+{}+{} (scale {})", rect.width, rect.height, rect.x, rect.y, scale + 1),
            TileTask::Assemble { scale, tiles, .. } => format!("assemble {} tiles (scale {})", tiles.len(), scale + 1),
        }
    }
}

/// How a job was split (its final metadata's `tiling`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TilingSummary {
    /// Scales rendered whole, in the first job (0: every scale is tiled).
    pub whole_scales: u32,
    /// Tiles per tiled scale, coarsest first.
    pub tiles: Vec<u32>,
    /// Longest tile side in pixels.
    pub tile_size: u32,
    pub overlap: u32,
    /// Whether this assembly is the job's last (its output is the job's).
    pub last: bool,
}

/// One job of a tiled render's plan.
#[derive(Debug, Clone, PartialEq)]
pub struct TiledJob {
    /// Appended to the job's name (empty for the last assembly, which keeps it).
    pub suffix: String,
    pub params: RenderParams,
    /// None: a plain render (the coarse scales).
    pub task: Option<TileTask>,
    /// Indices of earlier jobs of the plan.
    pub depends_on: Vec<u32>,
    /// The long side the job's device holds at once (0: no device).
    pub device_side: u32,
}

/// The plan of a job (`params` with explicit scales) whose content is
/// `width`×`height`, with tiles of at most `tile` pixels a side: None when
/// every scale fits whole. The coarse scales that fit run as one plain job;
/// from the first that does not, each scale is tiles then an assembly.
pub fn plan(params: &RenderParams, (width, height): (u32, u32), tile: u32) -> Result<Option<Vec<TiledJob>>> {
    let params = params.resolved();
    let sizes = params.scale_sizes();
    let Some(first_tiled) = sizes.iter().position(|&s| s > tile) else {
        return Ok(None);
    };
    let overlap = overlap_for(&params, tile);
    if tile < MIN_TILE_SIZE || overlap * 4 > tile {
        return Err(ParamError::new(
            "tile_size",
            format!("tiles of {tile} px with {overlap} px of overlap: tiles must be at least {MIN_TILE_SIZE} px and 4x the overlap"),
        ));
    }
    let mut jobs: Vec<TiledJob> = Vec::new();
    let mut previous: Option<u32> = None;
    if first_tiled > 0 {
        let coarse = RenderParams {
            size: sizes[first_tiled - 1],
            scales: first_tiled as u32,
            scale_iterations: (0..first_tiled - 1).map(|i| params.iterations_at(i)).collect(),
            iterations: params.iterations_at(first_tiled - 1),
            tile_size: 0,
            tile_overlap: 0,
            print: PrintFormat::None,
            ..params.clone()
        };
        jobs.push(TiledJob { suffix: "-coarse".into(), device_side: coarse.size, params: coarse, task: None, depends_on: vec![] });
        previous = Some(0);
    }
    let mut counts = Vec::new();
    for k in first_tiled..sizes.len() {
        let (w, h) = fit_long_side(width, height, sizes[k]);
        let rects = grid(w, h, tile, overlap);
        if rects.len() > MAX_TILES_PER_SCALE {
            return Err(ParamError::new("tile_size", format!("{} tiles at {} px; the limit is {MAX_TILES_PER_SCALE} per scale", rects.len(), sizes[k])));
        }
        if w.min(h) < overlap {
            return Err(ParamError::new("content", format!("{w}x{h} px at {} px is smaller than the tile overlap of {overlap} px", sizes[k])));
        }
        counts.push(rects.len() as u32);
        let last = k + 1 == sizes.len();
        let tile_params = RenderParams {
            size: sizes[k],
            scales: 1,
            scale_iterations: Vec::new(),
            iterations: params.iterations_at(k),
            tile_size: 0,
            tile_overlap: 0,
            // the last scale's tiles of a print keep 16 bits for the blend
            print: if last && params.print != PrintFormat::None { PrintFormat::Png16 } else { PrintFormat::None },
            ..params.clone()
        };
        let columns = spans(w, tile, overlap).len();
        let mut tile_ids = Vec::with_capacity(rects.len());
        for (i, rect) in rects.iter().enumerate() {
            let task = TileTask::Tile { scale: k as u32, rect: *rect, width: w, height: h, from_previous: previous.is_some() };
            let (row, col) = (i / columns, i % columns);
            jobs.push(TiledJob {
                suffix: format!("-s{}-r{}c{}", k + 1, row + 1, col + 1),
                params: tile_params.clone(),
                task: Some(task),
                depends_on: previous.into_iter().collect(),
                device_side: rect.width.max(rect.height),
            });
            tile_ids.push(jobs.len() as u32 - 1);
        }
        let summary = TilingSummary { whole_scales: first_tiled as u32, tiles: Vec::new(), tile_size: tile, overlap, last };
        let task = TileTask::Assemble { scale: k as u32, width: w, height: h, tiles: rects, overlap, plan: summary };
        let mut deps = tile_ids;
        deps.extend(previous);
        let suffix = if last { String::new() } else { format!("-s{}", k + 1) };
        // an assembly renders nothing: its params are the whole job's (its metadata's)
        jobs.push(TiledJob { suffix, params: params.clone(), task: Some(task), depends_on: deps, device_side: 0 });
        previous = Some(jobs.len() as u32 - 1);
    }
    // every assembly's summary names the whole plan
    for job in &mut jobs {
        if let Some(TileTask::Assemble { plan, .. }) = &mut job.task {
            plan.tiles = counts.clone();
        }
    }
    Ok(Some(jobs))
}

#[cfg(test)]
mod tests;
