use super::*;

#[test]
fn segments_cover_every_frame_once_and_overlap_before_their_boundary() {
    let segments = plan_segments(50, 12, 3);
    assert_eq!(segments.len(), 5);
    assert_eq!(segments[0], Segment { first: 0, owns_from: 0, end: 10 });
    assert_eq!(segments[1], Segment { first: 7, owns_from: 10, end: 20 });
    let owned: u32 = segments.iter().map(|s| s.end - s.owns_from).sum();
    assert_eq!(owned, 50);
    assert!(segments.windows(2).all(|w| w[0].end == w[1].owns_from));
    // a clip shorter than a segment is one chain with no overlap
    assert_eq!(plan_segments(5, 12, 3), vec![Segment { first: 0, owns_from: 0, end: 5 }]);
    // an overlap longer than the earlier segment leaves it one frame of its own
    let short = plan_segments(11, 10, 8);
    assert_eq!(short[1].first, 1);
}

#[test]
fn overlaps_cross_fade_from_the_earlier_copy_to_the_later() {
    let segments = plan_segments(12, 6, 3);
    assert_eq!(segments[1], Segment { first: 3, owns_from: 6, end: 12 });
    assert_eq!(blend_of(&segments, 2), vec![(0, 1.0)]);
    assert_eq!(blend_of(&segments, 3), vec![(0, 0.75), (1, 0.25)]);
    assert_eq!(blend_of(&segments, 5), vec![(0, 0.25), (1, 0.75)]);
    assert_eq!(blend_of(&segments, 6), vec![(1, 1.0)]);
    assert!(blend_of(&segments, 12).is_empty());
    for frame in 0..12 {
        let sum: f64 = blend_of(&segments, frame).iter().map(|(_, w)| w).sum();
        assert!((sum - 1.0).abs() < 1e-12, "frame {frame}");
    }
}

#[test]
fn knobs_name_the_field_and_the_limit() {
    assert!(VideoParams::default().validate().is_ok());
    let cases = [
        (VideoParams { temporal_weight: f64::NAN, ..Default::default() }, "temporal_weight"),
        (VideoParams { frame_iterations: 0, ..Default::default() }, "frame_iterations"),
        (VideoParams { segment_frames: 1, ..Default::default() }, "segment_frames"),
        (VideoParams { overlap: 24, ..Default::default() }, "overlap"),
        (VideoParams { start_s: -1.0, ..Default::default() }, "start_s"),
    ];
    for (params, field) in cases {
        assert_eq!(params.validate().unwrap_err().field, field);
    }
}

#[test]
fn frames_are_numbered_from_one_with_zero_padding() {
    assert_eq!(frame_name(0), "000001.png");
    assert_eq!(frame_name(1234), "001235.png");
}

fn probe(frames: u32) -> Probe {
    Probe { width: 64, height: 48, fps_num: 12, fps_den: 1, frames, duration_s: frames as f64 / 12.0, has_audio: true }
}

#[test]
fn the_plan_chains_each_segment_and_runs_flows_and_segments_side_by_side() {
    let video = VideoParams { segment_frames: 6, overlap: 2, ..VideoParams::default() };
    let jobs = plan_jobs("clip", &probe(12), 12, &video);
    let count = |kind: &str| jobs.iter().filter(|j| j.name.starts_with(kind)).count();
    // 2 segments: 2 decodes, 11 flows, 6 + 8 frames, 2 seams, 1 assembly
    assert_eq!((count("decode"), count("flow"), count("frame"), count("seam"), count("assemble")), (2, 11, 14, 2, 1));
    for (i, job) in jobs.iter().enumerate() {
        assert!(job.depends_on.iter().all(|&d| (d as usize) < i), "{} depends only on earlier jobs", job.name);
        assert!(VideoTask::parse(&job.task.to_json()).unwrap() == job.task);
    }
    let by_name = |name: &str| jobs.iter().position(|j| j.name == name).unwrap() as u32;
    // a warm frame waits on its decode, its flow and the chain's previous frame
    let frame3 = &jobs[by_name("frame-000003-s01") as usize];
    assert_eq!(frame3.depends_on, vec![by_name("decode-s01"), by_name("flow-000003"), by_name("frame-000002-s01")]);
    // the second segment starts cold two frames before its boundary, on its own decode
    let cold = &jobs[by_name("frame-000005-s02") as usize];
    assert_eq!(cold.depends_on, vec![by_name("decode-s02")]);
    assert!(matches!(cold.task, VideoTask::Frame { warm: false, .. }));
    // and no flow waits on a frame: all of them can run at once
    assert!(jobs.iter().filter(|j| j.name.starts_with("flow")).all(|j| j.depends_on.len() == 1));
    let seam = &jobs[by_name("seam-000005") as usize];
    assert_eq!(seam.depends_on, vec![by_name("decode-s01"), by_name("frame-000005-s01"), by_name("frame-000005-s02")]);
    let assemble = jobs.last().unwrap();
    assert_eq!(assemble.depends_on.len(), 12);
    assert_eq!(assemble.depends_on[4], by_name("seam-000005"));
    assert_eq!(assemble.depends_on[11], by_name("frame-000012-s02"));
    let VideoTask::Decode { first, end, .. } = jobs[by_name("decode-s02") as usize].task else { panic!() };
    assert_eq!((first, end), (3, 12), "the second decode holds the frame before its chain's first");
}
