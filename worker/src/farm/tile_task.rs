//! A tiled print's jobs on the worker ([`TileTask`], dispatched by
//! [`super::task`]): where a tile starts from (the scale before's committed
//! image, the lease's first dependency), and the assembly of a scale's tiles
//! into one image, with the loss trace of every scale so far and, for the
//! last, metadata saying how the job was split.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use image::{Pixel, RgbImage};
use stylefarm_core::print::{Depth, PrintFormat, Sample, PRINT_PNG};
use stylefarm_core::tiling::{Rect, TileTask, TilingSummary};
use stylefarm_engine::image_io::{decode_rgb, decode_rgb16, save_png, save_print, to_8bit_image, Rgb16Image};
use stylefarm_engine::params::RenderParams;
use stylefarm_engine::tiled::{blend_tiles, Samples};
use stylefarm_engine::trace::TraceRow;
use stylefarm_proto as pb;

use super::attempt::{failed, upload_files, JobContext, Outcome, Rendered, RunningJob};
use super::render::TileInputs;
use super::video_task::{fetch, input_url};

/// What a tile job needs besides the lease's content and styles.
pub async fn tile_inputs(ctx: &JobContext, lease: &pb::Lease, task: &TileTask) -> Result<TileInputs, Outcome> {
    match task {
        TileTask::Tile { rect, width, height, from_previous, .. } => {
            let previous = match from_previous {
                true => Some(fetch(ctx, "previous scale", &input_url(ctx, lease, 0, "output.png")?).await?),
                false => None,
            };
            Ok(TileInputs { rect: *rect, width: *width, height: *height, previous })
        }
        other => Err(failed(format!("{} does not render", other.label()), false)),
    }
}

/// Blends a scale's tiles, continues the trace, writes the metadata of the
/// last, and uploads them.
pub async fn assemble(ctx: &JobContext, job: &Arc<RunningJob>, task: &TileTask, params: &RenderParams) -> Outcome {
    let TileTask::Assemble { scale, width, height, tiles, overlap, plan } = task else {
        return failed(format!("{} is not an assembly", task.label()), false);
    };
    let lease = &job.lease;
    let began = Instant::now();
    if lease.inputs.len() < tiles.len() {
        return failed(format!("the assembly needs {} tiles; the lease lists {} inputs", tiles.len(), lease.inputs.len()), false);
    }
    // the last scale of a print blends the tiles' 16-bit images
    let depth = match plan.last && params.print != PrintFormat::None {
        true => Depth::Sixteen,
        false => Depth::Eight,
    };
    let (images, traces, earlier) = match fetch_tiles(ctx, lease, tiles.len(), depth).await {
        Ok(fetched) => fetched,
        Err(outcome) => return outcome,
    };
    let dir = ctx.work_dir.join(format!("{}-attempt-{}", lease.job_id, lease.attempt));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return failed(format!("creating {}: {e}", dir.display()), true);
    }
    let work = Assembly {
        scale: *scale,
        size: (*width, *height),
        tiles: tiles.clone(),
        overlap: *overlap,
        plan: plan.clone(),
        params: params.clone(),
        depth,
        farm: super::render::farm_metadata(lease, &ctx.store_url),
    };
    let out = dir.clone();
    let made = tokio::task::spawn_blocking(move || work.run(images, traces, earlier, &out)).await;
    let outcome = match made {
        Ok(Ok((files, summary))) => {
            job.time(&task.label(), began, 0, format!("{} tiles", tiles.len()));
            let rendered = Rendered { engine_ms: began.elapsed().as_secs_f64() * 1e3, device: "cpu (assembly)".into(), ..summary };
            let mut outcome = upload_files(ctx, lease, &dir, files, rendered).await;
            if let Outcome::Done(result) = &mut outcome {
                result.spans = job.take_spans();
            }
            outcome
        }
        Ok(Err(reason)) => failed(reason, false),
        Err(e) => failed(format!("the assembly thread panicked: {e}"), true),
    };
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

/// Each tile's image (8 or 16 bits) and trace, and the scale before's trace
/// (a coarse job or the assembly before) when there is one.
async fn fetch_tiles(ctx: &JobContext, lease: &pb::Lease, count: usize, depth: Depth) -> Result<(Vec<Bytes>, Vec<Bytes>, Option<Bytes>), Outcome> {
    let image = match depth {
        Depth::Sixteen => PRINT_PNG,
        Depth::Eight => "output.png",
    };
    let (mut images, mut traces) = (Vec::with_capacity(count), Vec::with_capacity(count));
    for k in 0..count {
        images.push(fetch(ctx, "tile", &input_url(ctx, lease, k, image)?).await?);
        traces.push(fetch(ctx, "tile trace", &input_url(ctx, lease, k, "trace.jsonl")?).await?);
    }
    let earlier = match lease.inputs.len() > count {
        true => Some(fetch(ctx, "earlier trace", &input_url(ctx, lease, count, "trace.jsonl")?).await?),
        false => None,
    };
    Ok((images, traces, earlier))
}

/// One assembly's work, off the async runtime.
struct Assembly {
    scale: u32,
    size: (u32, u32),
    tiles: Vec<Rect>,
    overlap: u32,
    plan: TilingSummary,
    params: RenderParams,
    /// Bits per channel of the tiles blended (16: the last scale of a print).
    depth: Depth,
    farm: serde_json::Value,
}

impl Assembly {
    fn run(self, images: Vec<Bytes>, traces: Vec<Bytes>, earlier: Option<Bytes>, dir: &Path) -> Result<(Vec<String>, Rendered), String> {
        let mut files = vec!["output.png".to_string(), "trace.jsonl".to_string()];
        let image = match self.depth {
            Depth::Eight => {
                let decoded: Vec<RgbImage> =
                    images.iter().enumerate().map(|(k, bytes)| decode_rgb(bytes).map_err(|e| format!("tile {k}: {e}"))).collect::<Result<_, _>>()?;
                self.blend(&decoded)?
            }
            Depth::Sixteen => {
                let decoded: Vec<Rgb16Image> =
                    images.iter().enumerate().map(|(k, bytes)| decode_rgb16(bytes).map_err(|e| format!("tile {k}: {e}"))).collect::<Result<_, _>>()?;
                let print = self.blend(&decoded)?;
                let name = self.params.print.file_name().ok_or("a 16-bit assembly without a print format")?;
                save_print(&print, self.params.print, &dir.join(name)).map_err(|e| e.to_string())?;
                files.push(name.into());
                to_8bit_image(&print)
            }
        };
        save_png(&image, &dir.join("output.png")).map_err(|e| e.to_string())?;
        let mut rows = match &earlier {
            Some(bytes) => parse_rows(bytes).map_err(|e| format!("earlier trace: {e}"))?,
            None => Vec::new(),
        };
        let tile_rows = traces.iter().enumerate().map(|(k, t)| parse_rows(t).map_err(|e| format!("tile {k} trace: {e}"))).collect::<Result<Vec<_>, _>>()?;
        let offset_ms = rows.last().map_or(0.0, |r| r.elapsed_ms);
        let scale_rows = sum_rows(&tile_rows, self.scale, offset_ms);
        let iterations = scale_rows.last().map_or(0, |r| r.iteration);
        rows.extend(scale_rows);
        let mut trace = Vec::new();
        for row in &rows {
            trace.extend(serde_json::to_vec(row).map_err(|e| e.to_string())?);
            trace.push(b'\n');
        }
        std::fs::write(dir.join("trace.jsonl"), trace).map_err(|e| format!("writing the trace: {e}"))?;
        let final_loss = rows.last().map_or(0.0, |r| r.total);
        if self.plan.last {
            let metadata = serde_json::json!({
                "engine": format!("stylefarm-engine {} (tiled)", env!("CARGO_PKG_VERSION")),
                "params": self.params,
                "output_width": image.width(),
                "output_height": image.height(),
                "initial_loss": rows.first().map_or(0.0, |r| r.total),
                "final_loss": final_loss,
                "tiling": {
                    "whole_scales": self.plan.whole_scales,
                    "tiles_per_scale": self.plan.tiles,
                    "tile_size": self.plan.tile_size,
                    "overlap": self.overlap,
                    "blend": "feathered: 0 on the outer quarter of each overlap, linear over its middle half",
                    "last_scale_tiles": self.tiles,
                },
                "farm": self.farm,
            });
            std::fs::write(dir.join("metadata.json"), serde_json::to_vec_pretty(&metadata).map_err(|e| e.to_string())?)
                .map_err(|e| format!("writing the metadata: {e}"))?;
            files.push("metadata.json".into());
        }
        Ok((files, Rendered { final_loss, iterations, engine_ms: 0.0, device: String::new() }))
    }

    fn blend<P>(&self, tiles: &[Samples<P>]) -> Result<Samples<P>, String>
    where
        P: Pixel,
        P::Subpixel: Sample,
    {
        let placed: Vec<(Rect, &Samples<P>)> = self.tiles.iter().copied().zip(tiles.iter()).collect();
        blend_tiles(self.size.0, self.size.1, self.overlap, &placed).map_err(|e| e.to_string())
    }
}

fn parse_rows(bytes: &[u8]) -> Result<Vec<TraceRow>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).map_err(|e| e.to_string())).collect()
}

/// A tiled scale's trace: per iteration, each loss summed over the tiles
/// (the whole's loss, as each tile's is its share), a tile that stopped
/// early counting its last row; evaluations summed, time the slowest tile's.
pub fn sum_rows(tiles: &[Vec<TraceRow>], scale: u32, offset_ms: f64) -> Vec<TraceRow> {
    let longest = tiles.iter().map(Vec::len).max().unwrap_or(0);
    (0..longest)
        .map(|i| {
            let rows: Vec<&TraceRow> = tiles.iter().filter_map(|t| t.get(i).or(t.last())).collect();
            let sum = |f: fn(&TraceRow) -> f64| rows.iter().map(|r| f(r)).sum::<f64>();
            TraceRow {
                scale,
                size: rows.iter().map(|r| r.size).max().unwrap_or(0),
                iteration: i as u32,
                total: sum(|r| r.total),
                content: sum(|r| r.content),
                style: sum(|r| r.style),
                tv: sum(|r| r.tv),
                evaluations: rows.iter().map(|r| r.evaluations).sum(),
                elapsed_ms: offset_ms + rows.iter().map(|r| r.elapsed_ms).fold(0.0, f64::max),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(iteration: u32, total: f64) -> TraceRow {
        TraceRow {
            scale: 0,
            size: 512,
            iteration,
            total,
            content: total / 2.0,
            style: total / 4.0,
            tv: total / 4.0,
            evaluations: iteration + 1,
            elapsed_ms: f64::from(iteration) * 10.0,
        }
    }

    #[test]
    fn a_scales_trace_sums_its_tiles_and_a_tile_that_stopped_early_keeps_its_last_row() {
        let a = vec![row(0, 10.0), row(1, 6.0), row(2, 4.0)];
        let b = vec![row(0, 20.0), row(1, 12.0)];
        let rows = sum_rows(&[a, b], 2, 100.0);
        let totals: Vec<f64> = rows.iter().map(|r| r.total).collect();
        assert_eq!(totals, vec![30.0, 18.0, 16.0]);
        assert_eq!((rows[2].scale, rows[2].iteration, rows[2].evaluations, rows[2].elapsed_ms), (2, 2, 5, 120.0));
        assert!(sum_rows(&[], 0, 0.0).is_empty());
    }
}
