//! Prints larger than a device, at submit: a job whose finest scale needs
//! more device memory than a tile may have (the job's `tile_size`, else
//! `tile_memory_bytes`, else the largest connected device that may take it)
//! becomes a graph of jobs ([`stylefarm_core::tiling::plan`]): its coarse
//! scales as one job, each finer scale as tiles any worker may lease, and an
//! assembly per scale; the last assembly keeps the job's name and makes its
//! output. A job that could not fit even one tile is refused here.

use std::sync::Arc;

use stylefarm_core::estimate::{default_time_limit_ms, device_bytes, pixel_iterations, tile_bytes};
use stylefarm_core::labels::Requirement;
use stylefarm_core::params::{RenderParams, MAX_SIZE};
use stylefarm_core::tiling::{plan, TileTask, TiledJob, MIN_TILE_SIZE};

use crate::error::{CoordError, Result};
use crate::farm::Farm;
use crate::model::{ImageSource, NewBatch, NewJob};

/// Time an assembly may take: decoding, blending and encoding its tiles.
const ASSEMBLE_LIMIT_MS: u64 = 10 * 60_000;

/// The longest tile side whose render fits `bytes` (None: not even the smallest tile).
pub fn side_fitting(params: &RenderParams, bytes: u64) -> Option<u32> {
    let fits = |side: u32| tile_bytes(params, side) <= bytes;
    if !fits(MIN_TILE_SIZE) {
        return None;
    }
    let (mut lo, mut hi) = (MIN_TILE_SIZE, MAX_SIZE);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Some(lo)
}

/// The tile side a job gets (None: it is not tiled), given the device memory
/// a tile may have (`budget`, None: unknown, so only the job's own `tile_size` tiles).
fn tile_side(field: &str, params: &RenderParams, budget: Option<u64>) -> Result<Option<u32>> {
    if params.tile_size != 0 {
        return Ok(Some(params.tile_size));
    }
    let Some(bytes) = budget else { return Ok(None) };
    if device_bytes(params) <= bytes {
        return Ok(None);
    }
    match side_fitting(params, bytes) {
        Some(side) => Ok(Some(side)),
        None => Err(CoordError::invalid(
            format!("{field}.settings.size"),
            format!(
                "not even a {MIN_TILE_SIZE} px tile fits the {:.1} GiB a tile may use (it needs {:.1} GiB)",
                gib(bytes),
                gib(tile_bytes(params, MIN_TILE_SIZE))
            ),
        )),
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// The content's width and height as the worker will see it (turned as its
/// EXIF orientation says), read from its header (the bytes are fetched).
async fn dimensions(farm: &Arc<Farm>, field: &str, source: &ImageSource) -> Result<(u32, u32)> {
    let data = farm.read_input(source, &format!("{field}.content")).await?;
    let not_image = |e: image::ImageError| CoordError::invalid(format!("{field}.content"), format!("not an image: {e}"));
    let reader = image::ImageReader::new(std::io::Cursor::new(data)).with_guessed_format().map_err(|e| not_image(e.into()))?;
    let mut decoder = reader.into_decoder().map_err(not_image)?;
    let (width, height) = image::ImageDecoder::dimensions(&decoder);
    // as the worker sees it: turned as its EXIF orientation says
    let turned = matches!(
        image::ImageDecoder::orientation(&mut decoder),
        Ok(image::metadata::Orientation::Rotate90
            | image::metadata::Orientation::Rotate270
            | image::metadata::Orientation::Rotate90FlipH
            | image::metadata::Orientation::Rotate270FlipH)
    );
    Ok(if turned { (height, width) } else { (width, height) })
}

/// Expands each plain job of `batch` that needs tiles into its graph, in place.
pub async fn expand(farm: &Arc<Farm>, batch: &mut NewBatch, time_limit_s: u32) -> Result<()> {
    let rules = &farm.config.submit;
    let mut plans: Vec<Option<Vec<TiledJob>>> = Vec::with_capacity(batch.jobs.len());
    for (i, job) in batch.jobs.iter().enumerate() {
        if job.task.is_some() || !job.depends_on.is_empty() {
            plans.push(None);
            continue;
        }
        let field = format!("jobs[{i}]");
        let params: RenderParams =
            serde_json::from_str(&job.params_json).map_err(|e| CoordError::Internal(format!("{field}: stored params do not parse: {e}")))?;
        let budget = match rules.tile_memory_bytes {
            0 => {
                let requires: Vec<Requirement> = batch.requires.iter().chain(&job.requires).cloned().collect();
                farm.read(|s| s.largest_connected_device(crate::clock::now_ms(), &requires))?.filter(|&b| b > 0)
            }
            bytes => Some(bytes),
        };
        let Some(side) = tile_side(&field, &params, budget)? else {
            plans.push(None);
            continue;
        };
        if params.scale_sizes().last().is_some_and(|&finest| finest <= side) {
            plans.push(None);
            continue;
        }
        let dims = dimensions(farm, &field, &job.content).await?;
        let planned = plan(&params, dims, side).map_err(|e| CoordError::invalid(format!("{field}.settings.{}", e.field), e.reason))?;
        plans.push(planned);
    }
    if plans.iter().all(Option::is_none) {
        return Ok(());
    }
    let total: usize = plans.iter().map(|p| p.as_ref().map_or(1, Vec::len)).sum();
    if total > rules.max_jobs {
        return Err(CoordError::invalid("jobs", format!("its prints split into tiles make {total} jobs; the limit is {} per batch", rules.max_jobs)));
    }
    let old = std::mem::take(&mut batch.jobs);
    let mut jobs = Vec::with_capacity(total);
    for (job, planned) in old.into_iter().zip(plans) {
        match planned {
            None => jobs.push(job),
            Some(pieces) => {
                let base = jobs.len() as u32;
                for piece in pieces {
                    jobs.push(piece_job(&job, piece, base, time_limit_s)?);
                }
            }
        }
    }
    batch.jobs = jobs;
    Ok(())
}

/// One job of a tiled job's plan, its dependencies numbered in the batch from `base`.
fn piece_job(job: &NewJob, piece: TiledJob, base: u32, time_limit_s: u32) -> Result<NewJob> {
    let renders = piece.device_side > 0;
    let at_side = RenderParams { size: piece.device_side.max(1), ..piece.params.clone() };
    let derived_ms = if renders { default_time_limit_ms(&at_side) } else { ASSEMBLE_LIMIT_MS };
    let estimate_bytes = match &piece.task {
        // a tile holds its whole scale's images beside its own render
        Some(TileTask::Tile { .. }) => tile_bytes(&piece.params, piece.device_side),
        _ if renders => device_bytes(&at_side),
        _ => 0,
    };
    Ok(NewJob {
        name: format!("{}{}", job.name, piece.suffix),
        content: job.content.clone(),
        styles: job.styles.clone(),
        params_json: serde_json::to_string(&piece.params).map_err(|e| CoordError::Internal(format!("params do not serialise: {e}")))?,
        estimate_bytes,
        work: if renders { pixel_iterations(&at_side) } else { 0 },
        time_limit_ms: if time_limit_s == 0 { derived_ms } else { u64::from(time_limit_s) * 1000 },
        depends_on: piece.depends_on.iter().map(|d| d + base).collect(),
        task: piece.task.map(|t| t.to_json()),
        requires: job.requires.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use stylefarm_core::params::Preset;

    #[test]
    fn the_side_that_fits_is_the_largest_whose_estimate_fits() {
        let params = RenderParams { size: 4096, ..RenderParams::preset(Preset::Keras) };
        let at = |side: u32| tile_bytes(&params, side);
        for gib in [4u64, 8, 24, 80] {
            let bytes = gib << 30;
            let side = side_fitting(&params, bytes).unwrap();
            assert!(at(side) <= bytes && at(side + 1) > bytes, "{gib} GiB: {side}");
        }
        assert_eq!(side_fitting(&params, 1 << 20), None, "1 MiB fits nothing");
    }

    #[test]
    fn a_job_tiles_when_it_asks_or_does_not_fit_and_is_refused_when_nothing_fits() {
        let big = RenderParams { size: 4096, ..RenderParams::preset(Preset::Gatys) };
        assert_eq!(tile_side("jobs[0]", &big, None).unwrap(), None, "no budget known: left whole");
        assert_eq!(tile_side("jobs[0]", &big, Some(1 << 40)).unwrap(), None, "it fits");
        let side = tile_side("jobs[0]", &big, Some(8 << 30)).unwrap().unwrap();
        assert!((1000..4096).contains(&side), "{side}");
        assert_eq!(tile_side("jobs[0]", &RenderParams { tile_size: 512, ..big.clone() }, None).unwrap(), Some(512));
        let err = tile_side("jobs[3]", &big, Some(1 << 20)).unwrap_err();
        assert!(err.to_string().contains("jobs[3].settings.size") && err.to_string().contains("256 px tile"), "{err}");
    }
}
