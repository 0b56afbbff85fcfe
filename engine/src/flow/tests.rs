use super::*;

const SIZE: i64 = 96;

/// A smooth texture with detail at several scales, defined everywhere, so a
/// moved copy can be evaluated exactly (no resampling in the test data).
fn texture(x: f64, y: f64) -> f64 {
    let waves = [(0.21, 0.05, 0.0, 0.12), (-0.07, 0.17, 1.3, 0.10), (0.11, -0.13, 2.1, 0.08), (0.04, 0.31, 0.4, 0.06), (0.37, 0.09, 2.9, 0.05)];
    0.5 + waves.iter().map(|(fx, fy, phase, amp)| amp * (fx * x + fy * y + phase).sin()).sum::<f64>()
}

fn image(f: impl Fn(f64, f64) -> f64) -> Tensor {
    let mut data = Vec::with_capacity((SIZE * SIZE) as usize);
    for y in 0..SIZE {
        for x in 0..SIZE {
            data.push(f(x as f64, y as f64) as f32);
        }
    }
    Tensor::from_slice(&data).view([1, 1, SIZE, SIZE]).repeat([1, 3, 1, 1])
}

fn field(f: impl Fn(f64, f64) -> (f64, f64)) -> Tensor {
    let (mut us, mut vs) = (Vec::new(), Vec::new());
    for y in 0..SIZE {
        for x in 0..SIZE {
            let (u, v) = f(x as f64, y as f64);
            us.push(u as f32);
            vs.push(v as f32);
        }
    }
    Tensor::f_stack(&[Tensor::from_slice(&us).view([SIZE, SIZE]), Tensor::from_slice(&vs).view([SIZE, SIZE])], 0).unwrap().unsqueeze(0)
}

/// The interior, away from the edges where part of a match leaves the frame.
fn interior(margin: i64) -> Tensor {
    let m = Tensor::zeros([1, 1, SIZE, SIZE], (Kind::Float, Device::Cpu));
    let _ = m.narrow(2, margin, SIZE - 2 * margin).narrow(3, margin, SIZE - 2 * margin).fill_(1.0);
    m
}

/// Mean end-point error over the pixels `mask` keeps.
fn endpoint_error(found: &Tensor, truth: &Tensor, mask: &Tensor) -> f64 {
    let err = (found - truth).square().sum_dim_intlist(1, true, Kind::Float).sqrt();
    (err * mask).sum(Kind::Float).double_value(&[]) / mask.sum(Kind::Float).double_value(&[])
}

#[test]
fn recovers_a_subpixel_translation() {
    let (dx, dy) = (1.35, -0.6);
    let a = image(texture);
    // a(p) = b(p + d): b is a moved by d
    let b = image(|x, y| texture(x - dx, y - dy));
    let found = flow(&a, &b, &FlowParams::default()).unwrap();
    let truth = field(|_, _| (dx, dy));
    let trusted = reliability(&found, &flow(&b, &a, &FlowParams::default()).unwrap()).unwrap() * interior(6);
    let epe = endpoint_error(&found, &truth, &trusted);
    eprintln!("translation: mean end-point error {epe:.4} px");
    assert!(epe < 0.25, "mean end-point error {epe} px");
    let kept = trusted.mean(Kind::Float).double_value(&[]);
    assert!(kept > 0.7, "only {kept} of the pixels trusted");
}

#[test]
fn recovers_a_small_rotation() {
    let angle: f64 = 2.0_f64.to_radians();
    let c = (SIZE - 1) as f64 / 2.0;
    // b = a rotated by `angle` about the centre: a(p) = b(R p)
    let rotate = |x: f64, y: f64, t: f64| (c + (x - c) * t.cos() - (y - c) * t.sin(), c + (x - c) * t.sin() + (y - c) * t.cos());
    let a = image(texture);
    let b = image(|x, y| {
        let (sx, sy) = rotate(x, y, -angle);
        texture(sx, sy)
    });
    let truth = field(|x, y| {
        let (rx, ry) = rotate(x, y, angle);
        (rx - x, ry - y)
    });
    let found = flow(&a, &b, &FlowParams::default()).unwrap();
    let trusted = reliability(&found, &flow(&b, &a, &FlowParams::default()).unwrap()).unwrap() * interior(8);
    let epe = endpoint_error(&found, &truth, &trusted);
    eprintln!("rotation: mean end-point error {epe:.4} px");
    assert!(epe < 0.25, "mean end-point error {epe} px");
    // the displacement reaches ~2 px in the corners: a zero flow would be far off
    assert!(endpoint_error(&Tensor::zeros_like(&truth), &truth, &trusted) > 1.0);
}

#[test]
fn marks_the_disoccluded_region() {
    // a bright square moves 6 px to the right over a static background: in
    // frame t, the strip it left behind has no match in frame t−1
    let shift = 6.0;
    let square = |x: f64, y: f64, left: f64| x >= left && x < left + 30.0 && (33.0..63.0).contains(&y);
    let frame = |left: f64| image(move |x, y| if square(x, y, left) { 0.95 - 0.3 * texture(y, x) } else { texture(x, y) * 0.6 });
    let (previous, current) = (frame(30.0), frame(30.0 + shift));
    let pair = frame_pair(&previous, &current, &FlowParams::default()).unwrap();
    let region_mean = |x0: i64, x1: i64, y0: i64, y1: i64| pair.mask.narrow(3, x0, x1 - x0).narrow(2, y0, y1 - y0).mean(Kind::Float).double_value(&[]);
    // the uncovered strip: x in [30, 36), y in [33, 63)
    let uncovered = region_mean(30, 36, 36, 60);
    let far = region_mean(70, 90, 6, 26);
    eprintln!("occlusion: uncovered strip {uncovered:.3} trusted, far background {far:.3}");
    assert!(uncovered < 0.5, "the disoccluded strip is {uncovered} trusted");
    assert!(far > 0.9, "static background far from the square is only {far} trusted");
    // warping the previous frame with the trusted flow reproduces the current one
    let error = warping_error(&previous, &current, &pair).unwrap();
    let unwarped = warping_error(&previous, &current, &FramePair { backward: Tensor::zeros_like(&pair.backward), mask: pair.mask.shallow_clone() }).unwrap();
    assert!(error < unwarped / 4.0, "warped error {error} vs unwarped {unwarped}");
}

#[test]
fn warp_moves_by_the_flow() {
    let b = image(texture);
    let w = field(|_, _| (2.0, 1.0));
    let moved = warp(&b, &w).unwrap();
    let expected = image(|x, y| texture(x + 2.0, y + 1.0));
    let err = (moved - expected) * interior(4);
    assert!(err.abs().max().double_value(&[]) < 1e-3);
}

/// Deterministic noise in ±`amp`, different for each `seed` (a frame's own
/// sensor and compression noise, which does not move with the picture).
fn noise(x: f64, y: f64, seed: u64, amp: f64) -> f64 {
    let mut h = (x as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (y as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F) ^ seed.wrapping_mul(0x1656_67B1_9E37_79F9);
    h ^= h >> 29;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 32;
    amp * ((h % 2001) as f64 / 1000.0 - 1.0)
}

#[test]
fn follows_a_zoom_not_the_frames_noise() {
    // b is a zoomed in by 1.5 % about the centre (the bench's zoom clip), each
    // frame with noise of its own: a(p) = b(c + z (p − c))
    let z = 1.015;
    let c = (SIZE - 1) as f64 / 2.0;
    let a = image(|x, y| texture(x, y) + noise(x, y, 1, 0.02));
    let b = image(|x, y| texture(c + (x - c) / z, c + (y - c) / z) + noise(x, y, 2, 0.02));
    let truth = field(|x, y| ((x - c) * (z - 1.0), (y - c) * (z - 1.0)));
    let epe_with = |params: &FlowParams| endpoint_error(&flow(&a, &b, params).unwrap(), &truth, &interior(8));
    let epe = epe_with(&FlowParams { edge: 0.0, ..FlowParams::default() });
    let loose = epe_with(&FlowParams { alpha: 0.03, edge: 0.0, ..FlowParams::default() });
    let magnitude = endpoint_error(&Tensor::zeros_like(&truth), &truth, &interior(8));
    eprintln!("zoom with noise: mean end-point error {epe:.4} px (α = 0.03: {loose:.4}) of a mean {magnitude:.3} px motion");
    assert!(epe < 0.25 * magnitude, "mean end-point error {epe} px of {magnitude} px");
    // the weaker smoothness the engine had before follows the noise
    assert!(loose > 1.5 * epe, "α = 0.03: {loose} px, default: {epe} px");
}
