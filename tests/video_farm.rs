//! A clip through the farm: the coordinator probes it and plans jobs that wait
//! on each other, two in-process workers decode, compute flows, stylise two
//! segments side by side, join them and encode an MP4 with the audio (real
//! ffmpeg, the static build `make setup` installs without root). Bad clips are refused before
//! any job exists.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use stylefarm_core::ffmpeg::Tools;
use stylefarm_core::video::board::FrameState;
use stylefarm_engine::flow::FramePair;
use stylefarm_engine::image_io::load_rgb;
use stylefarm_engine::params::RenderParams;
use stylefarm_engine::render::{load_weights, render_loaded, Silent, Start};
use stylefarm_engine::video::{output_error, pair_from_bytes};
use stylefarm_proto as pb;
use stylefarm_proto::frames::frame_board;
use stylefarm_tests::farm::{http_get, sha_ref, test_config, upload_as, upload_file, wait_batch, Coordinator, InProcessWorker};
use stylefarm_tests::sample;
use tch::Device;
use tonic::Code;

const FRAMES: u32 = 12;

fn ffmpeg(args: &[&str]) {
    let out = Command::new(Tools::default().ffmpeg).args(["-v", "error", "-nostdin", "-y"]).args(args).output().expect("ffmpeg (make setup installs it)");
    assert!(out.status.success(), "ffmpeg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A 64×48 pan over a sample photo: 12 frames at 12 fps with a 330 Hz tone.
fn clip(dir: &Path) -> PathBuf {
    let path = dir.join("clip.mp4");
    let photo = sample("chelsea.png");
    let filter = "[0:v]scale=720:-1,zoompan=z='1.2':x='iw/2-iw/zoom/2+(on-6)*6':y='ih/2-ih/zoom/2':d=1:s=64x48:fps=12,format=yuv420p[v]";
    ffmpeg(&[
        "-loop",
        "1",
        "-framerate",
        "12",
        "-i",
        photo.to_str().unwrap(),
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=330:duration=2",
        "-filter_complex",
        filter,
        "-map",
        "[v]",
        "-map",
        "1:a",
        "-frames:v",
        "12",
        "-c:v",
        "libx264",
        "-crf",
        "12",
        "-c:a",
        "aac",
        "-shortest",
        path.to_str().unwrap(),
    ]);
    path
}

fn video_request(video: &str, style: &str, video_params: &str) -> pb::SubmitBatchRequest {
    let params = serde_json::json!({"init": "content"}).to_string();
    pb::SubmitBatchRequest {
        name: "clip".into(),
        video: Some(pb::VideoSpec {
            video: Some(sha_ref(video)),
            styles: vec![sha_ref(style)],
            settings: Some(pb::RenderSettings { preset: "gatys".into(), size: Some(64), iterations: Some(40), params_json: params, ..Default::default() }),
            video_params_json: video_params.into(),
            name: "clip".into(),
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clip_is_stylised_over_two_workers_into_an_mp4_with_its_audio() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.http_listen = Some("127.0.0.1:0".parse().unwrap());
    let coordinator = Coordinator::start(config).await;
    let mut client = coordinator.client().await;
    let clip = clip(dir.path());
    let video = upload_as(&mut client, "clip.mp4", std::fs::read(&clip).unwrap(), true).await.expect("a clip uploads");
    let style = upload_file(&mut client, &sample("retina.jpg")).await;
    let a = InProcessWorker::start(&coordinator.url, "a", &dir.path().join("wa"));
    let b = InProcessWorker::start(&coordinator.url, "b", &dir.path().join("wb"));
    // the default temporal weight: relative to the frame's own losses, it holds
    // at 64 px as at the sizes it was chosen at (an absolute 1e3 gave 1.10x the
    // independent error here; this test had to ask for 5e4)
    let knobs = r#"{"segment_frames": 6, "overlap": 2, "frame_iterations": 12}"#;
    let batch = client.submit_batch(video_request(&video, &style, knobs)).await.unwrap().into_inner();
    // 2 decodes, 11 flows, 6 + 8 frames, 2 seams, the assembly
    assert_eq!(batch.job_ids.len(), 2 + 11 + 14 + 2 + 1);
    let (done, jobs) = wait_batch(&mut client, &batch.batch_id, Duration::from_secs(600)).await;
    assert_eq!(pb::BatchState::try_from(done.state).unwrap(), pb::BatchState::Succeeded, "{jobs:#?}");
    a.stop().await;
    b.stop().await;

    let objects = dir.path().join("objects");
    let job = |name: &str| jobs.iter().find(|j| j.name == name).unwrap_or_else(|| panic!("no job {name}"));
    let file = |j: &pb::Job, name: &str| objects.join(&j.result.as_ref().unwrap().prefix).join(name);
    // both workers took part, and the second segment's cold start did not wait for the first segment
    let workers: std::collections::HashSet<&str> = jobs.iter().map(|j| j.worker_id.as_str()).collect();
    assert_eq!(workers.len(), 2, "{workers:?}");
    assert_eq!(job("frame-000005-s02").depends_on, vec![job("decode-s02").id.clone()]);
    assert_eq!(job("assemble").task, "assemble");
    assert_eq!((job("seam-000006").step, job("seam-000006").frame), (pb::VideoStep::Seam as i32, 6));

    // the per-frame view: every frame done, each by the job that makes its final picture
    let board = frame_board(&jobs);
    assert_eq!(board.len(), FRAMES as usize);
    assert!(board.iter().all(|c| c.state == FrameState::Done), "{board:?}");
    assert_eq!(jobs[board[5].job].name, "seam-000006", "an overlap frame's picture is its seam's");
    assert_eq!(jobs[board[0].job].name, "frame-000001-s01");
    // the dashboard draws the same: 12 tiles with pictures, and the clip to play
    let web = coordinator.web_url.clone().unwrap();
    let tiles = http_get(&format!("{web}/fragments/frames/{}", batch.batch_id)).await;
    assert_eq!(tiles.matches(r#"<a class="frame" data-state="done""#).count(), FRAMES as usize, "{tiles}");
    assert!(tiles.contains(&format!(r#"<video controls preload="metadata" src="/files/{}/clip-stylised.mp4">"#, job("assemble").id)), "{tiles}");
    assert!(http_get(&format!("{web}/batches/{}", batch.batch_id)).await.contains(r#"<section class="frames" id="frames""#));

    // the MP4: every frame, the clip's rate, an audio track
    let mp4 = file(job("assemble"), "clip-stylised.mp4");
    let probe = Tools::default().probe(&mp4, "mp4").expect("the output is a video");
    assert_eq!((probe.frames, probe.fps_num, probe.fps_den, probe.has_audio), (FRAMES, 12, 1, true), "{probe:?}");
    // decoded, not only counted as packets
    let decoded = Tools::default().decode(&mp4, &Default::default(), None, &dir.path().join("decoded")).unwrap();
    assert_eq!(decoded, FRAMES);

    // temporal consistency against the same frames stylised on their own at the same total iterations
    let final_job = |t: u32| -> &pb::Job {
        let seam = format!("seam-{:06}", t + 1);
        jobs.iter().find(|j| j.name == seam).unwrap_or_else(|| jobs.iter().find(|j| j.name.starts_with(&format!("frame-{:06}-", t + 1))).unwrap())
    };
    let total: u32 = jobs.iter().filter(|j| j.name.starts_with("frame") || j.name.starts_with("seam")).map(|j| j.result.as_ref().unwrap().iterations).sum();
    let per_frame = total.div_ceil(FRAMES);
    let params: RenderParams = serde_json::from_str(&job("frame-000001-s01").params_json).unwrap();
    let weights = load_weights(&params).unwrap();
    let style_image = load_rgb(&sample("retina.jpg"), "style").unwrap();
    let (mut temporal, mut independent) = (Vec::new(), Vec::new());
    for t in 0..FRAMES {
        temporal.push(load_rgb(&file(final_job(t), "output.png"), "output").unwrap());
        let decode = if t < 6 { job("decode-s01") } else { job("decode-s02") };
        let frame = load_rgb(&file(decode, &format!("frames/{:06}.png", t + 1)), "frame").unwrap();
        let alone = RenderParams { iterations: per_frame, ..params.clone() };
        let out = render_loaded(&frame, std::slice::from_ref(&style_image), Start::Init(None), &weights, &alone, Device::Cpu, &mut Silent).unwrap();
        independent.push(out.image);
    }
    let (mut e_temporal, mut e_independent) = (0.0, 0.0);
    for t in 1..FRAMES {
        let pair: FramePair = pair_from_bytes(&std::fs::read(file(job(&format!("flow-{:06}", t + 1)), "flow.safetensors")).unwrap(), "flow").unwrap();
        e_temporal += output_error(&temporal[t as usize - 1], &temporal[t as usize], &pair).unwrap();
        e_independent += output_error(&independent[t as usize - 1], &independent[t as usize], &pair).unwrap();
    }
    eprintln!("mean warping error: temporal {:.3e}, independent {:.3e}", e_temporal / 11.0, e_independent / 11.0);
    assert!(e_temporal < 0.75 * e_independent, "temporal {e_temporal} vs independent {e_independent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clips_are_refused_before_any_job_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = stylefarm_coordinator::config::CoordinatorConfig { max_video_frames: 10, ..test_config(dir.path()) };
    let coordinator = Coordinator::start(config).await;
    let mut client = coordinator.client().await;
    let refused = |status: tonic::Status, expect: &str| {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(expect), "`{}` should say {expect:?}", status.message());
    };
    // not a video at all, and a still image
    refused(upload_as(&mut client, "notes.mp4", b"hello, not a clip".to_vec(), true).await.unwrap_err(), "no known video container");
    // a playlist that would have ffmpeg read a file of the host's, whatever it is called
    let private = clip(dir.path());
    let playlist = format!("#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n{}\n#EXT-X-ENDLIST\n", private.display());
    refused(upload_as(&mut client, "holiday.mp4", playlist.into_bytes(), true).await.unwrap_err(), "an HLS playlist");
    let png = std::fs::read(sample("chelsea.png")).unwrap();
    refused(upload_as(&mut client, "chelsea.png", png, true).await.unwrap_err(), "still image");
    // a clip with no frames (audio only)
    let silent = dir.path().join("silent.m4a");
    ffmpeg(&["-f", "lavfi", "-i", "sine=frequency=330:duration=1", "-c:a", "aac", silent.to_str().unwrap()]);
    refused(upload_as(&mut client, "silent.m4a", std::fs::read(&silent).unwrap(), true).await.unwrap_err(), "no video stream");
    // a resolution beyond the limit
    let wide = dir.path().join("wide.mkv");
    ffmpeg(&["-f", "lavfi", "-i", "color=size=8200x8:rate=1", "-frames:v", "2", "-c:v", "ffv1", wide.to_str().unwrap()]);
    refused(upload_as(&mut client, "wide.mkv", std::fs::read(&wide).unwrap(), true).await.unwrap_err(), "limit of 8192 pixels");
    // a clip longer than this coordinator's frame limit uploads, but is refused at submit
    let clip = clip(dir.path());
    let video = upload_as(&mut client, "clip.mp4", std::fs::read(&clip).unwrap(), true).await.unwrap();
    let style = upload_file(&mut client, &sample("retina.jpg")).await;
    refused(client.submit_batch(video_request(&video, &style, "")).await.unwrap_err(), "12 frames exceeds the limit of 10 frames");
    // a window past its end has no frames
    refused(client.submit_batch(video_request(&video, &style, r#"{"start_s": 5}"#)).await.unwrap_err(), "no frames to stylise");
    // a bad knob names itself
    refused(client.submit_batch(video_request(&video, &style, r#"{"overlap": 40}"#)).await.unwrap_err(), "video.overlap");
    // nothing was created
    let listed = client.list_batches(pb::ListBatchesRequest::default()).await.unwrap().into_inner();
    assert!(listed.batches.is_empty(), "{listed:?}");
    // the window that fits is accepted
    let ok = client.submit_batch(video_request(&video, &style, r#"{"duration_s": 0.5}"#)).await.unwrap().into_inner();
    assert!(!ok.job_ids.is_empty());
}
