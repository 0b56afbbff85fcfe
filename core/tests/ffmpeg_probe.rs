//! The probe against real ffmpeg (the static build `make setup` installs):
//! clips in the containers users send, at integer and NTSC rates, with and
//! without audio, and files that are not videos.

use std::path::{Path, PathBuf};
use std::process::Command;

use stylefarm_core::ffmpeg::Tools;

fn make(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let out =
        Command::new(Tools::default().ffmpeg).args(["-v", "error", "-nostdin", "-y"]).args(args).arg(&path).output().expect("ffmpeg (make setup installs it)");
    assert!(out.status.success(), "ffmpeg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    path
}

/// Width, height, rate numerator and denominator, frames, audio.
type Expected = (u32, u32, u32, u32, u32, bool);

#[test]
fn clips_in_common_containers_give_their_size_rate_frames_and_audio() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tone = ["-f", "lavfi", "-i", "sine=frequency=330:duration=3"];
    let cases: Vec<(PathBuf, Expected)> = vec![
        // H.264 with B-frames in MP4, NTSC rate, AAC audio
        (
            make(
                d,
                "ntsc.mp4",
                &[
                    &["-f", "lavfi", "-i", "testsrc=size=96x64:rate=30000/1001"][..],
                    &tone,
                    &["-frames:v", "45", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest"],
                ]
                .concat(),
            ),
            (96, 64, 30000, 1001, 45, true),
        ),
        // Matroska's millisecond time base at 29.97 and at 12 fps, no audio
        (
            make(d, "ntsc.mkv", &["-f", "lavfi", "-i", "testsrc=size=64x48:rate=30000/1001", "-frames:v", "30", "-c:v", "ffv1"]),
            (64, 48, 30000, 1001, 30, false),
        ),
        (make(d, "twelve.mkv", &["-f", "lavfi", "-i", "testsrc=size=64x48:rate=12", "-frames:v", "13", "-c:v", "ffv1"]), (64, 48, 12, 1, 13, false)),
        // WebM (VP9 + Opus) at 24 fps
        (
            make(
                d,
                "film.webm",
                &[
                    &["-f", "lavfi", "-i", "testsrc=size=64x48:rate=24"][..],
                    &tone,
                    &["-frames:v", "24", "-c:v", "libvpx-vp9", "-deadline", "realtime", "-c:a", "libopus", "-shortest"],
                ]
                .concat(),
            ),
            (64, 48, 24, 1, 24, true),
        ),
        // an animated GIF is a clip too
        (make(d, "anim.gif", &["-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-frames:v", "10"]), (64, 48, 10, 1, 10, false)),
    ];
    for (path, want) in cases {
        let p = Tools::default().probe(&path, "video").unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!((p.width, p.height, p.fps_num, p.fps_den, p.frames, p.has_audio), want, "{}: {p:?}", path.display());
        assert!((p.duration_s - p.frames as f64 / p.fps()).abs() < 0.1, "{}: {p:?}", path.display());
    }
}

#[test]
fn files_that_are_not_clips_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let garbage = d.join("garbage.mp4");
    std::fs::write(&garbage, b"not a video at all, just some bytes").unwrap();
    let png = make(d, "still.png", &["-f", "lavfi", "-i", "testsrc=size=64x48", "-frames:v", "1"]);
    let m4a = make(d, "tone.m4a", &["-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac"]);
    // a broken file in a known container
    let mut broken = vec![0, 0, 0, 0x20];
    broken.extend_from_slice(b"ftypisom this is no movie");
    let broken_mp4 = d.join("broken.mp4");
    std::fs::write(&broken_mp4, &broken).unwrap();
    for (path, reason) in
        [(garbage, "no known video container"), (png, "a still image"), (broken_mp4.clone(), "not a readable video"), (m4a, "no video stream")]
    {
        let err = Tools::default().probe(&path, "video.video").unwrap_err().to_string();
        assert!(err.contains("video.video") && err.contains(reason), "{}: {err}", path.display());
    }
    let missing = Tools { ffmpeg: d.join("no-such-ffmpeg") }.probe(&broken_mp4, "video").unwrap_err();
    assert!(matches!(missing, stylefarm_core::ToolError::Missing { .. }), "{missing}");
}

/// Every ffmpeg this machine has: the bundled static build, and a
/// distribution's where one is installed.
fn every_ffmpeg() -> Vec<Tools> {
    let mut all = vec![Tools::default()];
    for path in ["/usr/bin/ffmpeg", "/usr/local/bin/ffmpeg"] {
        if Path::new(path).is_file() && all.iter().all(|t| t.ffmpeg != Path::new(path)) {
            all.push(Tools { ffmpeg: path.into() });
        }
    }
    all
}

#[test]
fn playlists_and_scripts_that_point_at_other_files_are_refused_by_every_ffmpeg() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // a private clip elsewhere on the host, and an upload that names it
    let private = make(d, "private.mkv", &["-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-frames:v", "10", "-c:v", "ffv1"]);
    let hls = format!("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n{}\n#EXT-X-ENDLIST\n", private.display());
    let concat = format!("ffconcat version 1.0\nfile '{}'\n", private.display());
    let bare_concat = format!("file '{}'\n", private.display());
    let video = stylefarm_core::video::VideoParams::default();
    for tools in every_ffmpeg() {
        for (name, text, what) in [
            ("upload.m3u8", &hls, "an HLS playlist"),
            ("upload.mp4", &hls, "an HLS playlist"),
            ("upload.ffconcat", &concat, "a concat script"),
            ("upload.mkv", &bare_concat, "a concat script"),
        ] {
            let upload = d.join(name);
            std::fs::write(&upload, text).unwrap();
            let probed = tools.probe(&upload, "video.video").unwrap_err().to_string();
            assert!(probed.contains("video.video") && probed.contains(what), "{} {name}: {probed}", tools.ffmpeg.display());
            let out = d.join(format!("frames-{name}"));
            let decoded = tools.decode(&upload, &video, None, &out).unwrap_err().to_string();
            assert!(decoded.contains(what), "{} {name}: {decoded}", tools.ffmpeg.display());
            assert!(std::fs::read_dir(&out).map_or(true, |mut e| e.next().is_none()), "no frame of the private clip came out");
        }
        // the private clip itself is a clip like any other
        assert_eq!(tools.probe(&private, "video").unwrap().frames, 10, "{}", tools.ffmpeg.display());
    }
}
