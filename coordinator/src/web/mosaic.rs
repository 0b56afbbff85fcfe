//! A tiled render's mosaic on the batch page: per tiled scale, an SVG of the
//! scale's picture with each tile in its place, its picture once it lands and
//! its state before; the assembled picture over them once blended. The page
//! fetches it again (`/fragments/tiles/ID`) when a tile's job changes.

use std::fmt::Write;

use stylefarm_proto as pb;
use stylefarm_proto::mosaic::{mosaics, Mosaic, TileState};

use super::pages::esc;

/// The widest a mosaic is drawn, in CSS pixels (the SVG scales the picture).
const WIDTH: u32 = 480;

fn image(job: &pb::Job, part: &pb::TilePart) -> String {
    format!(
        r#"<image href="/files/{id}/output.png" x="{x}" y="{y}" width="{w}" height="{h}" preserveAspectRatio="none"/>"#,
        id = esc(&job.id),
        x = part.x,
        y = part.y,
        w = part.width,
        h = part.height
    )
}

fn mosaic(m: &Mosaic) -> String {
    let (w, h) = (m.part.image_width.max(1), m.part.image_height.max(1));
    let shown_h = (u64::from(WIDTH) * u64::from(h) / u64::from(w)).max(1);
    let summary = esc(&m.summary());
    let mut out = format!(
        r#"<figure class="mosaic" data-job="{id}"><svg viewBox="0 0 {w} {h}" width="{WIDTH}" height="{shown_h}" role="img" aria-label="{summary}">"#,
        id = esc(&m.assembly.id),
    );
    let assembled = TileState::of(m.assembly) == TileState::Done;
    // waiting and running tiles first, landed ones over them: overlaps show the picture
    let mut tiles = m.tiles.clone();
    tiles.sort_by_key(|t| t.state == TileState::Done);
    for t in &tiles {
        let state = t.state.as_str();
        let p = t.part;
        let _ = write!(
            out,
            r#"<a href="/jobs/{id}" class="tile" data-state="{state}"><title>{name}: {state}</title>"#,
            id = esc(&t.job.id),
            name = esc(&t.job.name)
        );
        if t.state == TileState::Done && !assembled {
            out.push_str(&image(t.job, p));
        } else {
            let _ = write!(out, r#"<rect x="{}" y="{}" width="{}" height="{}"/>"#, p.x, p.y, p.width, p.height);
        }
        out.push_str("</a>");
    }
    if assembled {
        let _ = write!(out, r#"<a href="/jobs/{}" class="assembled">{}</a>"#, esc(&m.assembly.id), image(m.assembly, m.part));
    }
    let _ = write!(
        out,
        r#"</svg><figcaption><a href="/jobs/{id}">{name}</a> <small>{summary}</small></figcaption></figure>"#,
        id = esc(&m.assembly.id),
        name = esc(&m.assembly.name),
    );
    out
}

/// The batch's tiled renders, one figure per tiled scale; empty for a batch without tiles.
pub fn tiles(batch: &str, jobs: &[pb::Job]) -> String {
    let all = mosaics(jobs);
    if all.is_empty() {
        return String::new();
    }
    let mut out = format!(r#"<section class="tiles" id="tiles" data-batch="{}"><h2>Tiles</h2><div class="mosaics">"#, esc(batch));
    for m in &all {
        out.push_str(&mosaic(m));
    }
    out.push_str("</div></section>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(kind: pb::TilePartKind, x: u32, y: u32, width: u32, height: u32) -> Option<pb::TilePart> {
        Some(pb::TilePart { kind: kind as i32, scale: 2, image_width: 300, image_height: 200, x, y, width, height })
    }

    fn job(id: &str, state: pb::JobState, tile: Option<pb::TilePart>, deps: &[&str]) -> pb::Job {
        pb::Job {
            id: id.into(),
            name: format!("cat<{id}>"),
            state: state as i32,
            tile,
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn tiles_land_in_place_then_the_assembly_covers_them() {
        use pb::JobState::*;
        use pb::TilePartKind::*;
        let mut jobs = vec![
            job("j1", Succeeded, part(Tile, 0, 0, 170, 200), &[]),
            job("j2", Running, part(Tile, 130, 0, 170, 200), &[]),
            job("j3", Queued, part(Assemble, 0, 0, 300, 200), &["j1", "j2"]),
        ];
        let html = tiles("b1", &jobs);
        assert!(html.contains(r#"<section class="tiles" id="tiles" data-batch="b1">"#), "{html}");
        assert!(html.contains(r#"<svg viewBox="0 0 300 200" width="480" height="320""#), "{html}");
        assert!(
            html.contains(r#"<a href="/jobs/j1" class="tile" data-state="done"><title>cat&lt;j1&gt;: done</title><image href="/files/j1/output.png" x="0" y="0" width="170" height="200""#),
            "a landed tile shows its picture in place: {html}"
        );
        assert!(html.contains(r#"data-state="running"><title>cat&lt;j2&gt;: running</title><rect x="130" y="0" width="170" height="200"/>"#), "{html}");
        assert!(html.find("data-state=\"running\"") < html.find("data-state=\"done\""), "landed tiles are drawn over the others: {html}");
        assert!(html.contains("scale 2 · 300×200 · 1/2 tiles"), "{html}");
        assert!(!html.contains("assembled"), "{html}");
        jobs[1].state = Succeeded as i32;
        jobs[2].state = Succeeded as i32;
        let html = tiles("b1", &jobs);
        assert!(html.contains(r#"<a href="/jobs/j3" class="assembled"><image href="/files/j3/output.png" x="0" y="0" width="300" height="200""#), "{html}");
        assert!(!html.contains("/files/j1/"), "the blend replaces the tiles' pictures: {html}");
        assert!(html.contains("2/2 tiles · assembled"), "{html}");
        assert_eq!(tiles("b1", &[job("j9", Succeeded, None, &[])]), "", "a batch without tiles has no section");
    }
}
