use super::*;
use crate::params::Preset;

#[test]
fn spans_cover_the_axis_overlapping_by_at_least_the_overlap() {
    for (len, tile, overlap) in [(128, 80, 16), (1024, 576, 64), (4096, 1100, 96), (181, 100, 20), (80, 80, 16), (5000, 64, 16)] {
        let s = spans(len, tile, overlap);
        assert_eq!(s[0].0, 0);
        let (last, last_len) = *s.last().unwrap();
        assert_eq!(last + last_len, len, "{len} {tile} {overlap}: {s:?}");
        for pair in s.windows(2) {
            let shared = (pair[0].0 + pair[0].1).saturating_sub(pair[1].0);
            assert!(shared >= overlap, "{len} {tile} {overlap}: {s:?}");
        }
        assert!(s.iter().all(|&(_, l)| l <= tile));
        // the fewest: one tile fewer could not cover with that overlap
        let n = s.len() as u32;
        assert!(n == 1 || (n - 1) * (tile - overlap) + overlap < len, "{len} {tile} {overlap}: {n} tiles");
    }
    assert_eq!(grid(128, 96, 80, 16).len(), 4);
    assert_eq!(grid(60, 50, 80, 16), vec![Rect { x: 0, y: 0, width: 60, height: 50 }]);
}

/// A picture where every pixel differs from its neighbours.
fn picture(w: u32, h: u32) -> Vec<u8> {
    (0..w * h).flat_map(|i| [(i * 7 % 251) as u8, (i * 13 % 241) as u8, (i / w * 3 % 256) as u8]).collect()
}

fn crop(image: &[u8], w: u32, r: &Rect) -> Vec<u8> {
    (r.y..r.y + r.height).flat_map(|y| image[((y * w + r.x) * 3) as usize..((y * w + r.x + r.width) * 3) as usize].to_vec()).collect()
}

#[test]
fn tiles_cut_from_one_image_assemble_into_it_exactly() {
    let (w, h) = (200, 130);
    let whole = picture(w, h);
    let rects = grid(w, h, 80, 16);
    assert_eq!(rects.len(), 3 * 2);
    let tiles: Vec<(Rect, Vec<u8>)> = rects.iter().map(|r| (*r, crop(&whole, w, r))).collect();
    let refs: Vec<(Rect, &[u8])> = tiles.iter().map(|(r, t)| (*r, t.as_slice())).collect();
    assert_eq!(blend_rgb(w, h, 16, &refs).unwrap(), whole);
}

#[test]
fn sixteen_bit_tiles_assemble_exactly_too() {
    let (w, h) = (150, 90);
    let whole: Vec<u16> = picture(w, h).iter().enumerate().map(|(i, &v)| u16::from(v) * 256 + (i % 256) as u16).collect();
    let rects = grid(w, h, 64, 16);
    let tiles: Vec<(Rect, Vec<u16>)> = rects
        .iter()
        .map(|r| (*r, (r.y..r.y + r.height).flat_map(|y| whole[((y * w + r.x) * 3) as usize..((y * w + r.x + r.width) * 3) as usize].to_vec()).collect()))
        .collect();
    let refs: Vec<(Rect, &[u16])> = tiles.iter().map(|(r, t)| (*r, t.as_slice())).collect();
    assert_eq!(blend_rgb(w, h, 16, &refs).unwrap(), whole);
}

#[test]
fn where_one_tile_alone_covers_a_pixel_the_assembly_is_that_tile_and_seams_are_a_blend() {
    let (w, h) = (200, 130);
    let rects = grid(w, h, 80, 16);
    // each tile a different flat colour: the assembly shows which tiles made each pixel
    let tiles: Vec<(Rect, Vec<u8>)> = rects.iter().enumerate().map(|(i, r)| (*r, vec![(i * 40) as u8; r.pixels() as usize * 3])).collect();
    let refs: Vec<(Rect, &[u8])> = tiles.iter().map(|(r, t)| (*r, t.as_slice())).collect();
    let out = blend_rgb(w, h, 16, &refs).unwrap();
    let covering = |x: u32, y: u32| {
        rects.iter().enumerate().filter(|(_, r)| (r.x..r.x + r.width).contains(&x) && (r.y..r.y + r.height).contains(&y)).map(|(i, _)| i).collect::<Vec<_>>()
    };
    let (mut alone, mut shared) = (0, 0);
    for y in 0..h {
        for x in 0..w {
            let v = out[((y * w + x) * 3) as usize];
            match covering(x, y)[..] {
                [only] => {
                    assert_eq!(v, (only * 40) as u8, "({x}, {y})");
                    alone += 1;
                }
                ref many => {
                    let (lo, hi) = (many.iter().min().unwrap() * 40, many.iter().max().unwrap() * 40);
                    assert!((lo as u8..=hi as u8).contains(&v), "({x}, {y}) {v} outside {lo}..={hi}");
                    shared += 1;
                }
            }
        }
    }
    assert!(alone > 0 && shared > 0);
    // across a vertical seam, the blend moves monotonically from one tile's colour to the other's
    let row: Vec<u8> = (0..w).map(|x| out[((10 * w + x) * 3) as usize]).collect();
    assert!(row.windows(2).all(|p| p[1] >= p[0]), "{row:?}");
}

#[test]
fn a_tile_that_does_not_fit_or_a_gap_is_an_error() {
    let t = vec![0u8; 10 * 10 * 3];
    assert!(blend_rgb(15, 10, 4, &[(Rect { x: 10, y: 0, width: 10, height: 10 }, &t)]).unwrap_err().field.starts_with("tiles[0]"));
    assert!(blend_rgb(20, 10, 4, &[(Rect { x: 0, y: 0, width: 10, height: 10 }, &t)]).unwrap_err().reason.contains("in no tile"));
}

#[test]
fn a_job_that_fits_is_not_tiled_and_one_that_does_not_becomes_a_graph() {
    let params = RenderParams { size: 1024, iterations: 100, ..RenderParams::preset(Preset::Gatys) };
    assert_eq!(plan(&params, (1200, 800), 1024).unwrap(), None);
    let jobs = plan(&params, (1200, 800), 576).unwrap().unwrap();
    // coarse (512), 4 tiles of the 1024 x 683 scale, the assembly
    let names: Vec<&str> = jobs.iter().map(|j| j.suffix.as_str()).collect();
    assert_eq!(names, ["-coarse", "-s2-r1c1", "-s2-r1c2", "-s2-r2c1", "-s2-r2c2", ""]);
    assert_eq!((jobs[0].params.size, jobs[0].params.scales, jobs[0].params.iterations), (512, 1, 100));
    assert!(jobs[0].task.is_none() && jobs[0].depends_on.is_empty());
    for tile in &jobs[1..5] {
        assert_eq!((tile.params.size, tile.params.scales, tile.params.iterations), (1024, 1, 50));
        assert_eq!(tile.depends_on, vec![0]);
        let Some(TileTask::Tile { width, height, from_previous: true, rect, .. }) = &tile.task else { panic!("{:?}", tile.task) };
        assert_eq!((*width, *height), (1024, 683));
        assert!(rect.width <= 576 && rect.height <= 576 && tile.device_side <= 576);
    }
    let last = jobs.last().unwrap();
    assert_eq!(last.depends_on, vec![1, 2, 3, 4, 0]);
    let Some(TileTask::Assemble { tiles, plan, .. }) = &last.task else { panic!() };
    assert_eq!((tiles.len(), plan.tiles.clone(), plan.whole_scales, plan.last), (4, vec![4], 1, true));
    assert_eq!(last.device_side, 0);
    // no print asked: no tile keeps 16 bits
    assert!(jobs.iter().all(|j| j.params.print == PrintFormat::None));
    // the task round-trips through its JSON
    assert_eq!(TileTask::parse(&last.task.as_ref().unwrap().to_json()).unwrap(), last.task.clone().unwrap());
}

#[test]
fn every_scale_tiled_and_two_tiled_scales_chain_through_their_assemblies() {
    let params = RenderParams { size: 1024, scales: 2, iterations: 10, ..RenderParams::preset(Preset::Keras) };
    let jobs = plan(&params, (1024, 1024), 384).unwrap().unwrap();
    // overlap 48 (an eighth of 384): 512 px: 2x2 tiles from the content, assembly; 1024 px: 3x3 tiles from it, assembly
    assert!(matches!(jobs[0].task, Some(TileTask::Tile { scale: 0, from_previous: false, .. })));
    let first_assembly = jobs.iter().position(|j| matches!(j.task, Some(TileTask::Assemble { scale: 0, .. }))).unwrap();
    assert_eq!(first_assembly, 4);
    assert_eq!(jobs[first_assembly].suffix, "-s1");
    assert!(jobs[5..14].iter().all(|j| j.depends_on == vec![4]));
    assert_eq!(jobs.len(), 4 + 1 + 9 + 1);
    assert_eq!(jobs[14].depends_on, (5..14).chain([4]).collect::<Vec<u32>>());
    assert!(jobs[14].task.as_ref().unwrap().to_json().contains(r#""kind":"tile_assemble""#), "not a video assembly");
    // a print: only the last scale's tiles keep 16 bits (for its blend); the assemblies carry the job's format
    let print = RenderParams { print: PrintFormat::Tiff8, ..params };
    let jobs = plan(&print, (1024, 1024), 384).unwrap().unwrap();
    assert!(jobs[..4].iter().all(|j| j.params.print == PrintFormat::None));
    assert!(jobs[5..14].iter().all(|j| j.params.print == PrintFormat::Png16));
    assert_eq!((jobs[4].params.print, jobs[14].params.print), (PrintFormat::Tiff8, PrintFormat::Tiff8));
}

#[test]
fn knobs_out_of_range_name_the_field() {
    let p = |tile_size, tile_overlap| RenderParams { tile_size, tile_overlap, ..RenderParams::preset(Preset::Keras) }.validate(1);
    assert!(p(0, 0).is_ok() && p(512, 64).is_ok());
    assert_eq!(p(32, 0).unwrap_err().field, "tile_size");
    assert_eq!(p(512, 200).unwrap_err().field, "tile_overlap");
    assert_eq!(p(512, 2).unwrap_err().field, "tile_overlap");
    let small = RenderParams { size: 1024, ..RenderParams::preset(Preset::Keras) };
    assert_eq!(plan(&small, (4000, 10), 256).unwrap_err().field, "content", "a content thinner than the overlap");
}

#[test]
fn the_seam_measure_sees_a_step_on_a_tile_edge_and_nothing_on_a_smooth_picture() {
    let (w, h) = (200u32, 130u32);
    let rects = grid(w, h, 80, 16);
    let lines = seam_lines(&rects, w, h);
    assert_eq!(lines, (vec![61, 78, 122, 139], vec![57, 73]), "tiles 78 x 73, no longer than needed");
    let smooth: Vec<u8> = (0..w * h).flat_map(|i| [(i % w) as u8; 3]).collect();
    assert!(
        (seam_gradient(&smooth, w, &lines) - (4.0 * 130.0) / (4.0 * 130.0 + 2.0 * 200.0)).abs() < 1e-9,
        "a ramp steps 1 across vertical lines, 0 across horizontal"
    );
    // the same ramp with a step of 30 levels where the first tile ends
    let stepped: Vec<u8> = (0..w * h).flat_map(|i| [((i % w) + if i % w >= 78 { 30 } else { 0 }) as u8; 3]).collect();
    assert!(seam_gradient(&stepped, w, &lines) > 5.0 * seam_gradient(&smooth, w, &lines));
}
