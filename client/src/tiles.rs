//! A tiled render (a print split across the farm) in the terminal: `status`
//! prints each tiled scale as a grid of characters, one per tile in its place,
//! and `--json` lists the tiles with their rectangles. The grouping of tiles
//! under their assembly is shared with the dashboard
//! ([`stylefarm_proto::mosaic::mosaics`]).

use serde::Serialize;
use stylefarm_proto as pb;
use stylefarm_proto::mosaic::{mosaics, Mosaic, TileState};

fn glyph(state: TileState) -> char {
    match state {
        TileState::Done => '█',
        TileState::Running => '▸',
        TileState::Waiting => '·',
        TileState::Failed => '✗',
    }
}

fn grid(m: &Mosaic) -> String {
    m.rows().iter().map(|row| format!("    {}\n", row.iter().map(|t| glyph(t.state).to_string()).collect::<Vec<_>>().join(" "))).collect()
}

/// `status`'s view: per tiled scale, its assembly's job and a grid of its
/// tiles; failed tiles by job. `None` for a batch without tiles.
pub fn view(jobs: &[pb::Job]) -> Option<String> {
    let all = mosaics(jobs);
    if all.is_empty() {
        return None;
    }
    let mut out = String::from("tiles (█ done  ▸ running  · waiting  ✗ failed):\n");
    for m in &all {
        out.push_str(&format!("  {} {}: {}\n", m.assembly.id, m.assembly.name, m.summary()));
        out.push_str(&grid(m));
        let failed: Vec<&str> = m.tiles.iter().filter(|t| t.state == TileState::Failed).map(|t| t.job.id.as_str()).collect();
        if !failed.is_empty() {
            out.push_str(&format!("    failed tiles: {}\n", failed.join(", ")));
        }
    }
    Some(out.trim_end().to_string())
}

/// One tile in `status --json`.
#[derive(Serialize)]
pub struct TileJson<'a> {
    pub job: &'a str,
    pub state: &'static str,
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// One tiled scale in `status --json`: its assembly and its tiles.
#[derive(Serialize)]
pub struct MosaicJson<'a> {
    pub assembly: &'a str,
    pub assembly_state: &'static str,
    pub scale: u32,
    pub width: u32,
    pub height: u32,
    pub tiles: Vec<TileJson<'a>>,
}

pub fn json(jobs: &[pb::Job]) -> Vec<MosaicJson<'_>> {
    mosaics(jobs)
        .iter()
        .map(|m| MosaicJson {
            assembly: &m.assembly.id,
            assembly_state: TileState::of(m.assembly).as_str(),
            scale: m.part.scale,
            width: m.part.image_width,
            height: m.part.image_height,
            tiles: m
                .tiles
                .iter()
                .map(|t| TileJson { job: &t.job.id, state: t.state.as_str(), x: t.part.x, y: t.part.y, width: t.part.width, height: t.part.height })
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, state: pb::JobState, kind: pb::TilePartKind, (x, y): (u32, u32), deps: &[&str]) -> pb::Job {
        pb::Job {
            id: id.into(),
            name: "cat".into(),
            state: state as i32,
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            tile: Some(pb::TilePart { kind: kind as i32, scale: 3, image_width: 400, image_height: 300, x, y, width: 220, height: 170 }),
            ..Default::default()
        }
    }

    #[test]
    fn status_draws_each_tile_in_its_place() {
        use pb::JobState::*;
        use pb::TilePartKind::*;
        let jobs = vec![
            job("j1", Succeeded, Tile, (0, 0), &[]),
            job("j2", Running, Tile, (180, 0), &[]),
            job("j3", Failed, Tile, (0, 130), &[]),
            job("j4", Queued, Tile, (180, 130), &[]),
            job("j5", Queued, Assemble, (0, 0), &["j1", "j2", "j3", "j4"]),
        ];
        let text = view(&jobs).unwrap();
        assert!(text.contains("  j5 cat: scale 3 · 400×300 · 1/4 tiles · 1 failed\n    █ ▸\n    ✗ ·\n    failed tiles: j3"), "{text}");
        let json = serde_json::to_value(json(&jobs)).unwrap();
        assert_eq!(json[0]["assembly"], "j5");
        assert_eq!(json[0]["tiles"][1]["state"], "running");
        assert_eq!(json[0]["tiles"][3]["x"], 180);
        assert!(view(&[pb::Job::default()]).is_none(), "a batch without tiles prints nothing");
    }
}
