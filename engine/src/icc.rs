//! The sRGB ICC profile every output PNG carries, so that print shops and
//! colour-managed viewers read its numbers as sRGB instead of guessing. Built
//! here from the sRGB definition (IEC 61966-2-1: its D50-adapted primaries and
//! its tone curve as a 1024-entry table) as an ICC v2 display profile; checked
//! against littlecms's own sRGB by `tests/engine_render.rs` (through Pillow).

use std::sync::OnceLock;

/// sRGB's primaries as XYZ under D50 (Bradford-adapted), as ICC profiles give them.
const RED: [f64; 3] = [0.436_074_7, 0.222_504_5, 0.013_932_2];
const GREEN: [f64; 3] = [0.385_064_9, 0.716_878_6, 0.097_104_5];
const BLUE: [f64; 3] = [0.143_080_4, 0.060_616_9, 0.714_173_3];
/// The profile connection space's white, D50.
const D50: [f64; 3] = [0.9642, 1.0, 0.8249];
/// Entries of the tone curve table.
const CURVE_POINTS: usize = 1024;

/// The profile's bytes (built once).
pub fn srgb_profile() -> &'static [u8] {
    static PROFILE: OnceLock<Vec<u8>> = OnceLock::new();
    PROFILE.get_or_init(build)
}

fn s15_fixed16(v: f64) -> [u8; 4] {
    ((v * 65536.0).round() as i32).to_be_bytes()
}

fn xyz(v: [f64; 3]) -> Vec<u8> {
    let mut out = b"XYZ \0\0\0\0".to_vec();
    for c in v {
        out.extend(s15_fixed16(c));
    }
    out
}

/// sRGB's decoding curve: encoded 0..1 to linear 0..1.
fn srgb_to_linear(x: f64) -> f64 {
    if x <= 0.04045 {
        x / 12.92
    } else {
        ((x + 0.055) / 1.055).powf(2.4)
    }
}

fn curve() -> Vec<u8> {
    let mut out = b"curv\0\0\0\0".to_vec();
    out.extend((CURVE_POINTS as u32).to_be_bytes());
    for i in 0..CURVE_POINTS {
        let y = srgb_to_linear(i as f64 / (CURVE_POINTS - 1) as f64);
        out.extend(((y * 65535.0).round() as u16).to_be_bytes());
    }
    out
}

/// A v2 textDescriptionType: the ASCII name, no Unicode or ScriptCode parts.
fn description(text: &str) -> Vec<u8> {
    let mut out = b"desc\0\0\0\0".to_vec();
    out.extend((text.len() as u32 + 1).to_be_bytes());
    out.extend(text.as_bytes());
    out.push(0);
    out.extend([0u8; 4 + 4 + 2 + 1 + 67]);
    out
}

fn text(text: &str) -> Vec<u8> {
    let mut out = b"text\0\0\0\0".to_vec();
    out.extend(text.as_bytes());
    out.push(0);
    out
}

fn build() -> Vec<u8> {
    let trc = curve();
    let tags: Vec<(&[u8; 4], Vec<u8>)> = vec![
        (b"desc", description("sRGB IEC61966-2.1 (stylefarm)")),
        (b"cprt", text("No copyright, use freely")),
        (b"wtpt", xyz(D50)),
        (b"rXYZ", xyz(RED)),
        (b"gXYZ", xyz(GREEN)),
        (b"bXYZ", xyz(BLUE)),
        (b"rTRC", trc.clone()),
        (b"gTRC", trc.clone()),
        (b"bTRC", trc),
    ];
    let table_len = 4 + 12 * tags.len();
    let mut data = Vec::new();
    let mut table = (tags.len() as u32).to_be_bytes().to_vec();
    let mut placed: Vec<(&Vec<u8>, usize)> = Vec::new();
    for (signature, body) in &tags {
        // the three tone curves are one: their tags share its bytes
        let offset = match placed.iter().find(|(b, _)| *b == body) {
            Some(&(_, offset)) => offset,
            None => {
                let offset = 128 + table_len + data.len();
                data.extend(body);
                // every tag starts on a 4-byte boundary
                data.resize(data.len().div_ceil(4) * 4, 0);
                placed.push((body, offset));
                offset
            }
        };
        table.extend(*signature);
        table.extend((offset as u32).to_be_bytes());
        table.extend((body.len() as u32).to_be_bytes());
    }
    let size = 128 + table.len() + data.len();
    let mut header = Vec::with_capacity(128);
    header.extend((size as u32).to_be_bytes());
    header.extend([0u8; 4]); // preferred CMM: none
    header.extend(0x0210_0000u32.to_be_bytes()); // version 2.1
    header.extend(b"mntrRGB XYZ ");
    for part in [2026u16, 12, 7, 0, 0, 0] {
        header.extend(part.to_be_bytes());
    }
    header.extend(b"acsp");
    header.extend([0u8; 4 + 4 + 4 + 4 + 8]); // platform, flags, manufacturer, model, attributes
    header.extend(0u32.to_be_bytes()); // perceptual
    for c in D50 {
        header.extend(s15_fixed16(c));
    }
    header.extend([0u8; 4]); // creator
    header.resize(128, 0);
    [header, table, data].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn the_profile_is_well_formed() {
        let p = srgb_profile();
        assert_eq!(u32_at(p, 0) as usize, p.len(), "the size field");
        assert_eq!(&p[12..24], b"mntrRGB XYZ ");
        assert_eq!(&p[36..40], b"acsp");
        let count = u32_at(p, 128) as usize;
        assert_eq!(count, 9);
        for k in 0..count {
            let at = 132 + 12 * k;
            let (offset, len) = (u32_at(p, at + 4) as usize, u32_at(p, at + 8) as usize);
            assert_eq!(offset % 4, 0, "tag {k} aligned");
            assert!(offset + len <= p.len(), "tag {k} inside");
            let kind = &p[offset..offset + 4];
            assert!([b"desc", b"text", b"XYZ ", b"curv"].iter().any(|t| kind == *t), "{kind:?}");
        }
        assert!(p.len() < 3_000, "one tone curve shared by three tags: {} bytes", p.len());
        // the tone curve: 0 and 1 fixed, mid-grey 0.5 encoded is about 0.214 linear
        assert!((srgb_to_linear(0.5) - 0.214).abs() < 1e-3);
    }
}
