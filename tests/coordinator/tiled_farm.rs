//! A print split into tiles across the farm: a coordinator and two real CPU
//! workers (processes), a job asking for tiles of at most 256 px at 384 px.
//! It is planned as a coarse job, four tiles and an assembly; the worker
//! rendering a tile is SIGKILLed mid-tile and restarted. The lost tile alone
//! runs again; the job's output is one 384 px image, with the trace of every
//! scale and metadata saying how it was split. A print whose tiles could not
//! fit, or with tile knobs out of range, is refused at submit, naming the field.

use std::time::{Duration, Instant};

use stylefarm_coordinator_tests::farm::{connect_retrying, options, sha_ref, sigkill, start_worker_process, upload_file, Client, CoordinatorProcess};
use stylefarm_coordinator_tests::{sample, workspace_bin};
use stylefarm_proto as pb;

fn print_request(content: &str, style: &str, params: serde_json::Value) -> pb::SubmitBatchRequest {
    pb::SubmitBatchRequest {
        name: "print".into(),
        jobs: vec![pb::JobSpec {
            name: "poster".into(),
            content: Some(sha_ref(content)),
            styles: vec![sha_ref(style)],
            settings: Some(pb::RenderSettings { preset: "gatys".into(), params_json: params.to_string(), ..Default::default() }),
            requires: Vec::new(),
        }],
        max_attempts: 5,
        ..Default::default()
    }
}

async fn jobs(client: &mut Client, batch: &str) -> (pb::Batch, Vec<pb::Job>) {
    let r = client.get_batch(pb::GetBatchRequest { batch_id: batch.into(), include_jobs: true }).await.expect("get batch").into_inner();
    (r.batch.unwrap(), r.jobs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_print_renders_as_tiles_on_two_workers_and_a_worker_lost_mid_tile_costs_that_tile() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let coordinator = CoordinatorProcess::start(&data, "127.0.0.1:0", 2_000);
    let url = format!("http://{}", coordinator.addr);
    let mut client = options("http://x", None).coordinator(connect_retrying(&url).await).unwrap();
    let astronaut = upload_file(&mut client, &sample("astronaut.png")).await;
    let gravel = upload_file(&mut client, &sample("gravel.png")).await;

    // refused at submit, naming the field and the limit; nothing queued
    for (params, field) in [
        (serde_json::json!({"size": 384, "tile_size": 100}), "jobs[0].settings.tile_size"),
        (serde_json::json!({"size": 384, "tile_size": 256, "tile_overlap": 100}), "jobs[0].settings.tile_overlap"),
        (serde_json::json!({"size": 9000}), "jobs[0].settings.size"),
        (serde_json::json!({"size": 384, "print": "tiff32"}), "jobs[0].settings.print"),
    ] {
        let err = client.submit_batch(print_request(&astronaut, &gravel, params.clone())).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{params}: {err:?}");
        assert!(err.message().contains(field), "{params}: {}", err.message());
    }
    let listed = client.list_batches(pb::ListBatchesRequest::default()).await.unwrap().into_inner();
    assert!(listed.batches.is_empty(), "nothing was queued: {listed:?}");

    let mut workers = [0, 1].map(|i| start_worker_process(&url, &format!("tiler-{i}"), &dir.path().join(format!("w{i}"))));
    let params = serde_json::json!({"size": 384, "scales": 2, "iterations": 12, "tile_size": 256, "tile_overlap": 32, "init": "content", "print": "tiff16"});
    let batch = client.submit_batch(print_request(&astronaut, &gravel, params)).await.unwrap().into_inner();
    let (_, planned) = jobs(&mut client, &batch.batch_id).await;
    let names: Vec<&str> = planned.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["poster-coarse", "poster-s2-r1c1", "poster-s2-r1c2", "poster-s2-r2c1", "poster-s2-r2c2", "poster"]);
    let tile_ids: Vec<String> = planned[1..5].iter().map(|j| j.id.clone()).collect();
    assert!(planned[1..5].iter().all(|j| j.depends_on == vec![planned[0].id.clone()]));
    assert_eq!(planned[5].depends_on.len(), 5, "the four tiles and the coarse job");
    // each tiled job says where it sits (the dashboard's mosaic and `status` draw from it)
    assert_eq!(planned[0].tile, None, "the coarse job is a plain render");
    let part = |j: &pb::Job| j.tile.unwrap_or_else(|| panic!("{} has no tile part", j.name));
    let first = part(&planned[1]);
    assert_eq!((first.kind, first.scale, first.image_width, first.image_height), (pb::TilePartKind::Tile as i32, 2, 384, 384));
    assert_eq!((first.x, first.y), (0, 0));
    let last_tile = part(&planned[4]);
    assert_eq!((last_tile.x + last_tile.width, last_tile.y + last_tile.height), (384, 384), "the last tile reaches the corner");
    assert_eq!(part(&planned[5]).kind, pb::TilePartKind::Assemble as i32);

    // SIGKILL the worker rendering the first tile that starts, then bring it back
    let started = Instant::now();
    let (killed_tile, killed_worker) = loop {
        let (_, now) = jobs(&mut client, &batch.batch_id).await;
        if let Some(j) = now.iter().find(|j| tile_ids.contains(&j.id) && j.state == pb::JobState::Running as i32 && !j.worker_id.is_empty()) {
            break (j.id.clone(), j.worker_id.clone());
        }
        assert!(started.elapsed() < Duration::from_secs(300), "no tile started: {now:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // let it render a little first: a tile lost mid-render, not at its lease
    tokio::time::sleep(Duration::from_millis(800)).await;
    let workers_list = client.list_workers(pb::ListWorkersRequest::default()).await.unwrap().into_inner().workers;
    let name = workers_list.iter().find(|w| w.id == killed_worker).map(|w| w.name.clone()).expect("the worker is listed");
    let index: usize = name.trim_start_matches("tiler-").parse().unwrap();
    eprintln!("SIGKILL {name} rendering tile {killed_tile}");
    sigkill(&mut workers[index]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    workers[index] = start_worker_process(&url, &name, &dir.path().join(format!("w{index}")));

    let deadline = Instant::now() + Duration::from_secs(600);
    let done = loop {
        let (b, now) = jobs(&mut client, &batch.batch_id).await;
        if b.finished_at_ms != 0 {
            break now;
        }
        assert!(Instant::now() < deadline, "the print did not finish: {now:#?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for w in &mut workers {
        let _ = w.kill();
        let _ = w.wait();
    }
    assert!(done.iter().all(|j| j.state == pb::JobState::Succeeded as i32), "{done:#?}");
    let attempts = |id: &str| done.iter().find(|j| j.id == id).unwrap().attempt;
    assert_eq!(attempts(&killed_tile), 2, "the lost tile ran again");
    assert_eq!(attempts(&planned[0].id), 1, "the coarse job was not lost with the tile");
    assert_eq!(attempts(&planned[5].id), 1);
    let tile_workers: std::collections::HashSet<&str> = done.iter().filter(|j| tile_ids.contains(&j.id)).map(|j| j.worker_id.as_str()).collect();
    assert_eq!(tile_workers.len(), 2, "tiles ran on both workers: {done:#?}");
    // `stylefarm status` draws the tiles in place
    let status = std::process::Command::new(workspace_bin("stylefarm-client", "stylefarm"))
        .args(["--coordinator", &url, "status", &batch.batch_id])
        .output()
        .expect("stylefarm status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success() && text.contains("scale 2 · 384×384 · 4/4 tiles · assembled\n    █ █\n    █ █"), "{text}");

    // the job's output looks like any other's: one image, its trace, its metadata
    let last = client.get_job(pb::GetJobRequest { job_id: planned[5].id.clone() }).await.unwrap().into_inner();
    let result = last.result.expect("a result");
    let object =
        |name: &str| data.join("objects").join(&result.outputs.iter().find(|o| o.key.ends_with(name)).unwrap_or_else(|| panic!("no {name}: {result:?}")).key);
    let image = image::open(object("output.png")).unwrap();
    assert_eq!((image.width(), image.height()), (384, 384));
    // the print master: the tiles' 16-bit images blended, the 8-bit output rounded from it
    let print = result.outputs.iter().find(|o| o.key.ends_with("/print.tiff")).unwrap_or_else(|| panic!("no print.tiff: {result:?}"));
    assert_eq!(print.kind, "print");
    let print = image::open(object("print.tiff")).unwrap();
    assert_eq!(print.color(), image::ColorType::Rgb16);
    let (deep, eight) = (print.to_rgb16(), image.to_rgb8());
    assert!(deep.as_raw().iter().zip(eight.as_raw()).all(|(&d, &e)| stylefarm_core::print::to_8bit(d) == e), "output.png is the print rounded");
    assert!(deep.as_raw().iter().filter(|&&d| d % 257 != 0).count() * 2 > deep.as_raw().len(), "16-bit levels, not 8-bit ones");
    for tile in done.iter().filter(|j| tile_ids.contains(&j.id)) {
        let outputs = client.get_job(pb::GetJobRequest { job_id: tile.id.clone() }).await.unwrap().into_inner().result.unwrap().outputs;
        assert!(outputs.iter().any(|o| o.key.ends_with("/print.png")), "a tile keeps 16 bits for the blend: {outputs:?}");
    }
    let trace = std::fs::read_to_string(object("trace.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = trace.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let scales: std::collections::BTreeSet<u64> = rows.iter().map(|r| r["scale"].as_u64().unwrap()).collect();
    assert_eq!(scales.into_iter().collect::<Vec<_>>(), vec![0, 1], "both scales' rows");
    assert_eq!(rows.iter().filter(|r| r["scale"] == 1).count(), 13, "iterations 0..=12 of the tiled scale");
    let metadata: serde_json::Value = serde_json::from_slice(&std::fs::read(object("metadata.json")).unwrap()).unwrap();
    assert_eq!(metadata["tiling"]["tiles_per_scale"], serde_json::json!([4]));
    assert_eq!(metadata["tiling"]["whole_scales"], 1);
    assert_eq!((metadata["output_width"].as_u64(), metadata["params"]["size"].as_u64()), (Some(384), Some(384)));
}
