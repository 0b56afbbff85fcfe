use super::*;

/// `ffmpeg -f framecrc` of a 0.2 s 320×240 H.264 MP4 at 30000/1001 with AAC
/// audio (ffmpeg 9.0, the imageio-ffmpeg build): B-frames, so pts out of order.
const MP4: &str = "#extradata 0:       43, 0x21de0fb4
#software: Lavf63.1.102
#tb 0: 1/30000
#media_type 0: video
#codec_id 0: h264
#dimensions 0: 320x240
#sar 0: 1/1
#tb 1: 1/44100
#media_type 1: audio
#codec_id 1: aac
#sample_rate 1: 44100
0,      -2002,          0,     1001,     3321, 0x8852fdc1
0,      -1001,       4004,     1001,      251, 0xabb97816, F=0x0
1,      -1024,      -1024,     1024,      227, 0x6aab6d38, F=0x5, S=1, Skip Samples,       10, 0x00240004
0,          0,       2002,     1001,       67, 0x8e181dc7, F=0x0
1,          0,          0,     1024,      304, 0x0004a343
0,       1001,       1001,     1001,       33, 0xca820e02, F=0x0
1,       2048,       2048,     1024,      176, 0x05d14e15
0,       2002,       3003,     1001,       33, 0xc0ca0cba, F=0x0
1,       8192,       8192,      628,      170, 0x4dea50db, S=1, Skip Samples,       10, 0x034d008d";

const MP4_STDERR: &str = "Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 't.mp4':
  Stream #0:0[0x1](und): Video: h264 (High) (avc1 / 0x31637661), yuv420p(progressive), 320x240 [SAR 1:1 DAR 4:3], 177 kb/s, 29.97 fps, 29.97 tbr, 30k tbn (default)
  Stream #0:1[0x2](und): Audio: aac (LC) (mp4a / 0x6134706D), 44100 Hz, mono, fltp, 75 kb/s (default)
Output #0, framecrc, to 'pipe:':
  Stream #0:0(und): Video: h264 (High), 320x240, q=2-31, 177 kb/s, 25 fps, 25 tbr, 30k tbn (default)";

fn scan(stdout: &str, stderr: &str) -> Result<Probe> {
    let mut scan = FramecrcScan::default();
    stdout.lines().for_each(|l| scan.line(l));
    scan.finish(stderr, "video")
}

#[test]
fn an_mp4_gives_its_exact_rate_frames_size_and_audio() {
    let probe = scan(MP4, MP4_STDERR).unwrap();
    assert_eq!((probe.width, probe.height, probe.fps_num, probe.fps_den, probe.frames, probe.has_audio), (320, 240, 30000, 1001, 5, true));
    assert!((probe.duration_s - 5005.0 / 30000.0).abs() < 1e-9, "{}", probe.duration_s);
    // with no stderr at all the packets alone give the same
    assert_eq!(scan(MP4, "").unwrap(), probe);
}

#[test]
fn a_coarse_time_base_takes_ffmpegs_rate_snapped_to_ntsc() {
    // Matroska at 30000/1001: ms time base, every packet "33" long but 30 of
    // them span 1001 ms, so 1000/33 would be wrong
    let mut mkv = String::from("#tb 0: 1/1000\n#media_type 0: video\n#codec_id 0: ffv1\n#dimensions 0: 64x48\n");
    for i in 0..30 {
        let pts = (i as f64 * 1001.0 / 30.0).round() as i64;
        mkv.push_str(&format!("0, {pts}, {pts}, 33, 900, 0x0\n"));
    }
    let stderr = "Input #0, matroska,webm, from 'n.mkv':\n  Stream #0:0: Video: ffv1, bgr0, 64x48, SAR 1:1 DAR 4:3, 29.97 fps, 29.97 tbr, 1k tbn\n";
    let probe = scan(&mkv, stderr).unwrap();
    assert_eq!((probe.fps_num, probe.fps_den, probe.frames, probe.has_audio), (30000, 1001, 30, false));
    // without ffmpeg's guess, the span (30 frames in ~1.001 s) snaps the same way
    let measured = scan(&mkv, "").unwrap();
    assert_eq!((measured.fps_num, measured.fps_den), (30000, 1001));
}

#[test]
fn rates_snap_to_integers_and_ntsc_else_hundredths() {
    assert_eq!(snap_rate(12.0), Some((12, 1)));
    assert_eq!(snap_rate(29.97), Some((30000, 1001)));
    assert_eq!(snap_rate(23.98), Some((24000, 1001)));
    assert_eq!(snap_rate(59.94), Some((60000, 1001)));
    assert_eq!(snap_rate(12.5), Some((25, 2)));
    assert_eq!(snap_rate(0.0), None);
    assert_eq!(snap_rate(f64::NAN), None);
    assert_eq!(stream_rate("  Stream #0:0: Video: h264, 1k tbr, 1k tbn"), Some(1000.0));
}

#[test]
fn still_images_audio_and_empty_streams_are_not_videos() {
    let png = "#tb 0: 1/25\n#media_type 0: video\n#codec_id 0: png\n#dimensions 0: 64x48\n0, 0, 0, 1, 442, 0xd978c034\n";
    let err = scan(png, "Input #0, png_pipe, from 'c.png':\n").unwrap_err();
    assert!(err.reason.contains("still image (png, 1 frame)"), "{err}");
    // one frame is a still image whatever the container says (e.g. cover art)
    assert!(scan(png, "Input #0, mp3, from 'song.mp3':\n").unwrap_err().reason.contains("still image"));
    let audio = "#tb 0: 1/44100\n#media_type 0: audio\n#codec_id 0: aac\n0, 0, 0, 1024, 256, 0x0\n";
    assert!(scan(audio, "").unwrap_err().reason.contains("no video stream"));
    let no_packets = "#tb 0: 1/25\n#media_type 0: video\n#codec_id 0: h264\n#dimensions 0: 64x48\n";
    assert!(scan(no_packets, "").unwrap_err().reason.contains("no frames"));
    assert!(scan("", "").unwrap_err().reason.contains("no video stream"));
    // garbage lines are ignored, not fatal
    let probe = scan(&format!("{MP4}\n0, x, y\n#tb zz: 1/0\n,,,\n"), MP4_STDERR).unwrap();
    assert_eq!(probe.frames, 5);
}

#[test]
fn checks_name_the_field_and_the_limit() {
    let probe = Probe { width: 320, height: 240, fps_num: 30000, fps_den: 1001, frames: 60, duration_s: 2.002, has_audio: true };
    let video = VideoParams::default();
    assert_eq!(probe.check("video", &video, 100).unwrap(), 60);
    // a window of the clip
    let window = VideoParams { start_s: 1.0, duration_s: 0.5, ..VideoParams::default() };
    assert_eq!(probe.frames_in(&window), 15);
    let err = probe.check("video", &video, 50).unwrap_err();
    assert_eq!(err.field, "video");
    assert!(err.reason.contains("limit of 50 frames"), "{err}");
    let past_end = VideoParams { start_s: 5.0, ..VideoParams::default() };
    assert!(probe.check("video", &past_end, 100).unwrap_err().reason.contains("no frames"));
    let huge = Probe { width: 20_000, ..probe.clone() };
    assert!(huge.check("video", &video, 100).unwrap_err().reason.contains("8192 pixels"));
    let slow = Probe { fps_num: 1, fps_den: 100, ..probe };
    assert!(slow.check("video", &video, 100).unwrap_err().reason.contains("frame rate"));
}
