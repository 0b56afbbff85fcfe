//! The animated progress image: the snapshots as a looping GIF, each frame
//! labelled by its place in the run through its delay (the last frame holds).

use std::path::Path;

use image::{
    codecs::gif::{GifEncoder, Repeat},
    imageops::FilterType,
    Delay, Frame, RgbImage, RgbaImage,
};

use crate::error::{EngineError, Result};
use crate::trace::TraceRow;

/// Frames are scaled so that the long side is at most this.
pub const MAX_FRAME_SIDE: u32 = 512;

pub fn write_gif(frames: &[(TraceRow, RgbImage)], path: &Path) -> Result<()> {
    let out_err = |reason: String| EngineError::Output { path: path.to_path_buf(), reason };
    let Some((_, last)) = frames.last() else {
        return Err(out_err("no frames to animate".into()));
    };
    let (w, h) = crate::image_io::fit_long_side(last.width(), last.height(), MAX_FRAME_SIDE.min(last.width().max(last.height())));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| out_err(e.to_string()))?;
    }
    let file = std::fs::File::create(path).map_err(|e| out_err(e.to_string()))?;
    let mut encoder = GifEncoder::new_with_speed(std::io::BufWriter::new(file), 10);
    encoder.set_repeat(Repeat::Infinite).map_err(|e| out_err(e.to_string()))?;
    for (index, (_, frame)) in frames.iter().enumerate() {
        let resized = image::imageops::resize(frame, w, h, FilterType::Triangle);
        let rgba: RgbaImage = image::DynamicImage::ImageRgb8(resized).to_rgba8();
        let delay_ms = if index + 1 == frames.len() { 2000 } else { 150 };
        encoder.encode_frame(Frame::from_parts(rgba, 0, 0, Delay::from_numer_denom_ms(delay_ms, 1))).map_err(|e| out_err(e.to_string()))?;
    }
    Ok(())
}
