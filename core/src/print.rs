//! The print master a job may ask for beside its `output.png`: a 16-bit PNG,
//! or a TIFF of 8 or 16 bits per channel. `output.png` stays the 8-bit image
//! every preview, contact sheet and video step reads; the print file is the
//! same picture read off the optimiser at the depth asked for.

use serde::{Deserialize, Serialize};

use crate::error::{ParamError, Result};

/// The extra file a job writes for printing (`print` in a job's settings).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrintFormat {
    /// Only `output.png` (8 bits per channel).
    #[default]
    None,
    /// `print.png`, 16 bits per channel.
    Png16,
    /// `print.tiff`, 8 bits per channel, Deflate-compressed.
    Tiff8,
    /// `print.tiff`, 16 bits per channel, Deflate-compressed.
    Tiff16,
}

/// Bits per channel of a print file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    Eight,
    Sixteen,
}

impl PrintFormat {
    pub const ALL: [PrintFormat; 4] = [PrintFormat::None, PrintFormat::Png16, PrintFormat::Tiff8, PrintFormat::Tiff16];

    pub fn as_str(self) -> &'static str {
        match self {
            PrintFormat::None => "none",
            PrintFormat::Png16 => "png16",
            PrintFormat::Tiff8 => "tiff8",
            PrintFormat::Tiff16 => "tiff16",
        }
    }

    /// The file's name under the job's outputs; `None` when no print is asked for.
    pub fn file_name(self) -> Option<&'static str> {
        match self {
            PrintFormat::None => None,
            PrintFormat::Png16 => Some(PRINT_PNG),
            PrintFormat::Tiff8 | PrintFormat::Tiff16 => Some(PRINT_TIFF),
        }
    }

    pub fn depth(self) -> Option<Depth> {
        match self {
            PrintFormat::None => None,
            PrintFormat::Tiff8 => Some(Depth::Eight),
            PrintFormat::Png16 | PrintFormat::Tiff16 => Some(Depth::Sixteen),
        }
    }

    pub fn is_tiff(self) -> bool {
        matches!(self, PrintFormat::Tiff8 | PrintFormat::Tiff16)
    }
}

impl std::fmt::Display for PrintFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PrintFormat {
    type Err = ParamError;
    fn from_str(s: &str) -> Result<PrintFormat> {
        let names = PrintFormat::ALL.map(PrintFormat::as_str);
        PrintFormat::ALL.into_iter().find(|f| f.as_str() == s).ok_or_else(|| ParamError::new("print", format!("`{s}` is not one of {}", names.join(", "))))
    }
}

/// The 16-bit print PNG's name under a job's outputs.
pub const PRINT_PNG: &str = "print.png";
/// The print TIFF's name under a job's outputs.
pub const PRINT_TIFF: &str = "print.tiff";

/// One channel's sample, 8 or 16 bits: what tiles are blended in.
pub trait Sample: Copy {
    /// The largest value (white).
    const MAX: f32;
    fn to_f32(self) -> f32;
    /// Rounds and clamps to the sample's range.
    fn from_f32(value: f32) -> Self;
}

impl Sample for u8 {
    const MAX: f32 = 255.0;
    fn to_f32(self) -> f32 {
        f32::from(self)
    }
    fn from_f32(value: f32) -> u8 {
        value.round().clamp(0.0, 255.0) as u8
    }
}

impl Sample for u16 {
    const MAX: f32 = 65535.0;
    fn to_f32(self) -> f32 {
        f32::from(self)
    }
    fn from_f32(value: f32) -> u16 {
        value.round().clamp(0.0, 65535.0) as u16
    }
}

/// A 16-bit sample as 8 bits, rounded (65535 → 255, 257·v → v).
pub fn to_8bit(value: u16) -> u8 {
    ((u32::from(value) + 128) / 257) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_has_one_name_and_a_file() {
        for format in PrintFormat::ALL {
            assert_eq!(format.as_str().parse::<PrintFormat>().unwrap(), format);
            assert_eq!(serde_json::to_string(&format).unwrap(), format!("\"{format}\""));
        }
        assert_eq!(PrintFormat::None.file_name(), None);
        assert_eq!(PrintFormat::Png16.file_name(), Some("print.png"));
        assert_eq!(PrintFormat::Tiff8.file_name(), Some("print.tiff"));
        assert_eq!(PrintFormat::Tiff8.depth(), Some(Depth::Eight));
        let err = "tiff32".parse::<PrintFormat>().unwrap_err();
        assert_eq!(err.field, "print");
        assert!(err.reason.contains("none, png16, tiff8, tiff16"), "{}", err.reason);
    }

    #[test]
    fn sixteen_bits_round_to_the_nearest_eight_bit_level() {
        for v in 0..=255u8 {
            assert_eq!(to_8bit(u16::from(v) * 257), v);
        }
        assert_eq!(to_8bit(65535), 255);
        assert_eq!(to_8bit(128), 0);
        assert_eq!(to_8bit(129), 1);
        // every 16-bit value goes to the 8-bit level nearest its fraction of white
        for v in (0..=65535u16).step_by(97) {
            let exact = f64::from(v) / 65535.0 * 255.0;
            assert!((f64::from(to_8bit(v)) - exact).abs() <= 0.5 + 1e-9, "{v}");
        }
        assert_eq!(<u16 as Sample>::from_f32(70000.0), 65535);
        assert_eq!(<u8 as Sample>::from_f32(-3.0), 0);
    }
}
