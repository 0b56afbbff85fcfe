//! Reading, sizing and writing images, and the colour transforms for
//! luminance-only transfer. Decoding is bounded: a hostile file cannot make the
//! decoder allocate without limit.

use std::io::Cursor;
use std::path::Path;

use image::{imageops::FilterType, DynamicImage, ImageBuffer, ImageDecoder, ImageReader, Limits, Rgb, RgbImage};
use stylefarm_core::print::{to_8bit, PrintFormat};
use tch::{Device, Kind, Tensor};

use crate::error::{EngineError, Result};

/// Largest input file we read.
pub const MAX_INPUT_BYTES: u64 = 256 * 1024 * 1024;
/// Largest input dimension we decode (pixels per side).
pub const MAX_INPUT_SIDE: u32 = 30_000;
/// Largest decoder allocation.
const MAX_DECODE_ALLOC: u64 = 2 * 1024 * 1024 * 1024;

/// Loads an image as 8-bit RGB. `role` names it in errors (content, style[1], init).
pub fn load_rgb(path: &Path, role: &str) -> Result<RgbImage> {
    let err = |reason: String| EngineError::Image { role: role.into(), path: path.to_path_buf(), reason };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    if meta.len() > MAX_INPUT_BYTES {
        return Err(err(format!("{} bytes exceeds the limit of {MAX_INPUT_BYTES} bytes", meta.len())));
    }
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    decode_rgb(&bytes).map_err(err)
}

/// 16 bits per channel RGB: a print master, or a tile kept for its blend.
pub type Rgb16Image = ImageBuffer<Rgb<u16>, Vec<u16>>;

/// Decodes bytes in any supported format (PNG, JPEG, GIF, BMP, WebP, TIFF),
/// turned as its EXIF orientation says.
pub fn decode_rgb(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    Ok(decode(bytes)?.to_rgb8())
}

/// [`decode_rgb`] at 16 bits per channel (an 8-bit file's levels times 257).
pub fn decode_rgb16(bytes: &[u8]) -> std::result::Result<Rgb16Image, String> {
    Ok(decode(bytes)?.to_rgb16())
}

fn decode(bytes: &[u8]) -> std::result::Result<DynamicImage, String> {
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| format!("cannot detect the format: {e}"))?;
    if reader.format().is_none() {
        return Err("not a recognised image format (PNG, JPEG, GIF, BMP, WebP, TIFF)".into());
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_INPUT_SIDE);
    limits.max_image_height = Some(MAX_INPUT_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    let corrupt = |e: image::ImageError| format!("corrupt or unsupported image: {e}");
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    // a camera's EXIF orientation: the picture as it is meant to be seen
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    image.apply_orientation(orientation);
    if image.width() == 0 || image.height() == 0 {
        return Err("image has zero width or height".into());
    }
    Ok(image)
}

/// Height and width with the long side `long_side`, aspect kept (each at least 1).
pub use stylefarm_core::tiling::fit_long_side;

pub fn resize(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    if image.width() == width && image.height() == height {
        return image.clone();
    }
    image::imageops::resize(image, width, height, FilterType::Lanczos3)
}

/// [1,3,H,W] float tensor in 0..1.
pub fn to_tensor(image: &RgbImage, kind: Kind, device: Device) -> Tensor {
    let (w, h) = image.dimensions();
    Tensor::from_slice(image.as_raw())
        .view([h as i64, w as i64, 3])
        .permute([2, 0, 1])
        .unsqueeze(0)
        .to_kind(Kind::Float)
        .divide_scalar(255.0)
        .to_kind(kind)
        .to_device(device)
}

/// A [1,3,H,W] (or [3,H,W]) tensor in 0..1 to 8-bit RGB, clamping.
pub fn to_image(tensor: &Tensor) -> Result<RgbImage> {
    // 8-bit on the tensor's device: a quarter of the bytes cross to the host
    let (w, h, bytes) = quantised(tensor, 255.0, Kind::Uint8)?;
    let mut data = vec![0u8; (h * w * 3) as usize];
    let len = data.len();
    bytes.f_copy_data_u8(&mut data, len)?;
    Ok(RgbImage::from_raw(w, h, data).expect("buffer sized from the tensor"))
}

/// [`to_image`] at 16 bits per channel.
pub fn to_image16(tensor: &Tensor) -> Result<Rgb16Image> {
    // libtorch has no unsigned 16-bit kind that copies out: i32 levels, narrowed here
    let (w, h, levels) = quantised(tensor, 65535.0, Kind::Int)?;
    let mut data = vec![0i32; (h * w * 3) as usize];
    let len = data.len();
    levels.f_copy_data(&mut data, len)?;
    let data = data.into_iter().map(|v| v.clamp(0, 65535) as u16).collect();
    Ok(Rgb16Image::from_raw(w, h, data).expect("buffer sized from the tensor"))
}

/// The image's (width, height) and its values clamped to 0..1, times
/// `white`, rounded, as `kind`, laid out [H,W,3] on the host.
fn quantised(tensor: &Tensor, white: f64, kind: Kind) -> Result<(u32, u32, Tensor)> {
    let t = if tensor.dim() == 4 { tensor.squeeze_dim(0) } else { tensor.shallow_clone() };
    let size = t.size();
    let [3, h, w] = size[..] else {
        return Err(EngineError::param("image", format!("expected a [3,H,W] tensor, got {size:?}")));
    };
    let levels = t.to_kind(Kind::Float).clamp(0.0, 1.0).multiply_scalar(white).round().to_kind(kind).permute([1, 2, 0]).contiguous().to_device(Device::Cpu);
    Ok((w as u32, h as u32, levels))
}

/// A 16-bit image as 8 bits, each sample rounded to the nearest level.
pub fn to_8bit_image(image: &Rgb16Image) -> RgbImage {
    RgbImage::from_raw(image.width(), image.height(), image.as_raw().iter().map(|&v| to_8bit(v)).collect()).expect("same size")
}

/// An 8-bit RGB PNG carrying the sRGB ICC profile ([`crate::icc`]).
pub fn encode_png(image: &RgbImage) -> std::result::Result<Vec<u8>, String> {
    encode_png_samples(image.as_raw(), image.width(), image.height(), image::ExtendedColorType::Rgb8)
}

fn encode_png_samples(samples: &[u8], width: u32, height: u32, color: image::ExtendedColorType) -> std::result::Result<Vec<u8>, String> {
    use image::ImageEncoder;
    let mut bytes = Vec::new();
    let mut encoder = image::codecs::png::PngEncoder::new(&mut bytes);
    encoder.set_icc_profile(crate::icc::srgb_profile().to_vec()).map_err(|e| e.to_string())?;
    encoder.write_image(samples, width, height, color).map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// The print master `format` asks for, from the picture at 16 bits: a
/// 16-bit PNG, or a Deflate-compressed TIFF of 8 or 16 bits (horizontal
/// predictor), each with the sRGB ICC profile.
pub fn encode_print(image: &Rgb16Image, format: PrintFormat) -> std::result::Result<Vec<u8>, String> {
    let (w, h) = image.dimensions();
    match format {
        PrintFormat::None => Err("no print format was asked for".into()),
        PrintFormat::Png16 => {
            let samples: Vec<u8> = image.as_raw().iter().flat_map(|v| v.to_ne_bytes()).collect();
            encode_png_samples(&samples, w, h, image::ExtendedColorType::Rgb16)
        }
        PrintFormat::Tiff8 => encode_tiff::<tiff::encoder::colortype::RGB8>(w, h, &to_8bit_image(image).into_raw()),
        PrintFormat::Tiff16 => encode_tiff::<tiff::encoder::colortype::RGB16>(w, h, image.as_raw()),
    }
}

fn encode_tiff<C: tiff::encoder::colortype::ColorType>(width: u32, height: u32, samples: &[C::Inner]) -> std::result::Result<Vec<u8>, String>
where
    [C::Inner]: tiff::encoder::TiffValue,
{
    use tiff::encoder::{Compression, DeflateLevel, Predictor, TiffEncoder};
    let err = |e: tiff::TiffError| e.to_string();
    let mut out = Cursor::new(Vec::new());
    let mut encoder =
        TiffEncoder::new(&mut out).map_err(err)?.with_compression(Compression::Deflate(DeflateLevel::Balanced)).with_predictor(Predictor::Horizontal);
    let mut image = encoder.new_image::<C>(width, height).map_err(err)?;
    image.encoder().write_tag(tiff::tags::Tag::IccProfile, crate::icc::srgb_profile()).map_err(err)?;
    image.write_data(samples).map_err(err)?;
    Ok(out.into_inner())
}

/// Writes a PNG (with the sRGB profile) atomically (temp file + rename).
pub fn save_png(image: &RgbImage, path: &Path) -> Result<()> {
    save_encoded(path, encode_png(image))
}

/// Writes the print master ([`encode_print`]) atomically.
pub fn save_print(image: &Rgb16Image, format: PrintFormat, path: &Path) -> Result<()> {
    save_encoded(path, encode_print(image, format))
}

fn save_encoded(path: &Path, bytes: std::result::Result<Vec<u8>, String>) -> Result<()> {
    let out_err = |reason: String| EngineError::Output { path: path.to_path_buf(), reason };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| out_err(e.to_string()))?;
    }
    let bytes = bytes.map_err(out_err)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, &bytes).map_err(|e| out_err(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| out_err(e.to_string()))
}

/// RGB (0..1) → YIQ, [1,3,H,W].
pub fn rgb_to_yiq(rgb: &Tensor) -> Tensor {
    let m = Tensor::from_slice(&[0.299f32, 0.587, 0.114, 0.595716, -0.274453, -0.321263, 0.211456, -0.522591, 0.311135])
        .view([3, 3])
        .to_kind(rgb.kind())
        .to_device(rgb.device());
    Tensor::einsum("ij,bjhw->bihw", &[m, rgb.shallow_clone()], None::<i64>)
}

/// YIQ → RGB, [1,3,H,W].
pub fn yiq_to_rgb(yiq: &Tensor) -> Tensor {
    let m = Tensor::from_slice(&[1.0f32, 0.9563, 0.6210, 1.0, -0.2721, -0.6474, 1.0, -1.1070, 1.7046]).view([3, 3]).to_kind(yiq.kind()).to_device(yiq.device());
    Tensor::einsum("ij,bjhw->bihw", &[m, yiq.shallow_clone()], None::<i64>)
}

/// Luminance as a grey RGB image ([1,3,H,W], Y repeated).
pub fn luminance_rgb(rgb: &Tensor) -> Tensor {
    rgb_to_yiq(rgb).narrow(1, 0, 1).repeat([1, 3, 1, 1])
}

/// Shifts and scales `luma`'s values to the mean and std of `reference`'s
/// (the histogram matching step of luminance-only transfer).
pub fn match_luminance(luma: &Tensor, reference: &Tensor) -> Tensor {
    let (mean_s, std_s) = (luma.mean(None), luma.std(false).clamp_min(1e-6));
    let (mean_c, std_c) = (reference.mean(None), reference.std(false));
    (luma - mean_s) / std_s * std_c + mean_c
}

/// Joins the generated image's luminance with the content's chrominance.
pub fn recolor(generated_rgb: &Tensor, content_rgb: &Tensor) -> Tensor {
    let y = rgb_to_yiq(generated_rgb).narrow(1, 0, 1);
    let iq = rgb_to_yiq(content_rgb).narrow(1, 1, 2);
    yiq_to_rgb(&Tensor::cat(&[y, iq], 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_side_fits() {
        assert_eq!(fit_long_side(451, 300, 128), (128, 85));
        assert_eq!(fit_long_side(300, 451, 128), (85, 128));
        assert_eq!(fit_long_side(10_000, 1, 16), (16, 1));
    }

    /// A raw EXIF block (TIFF layout, little-endian) holding only an orientation.
    fn exif_orientation(value: u16) -> Vec<u8> {
        let mut exif = b"II*\0".to_vec();
        exif.extend(8u32.to_le_bytes());
        exif.extend(1u16.to_le_bytes());
        exif.extend(0x0112u16.to_le_bytes());
        exif.extend(3u16.to_le_bytes());
        exif.extend(1u32.to_le_bytes());
        exif.extend(value.to_le_bytes());
        exif.extend([0, 0]);
        exif.extend(0u32.to_le_bytes());
        exif
    }

    #[test]
    fn a_photo_is_turned_as_its_exif_orientation_says() {
        use image::ImageEncoder;
        // 60 x 20, white on its left third: as shot, the camera turned a quarter
        let shot = RgbImage::from_fn(60, 20, |x, _| if x < 20 { image::Rgb([255, 255, 255]) } else { image::Rgb([0, 0, 0]) });
        let jpeg = |orientation: Option<u16>| {
            let mut out = Vec::new();
            let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95);
            if let Some(value) = orientation {
                encoder.set_exif_metadata(exif_orientation(value)).unwrap();
            }
            encoder.write_image(shot.as_raw(), 60, 20, image::ExtendedColorType::Rgb8).unwrap();
            out
        };
        let plain = decode_rgb(&jpeg(None)).unwrap();
        assert_eq!(plain.dimensions(), (60, 20));
        // 6: rotate 90° clockwise to view; the white third ends up on top
        let turned = decode_rgb(&jpeg(Some(6))).unwrap();
        assert_eq!(turned.dimensions(), (20, 60));
        assert!(turned.get_pixel(10, 5)[0] > 200 && turned.get_pixel(10, 55)[0] < 50, "{:?} {:?}", turned.get_pixel(10, 5), turned.get_pixel(10, 55));
    }

    #[test]
    fn corrupt_bytes_are_errors() {
        assert!(decode_rgb(b"definitely not an image").is_err());
        let png_header_only = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        assert!(decode_rgb(png_header_only).unwrap_err().contains("corrupt"));
    }

    #[test]
    fn yiq_round_trips() {
        let rgb = Tensor::rand([1, 3, 4, 5], (Kind::Float, Device::Cpu));
        let back = yiq_to_rgb(&rgb_to_yiq(&rgb));
        let err: f64 = (back - &rgb).abs().max().double_value(&[]);
        assert!(err < 2e-3, "{err}");
    }

    #[test]
    fn tensor_image_round_trip() {
        let img = RgbImage::from_fn(3, 2, |x, y| image::Rgb([x as u8 * 50, y as u8 * 100, 7]));
        let t = to_tensor(&img, Kind::Float, Device::Cpu);
        assert_eq!(t.size(), vec![1, 3, 2, 3]);
        assert_eq!(to_image(&t).unwrap(), img);
    }
}
