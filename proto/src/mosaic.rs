//! The per-tile view of a tiled render (a print split across the farm) from
//! its jobs as the API returns them (`Job.tile`): one mosaic per assembly, its
//! tiles in place. The dashboard draws it as a picture, `status` as a grid of
//! characters; both take it from here.

use std::collections::HashMap;

use crate::v1::{Job, JobState, TilePart, TilePartKind};

/// How far one tile is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TileState {
    Failed,
    Waiting,
    Running,
    Done,
}

impl TileState {
    pub fn of(job: &Job) -> TileState {
        match JobState::try_from(job.state).unwrap_or(JobState::Unspecified) {
            JobState::Succeeded => TileState::Done,
            JobState::Running => TileState::Running,
            JobState::Failed | JobState::Cancelled => TileState::Failed,
            _ => TileState::Waiting,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TileState::Failed => "failed",
            TileState::Waiting => "waiting",
            TileState::Running => "running",
            TileState::Done => "done",
        }
    }
}

/// One tile of a mosaic: its job and its place in the scale's picture.
#[derive(Debug, Clone, Copy)]
pub struct MosaicTile<'a> {
    pub job: &'a Job,
    pub part: &'a TilePart,
    pub state: TileState,
}

/// One tiled scale of one render: the assembly and the tiles it blends, in
/// the assembly's order (row by row).
#[derive(Debug, Clone)]
pub struct Mosaic<'a> {
    pub assembly: &'a Job,
    pub part: &'a TilePart,
    pub tiles: Vec<MosaicTile<'a>>,
}

impl Mosaic<'_> {
    pub fn done(&self) -> usize {
        self.tiles.iter().filter(|t| t.state == TileState::Done).count()
    }

    /// The tiles as rows (by their top edge) of tiles (by their left edge).
    pub fn rows(&self) -> Vec<Vec<MosaicTile<'_>>> {
        let mut rows: Vec<Vec<MosaicTile>> = Vec::new();
        for tile in &self.tiles {
            match rows.iter_mut().find(|r| r[0].part.y == tile.part.y) {
                Some(row) => row.push(*tile),
                None => rows.push(vec![*tile]),
            }
        }
        rows.sort_by_key(|r| r[0].part.y);
        for row in &mut rows {
            row.sort_by_key(|t| t.part.x);
        }
        rows
    }

    /// "scale 3 · 2048×1365 · 7/12 tiles" and the assembly's state once the tiles are in.
    pub fn summary(&self) -> String {
        let mut text = format!("scale {} · {}×{} · {}/{} tiles", self.part.scale, self.part.image_width, self.part.image_height, self.done(), self.tiles.len());
        let failed = self.tiles.iter().filter(|t| t.state == TileState::Failed).count();
        if failed > 0 {
            text.push_str(&format!(" · {failed} failed"));
        }
        if TileState::of(self.assembly) == TileState::Done {
            text.push_str(" · assembled");
        }
        text
    }
}

fn part(job: &Job, kind: TilePartKind) -> Option<&TilePart> {
    job.tile.as_ref().filter(|t| t.kind == kind as i32)
}

/// Every tiled scale of the batch's renders, in the batch's order: each
/// assembly with the tiles it depends on. Empty for a batch without tiles.
pub fn mosaics(jobs: &[Job]) -> Vec<Mosaic<'_>> {
    let by_id: HashMap<&str, &Job> = jobs.iter().map(|j| (j.id.as_str(), j)).collect();
    jobs.iter()
        .filter_map(|assembly| {
            let whole = part(assembly, TilePartKind::Assemble)?;
            let tiles = assembly
                .depends_on
                .iter()
                .filter_map(|id| by_id.get(id.as_str()))
                .filter_map(|job| Some(MosaicTile { job, part: part(job, TilePartKind::Tile)?, state: TileState::of(job) }))
                .collect();
            Some(Mosaic { assembly, part: whole, tiles })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tile(id: &str, x: u32, y: u32, state: JobState) -> Job {
        Job {
            id: id.into(),
            state: state as i32,
            tile: Some(TilePart { kind: TilePartKind::Tile as i32, scale: 2, image_width: 200, image_height: 120, x, y, width: 110, height: 70 }),
            ..Default::default()
        }
    }

    #[test]
    fn an_assembly_gathers_its_own_tiles_in_rows() {
        let assembly = |id: &str, deps: &[&str], state: JobState| Job {
            id: id.into(),
            state: state as i32,
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            tile: Some(TilePart {
                kind: TilePartKind::Assemble as i32,
                scale: 2,
                image_width: 200,
                image_height: 120,
                width: 200,
                height: 120,
                ..Default::default()
            }),
            ..Default::default()
        };
        let coarse = Job { id: "j1".into(), state: JobState::Succeeded as i32, ..Default::default() };
        let jobs = vec![
            coarse,
            tile("j2", 90, 0, JobState::Succeeded),
            tile("j3", 0, 0, JobState::Running),
            tile("j4", 0, 50, JobState::Failed),
            tile("j5", 90, 50, JobState::Queued),
            assembly("j6", &["j3", "j2", "j4", "j5", "j1"], JobState::Queued),
            // another render's tile: not this assembly's
            tile("j7", 0, 0, JobState::Succeeded),
        ];
        let all = mosaics(&jobs);
        assert_eq!(all.len(), 1);
        let m = &all[0];
        assert_eq!(m.assembly.id, "j6");
        assert_eq!(m.tiles.len(), 4, "the coarse job is a dependency but not a tile");
        assert_eq!(m.done(), 1);
        let rows: Vec<Vec<(&str, TileState)>> = m.rows().iter().map(|r| r.iter().map(|t| (t.job.id.as_str(), t.state)).collect()).collect();
        assert_eq!(rows, vec![vec![("j3", TileState::Running), ("j2", TileState::Done)], vec![("j4", TileState::Failed), ("j5", TileState::Waiting)]]);
        assert_eq!(m.summary(), "scale 2 · 200×120 · 1/4 tiles · 1 failed");
        assert!(mosaics(&jobs[..5]).is_empty(), "no assembly, no mosaic");
    }
}
