//! Whole renders with the real weights on CPU.

use anyhow::Result;
use stylefarm_engine::image_io::{decode_rgb, rgb_to_yiq, to_tensor};
use stylefarm_engine::params::{Init, Optimizer, Preset, RenderParams};
use stylefarm_engine::render::{render, write_outputs, OutputPaths, RenderInputs, RenderOutput, Silent};
use stylefarm_engine::trace::read_jsonl;
use stylefarm_tests::sample;
use tch::{Device, Kind};

fn inputs(styles: &[&str]) -> RenderInputs {
    RenderInputs { content: sample("chelsea.png"), styles: styles.iter().map(|s| sample(s)).collect() }
}

fn run(params: &RenderParams, styles: &[&str]) -> RenderOutput {
    render(&inputs(styles), params, Device::Cpu, &mut Silent).expect("render")
}

#[test]
fn keras_128px_50_iterations_halves_the_loss_and_writes_valid_outputs() -> Result<()> {
    let params = RenderParams { size: 128, iterations: 50, snapshot_every: 10, ..RenderParams::preset(Preset::Keras) };
    let out = run(&params, &["hubble_deep_field.jpg"]);
    let first = out.trace.first().unwrap().total;
    let last = out.trace.last().unwrap().total;
    assert!(last < 0.5 * first, "loss {first:e} -> {last:e}");
    assert_eq!(out.trace.len(), 51, "rows for iterations 0..=50");
    assert_eq!(out.trace[0].iteration, 0);
    assert!(out.trace.windows(2).all(|w| w[1].elapsed_ms >= w[0].elapsed_ms));

    let dir = tempfile::tempdir()?;
    let (png, trace, gif, meta, snaps) = (
        dir.path().join("out.png"),
        dir.path().join("trace.jsonl"),
        dir.path().join("progress.gif"),
        dir.path().join("metadata.json"),
        dir.path().join("snapshots"),
    );
    write_outputs(&out, &OutputPaths { image: &png, trace: Some(&trace), snapshots: Some(&snaps), animation: Some(&gif), metadata: Some(&meta), print: None })?;
    let decoded = decode_rgb(&std::fs::read(&png)?).map_err(anyhow::Error::msg)?;
    assert_eq!((decoded.width(), decoded.height()), (128, 85));
    let rows = read_jsonl(&trace).map_err(anyhow::Error::msg)?;
    assert_eq!(rows, out.trace);
    let frames = image::codecs::gif::GifDecoder::new(std::io::BufReader::new(std::fs::File::open(&gif)?))?;
    use image::AnimationDecoder;
    assert_eq!(frames.into_frames().count(), 6, "iterations 0,10,..,50");
    assert_eq!(std::fs::read_dir(&snaps)?.count(), 6);
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta)?)?;
    assert_eq!(meta["weights_sha256"], stylefarm_engine::weights::DEFAULT_WEIGHTS_SHA256);
    assert_eq!(meta["params"]["preset"], "keras");
    assert!(meta["timings"]["ms_per_iteration"].as_f64().unwrap() > 0.0);
    assert!(meta["device"].as_str().unwrap().starts_with("cpu"));
    Ok(())
}

#[test]
fn same_seed_same_output_other_seed_differs() {
    let params = RenderParams { size: 48, iterations: 8, seed: 7, ..RenderParams::preset(Preset::Gatys) };
    assert_eq!(params.init, Init::Random);
    let a = run(&params, &["gravel.png"]);
    let b = run(&params, &["gravel.png"]);
    assert_eq!(a.image, b.image, "same seed, same pixels");
    assert_eq!(a.trace.iter().map(|r| r.total).collect::<Vec<_>>(), b.trace.iter().map(|r| r.total).collect::<Vec<_>>());
    let c = run(&RenderParams { seed: 8, ..params }, &["gravel.png"]);
    assert_ne!(a.image, c.image, "another seed, other pixels");
}

#[test]
fn preserve_colors_keeps_the_content_chrominance() {
    let params = RenderParams { size: 64, iterations: 10, preserve_colors: true, ..RenderParams::preset(Preset::Keras) };
    let out = run(&params, &["hubble_deep_field.jpg"]);
    let plain = run(&RenderParams { preserve_colors: false, ..params }, &["hubble_deep_field.jpg"]);
    let content = stylefarm_engine::image_io::load_rgb(&sample("chelsea.png"), "c").unwrap();
    let content = stylefarm_engine::image_io::resize(&content, out.image.width(), out.image.height());
    let iq = |img: &image::RgbImage| rgb_to_yiq(&to_tensor(img, Kind::Float, Device::Cpu)).narrow(1, 1, 2);
    let kept = f64::try_from((iq(&out.image) - iq(&content)).abs().mean(Kind::Float)).unwrap();
    let changed = f64::try_from((iq(&plain.image) - iq(&content)).abs().mean(Kind::Float)).unwrap();
    assert!(kept < 0.01, "chrominance error with preserve_colors: {kept}");
    assert!(changed > 2.0 * kept, "without it the colours move: {changed} vs {kept}");
}

#[test]
fn coarse_to_fine_runs_every_scale_and_ends_at_full_size() {
    let params = RenderParams { size: 96, iterations: 6, scales: 2, scale_iterations: vec![30], ..RenderParams::preset(Preset::Gatys) };
    let out = run(&params, &["gravel.png"]);
    assert_eq!(out.image.width().max(out.image.height()), 96);
    let scales: Vec<(u32, u32)> = out.trace.iter().map(|r| (r.scale, r.size)).collect();
    assert_eq!(scales.iter().filter(|s| s.0 == 0).count(), 31);
    assert_eq!(scales.iter().filter(|s| **s == (1, 96)).count(), 7);
    assert_eq!(out.trace.first().unwrap().size, 48);
    let coarse_end = out.trace.iter().rfind(|r| r.scale == 0).unwrap().total;
    assert!(coarse_end < 0.5 * out.trace[0].total, "the coarse scale converged some way");
    // the fine scale starts from the upsampled coarse result, not from noise: its
    // first loss is below that of a single-scale run's noise start at the same size
    let fine_start = out.trace.iter().find(|r| r.scale == 1).unwrap().total;
    let single = run(&RenderParams { scales: 1, scale_iterations: vec![], iterations: 1, ..params }, &["gravel.png"]);
    let noise_start = single.trace[0].total;
    assert_eq!(single.trace[0].size, 96);
    assert!(fine_start < 0.85 * noise_start, "fine start {fine_start:e} vs noise start {noise_start:e}");
}

#[test]
fn adam_and_multiple_styles_reduce_the_loss() {
    let params = RenderParams {
        size: 48,
        iterations: 15,
        optimizer: Optimizer::adam_default(),
        style_blend_weights: vec![1.0, 1.0],
        ..RenderParams::preset(Preset::Keras)
    };
    let out = run(&params, &["hubble_deep_field.jpg", "gravel.png"]);
    assert!(out.trace.last().unwrap().total < out.trace[0].total);
    assert_eq!(out.metadata.iterations_run, 15);
}

/// Stops after two rows: the render ends with `Cancelled` and no output.
struct CancelAfter(usize);

impl stylefarm_engine::render::Progress for CancelAfter {
    fn on_row(&mut self, _row: &stylefarm_engine::trace::TraceRow) {
        self.0 = self.0.saturating_sub(1);
    }
    fn should_cancel(&self) -> bool {
        self.0 == 0
    }
}

#[test]
fn a_cancelled_render_stops_between_iterations() {
    let params = RenderParams { size: 48, iterations: 50, ..RenderParams::preset(Preset::Gatys) };
    let err = render(&inputs(&["gravel.png"]), &params, Device::Cpu, &mut CancelAfter(2)).err().expect("cancelled");
    assert!(matches!(err, stylefarm_engine::EngineError::Cancelled), "{err}");
}

#[test]
fn big_renders_keep_previews_not_full_size_snapshots() {
    let params = RenderParams { size: 600, iterations: 1, scales: 1, ..RenderParams::preset(Preset::Gatys) };
    let out = run(&params, &["gravel.png"]);
    assert_eq!(out.image.width().max(out.image.height()), 600);
    assert_eq!(out.frames.len(), 2);
    for (_, frame) in &out.frames {
        assert_eq!(frame.width().max(frame.height()), stylefarm_engine::render::PREVIEW_SIDE);
    }
}

#[test]
fn style_scale_and_init_image_change_the_problem() {
    let base = RenderParams { size: 48, iterations: 2, ..RenderParams::preset(Preset::Keras) };
    let plain = run(&base, &["gravel.png"]);
    let scaled = run(&RenderParams { style_scale: 2.0, ..base.clone() }, &["gravel.png"]);
    assert_ne!(plain.trace[0].style, scaled.trace[0].style, "a larger style image gives other Gram targets");
    // content init: no content loss at iteration 0; another image as init: some
    assert_eq!(plain.trace[0].content, 0.0);
    let init = run(&RenderParams { init: Init::Image(sample("coffee.png")), ..base }, &["gravel.png"]);
    assert!(init.trace[0].content > 0.0);
    assert_eq!(init.image.dimensions(), plain.image.dimensions());
}

/// The sRGB profile every output PNG carries, read by an independent colour
/// engine (littlecms, through Pillow): colours converted from it to lcms's
/// own sRGB stay where they are.
#[test]
fn output_pngs_carry_an_srgb_profile_that_littlecms_reads_as_srgb() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("colours.png");
    // a ramp of greys and the primaries and secondaries at several levels
    let colours: Vec<[u8; 3]> =
        (0..=255u8).step_by(15).flat_map(|v| [[v, v, v], [v, 0, 0], [0, v, 0], [0, 0, v], [v, v, 0], [0, v, v], [v, 0, v], [v, v / 2, v / 3]]).collect();
    let image = image::RgbImage::from_fn(colours.len() as u32, 1, |x, _| image::Rgb(colours[x as usize]));
    stylefarm_engine::image_io::save_png(&image, &path)?;
    let script = r#"
import io, sys
from PIL import Image, ImageCms
im = Image.open(sys.argv[1])
ours = ImageCms.ImageCmsProfile(io.BytesIO(im.info["icc_profile"]))
print(ImageCms.getProfileDescription(ours).strip())
lcms = ImageCms.createProfile("sRGB")
out = ImageCms.profileToProfile(im, ours, lcms, renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC, outputMode="RGB")
print(max(abs(a - b) for p, q in zip(im.getdata(), out.getdata()) for a, b in zip(p, q)))
"#;
    let out = std::process::Command::new(stylefarm_tests::python()).args(["-c", script]).arg(&path).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout)?;
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "sRGB IEC61966-2.1 (stylefarm)");
    let worst: u32 = lines[1].trim().parse()?;
    assert!(worst <= 1, "a colour moved by {worst} levels through lcms's sRGB");
    Ok(())
}

/// A print master is the output's picture at 16 bits (or the TIFF asked
/// for), each with the sRGB profile, read back by independent decoders
/// (pypng for the 16-bit PNG, tifffile for the TIFFs, Pillow for the 8-bit PNG).
#[test]
fn print_masters_hold_the_picture_at_16_bits_for_independent_decoders() -> Result<()> {
    use stylefarm_core::print::PrintFormat;
    let params = RenderParams { size: 96, iterations: 15, print: PrintFormat::Png16, ..RenderParams::preset(Preset::Keras) };
    let mut out = run(&params, &["hubble_deep_field.jpg"]);
    let print = out.print.clone().expect("a print was asked for");
    assert_eq!(print.dimensions(), out.image.dimensions());
    let dir = tempfile::tempdir()?;
    let png = dir.path().join("output.png");
    for format in [PrintFormat::Png16, PrintFormat::Tiff8, PrintFormat::Tiff16] {
        out.metadata.params.print = format;
        let path = dir.path().join(format!("{format}.{}", if format.is_tiff() { "tiff" } else { "png" }));
        let paths = OutputPaths { image: &png, trace: None, snapshots: None, animation: None, metadata: None, print: Some(&path) };
        write_outputs(&out, &paths)?;
    }
    let script = r#"
import json, sys, png, tifffile, numpy as np
from PIL import Image
d = sys.argv[1]
eight = np.asarray(Image.open(f"{d}/output.png").convert("RGB")).astype(np.int64)
w, h, rows, info = png.Reader(filename=f"{d}/png16.png").asDirect()
p16 = np.vstack([np.asarray(r, dtype=np.int64) for r in rows]).reshape(h, w, 3)
chunks = [t for t, _ in png.Reader(filename=f"{d}/png16.png").chunks()]
tiffs = {}
for name in ("tiff8", "tiff16"):
    with tifffile.TiffFile(f"{d}/{name}.tiff") as t:
        page = t.pages[0]
        tiffs[name] = (page.asarray().astype(np.int64), str(page.dtype), page.compression.name, 34675 in page.tags)
print(json.dumps({
    "png16": [info["bitdepth"], info["planes"], b"iCCP" in chunks],
    "png16_vs_8bit": int(np.abs(np.rint(p16 / 257) - eight).max()),
    "png16_off_8bit_levels": float(np.mean(p16 % 257 != 0)),
    "tiff16": [tiffs["tiff16"][1], tiffs["tiff16"][2], tiffs["tiff16"][3], bool((tiffs["tiff16"][0] == p16).all())],
    "tiff8": [tiffs["tiff8"][1], tiffs["tiff8"][2], tiffs["tiff8"][3], int(np.abs(tiffs["tiff8"][0] - eight).max())],
}))
"#;
    let run = std::process::Command::new(stylefarm_tests::python()).args(["-c", script]).arg(dir.path()).output()?;
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let seen: serde_json::Value = serde_json::from_slice(&run.stdout)?;
    assert_eq!(seen["png16"], serde_json::json!([16, 3, true]), "{seen}");
    assert!(seen["png16_vs_8bit"].as_i64().unwrap() <= 1, "{seen}");
    // real 16-bit levels, not 8-bit ones times 257
    assert!(seen["png16_off_8bit_levels"].as_f64().unwrap() > 0.5, "{seen}");
    assert_eq!(seen["tiff16"], serde_json::json!(["uint16", "ADOBE_DEFLATE", true, true]), "{seen}");
    assert_eq!(seen["tiff8"].as_array().unwrap()[0..3], serde_json::json!(["uint8", "ADOBE_DEFLATE", true]).as_array().unwrap()[..], "{seen}");
    assert!(seen["tiff8"][3].as_i64().unwrap() <= 1, "{seen}");
    Ok(())
}
