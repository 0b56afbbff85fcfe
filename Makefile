# stylefarm — see README.md
SHELL := /bin/bash
CARGO ?= cargo
# where cargo puts binaries (CARGO_TARGET_DIR if set)
TARGET ?= $(or $(CARGO_TARGET_DIR),target)

.PHONY: wheel test-python video-demo deploy-test setup setup-demo build release test lint bench bench-coordinator bench-coordinator-baseline soak-coordinator bench-farm bench-print bench-video bench-pipeline demo render-demo figures images dist

## setup: libtorch (PyPI torch==2.11.0), VGG-16 weights, sample images, the test tools, and every target of the workspace. Idempotent.
setup:
	bash scripts/setup.sh
	$(CARGO) build --workspace --all-targets
	$(TARGET)/debug/stylefarm-worker weights fetch

## setup-demo: only what `make demo` runs: libtorch, ffmpeg, samples, the three binaries and the weights.
setup-demo:
	bash scripts/setup.sh --demo
	$(CARGO) build -p stylefarm-coordinator -p stylefarm-worker -p stylefarm-client --bins
	$(TARGET)/debug/stylefarm-worker weights fetch

build: setup

## test: formatting and lints, every test in the workspace, the Python client, then the coordinator image (runs `make setup` first).
test: setup lint
	$(CARGO) test --workspace
	bash scripts/python_test.sh
	bash scripts/image_check.sh

## test-python: the Python client: its wheel in a fresh venv, pytest against this checkout's coordinator and worker, the examples.
test-python: setup
	bash scripts/python_test.sh

## wheel: the Python client, target/dist/stylefarm-VERSION-py3-none-any.whl (stubs generated from proto/).
wheel:
	bash scripts/python_wheel.sh

## lint: rustfmt and clippy (warnings are errors).
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

release: setup
	$(CARGO) build --release -p stylefarm-worker

## bench: engine vs the in-repo eager PyTorch reference, 256 and 512 px.
bench: release
	$(TARGET)/release/stylefarm-worker bench --sizes 256,512 --repeats 3 --rounds 3

## demo: the whole farm on this machine: coordinator + worker, sample photos x styles, live progress, outputs in out/demo/.
demo: setup-demo
	bash scripts/demo.sh

## bench-coordinator: jobs/s through real gRPC with 100 and 1,000 simulated workers, vs per-request commits.
bench-coordinator:
	$(CARGO) bench -p stylefarm-coordinator --bench throughput -- --workers 100,1000 --jobs 20000

## bench-coordinator-baseline: this checkout's coordinator beside the one before the trust boundary (9e49a34), alternating rounds.
bench-coordinator-baseline:
	bash scripts/bench_coordinator_baseline.sh

## soak-coordinator: 1,000,000 trivial jobs, watchers coming and going; the coordinator's RSS as it goes.
soak-coordinator:
	$(CARGO) bench -p stylefarm-coordinator --bench throughput -- --soak 1000000

## bench-farm: farm throughput with 1 vs 2 local workers, and the coordinator's overhead per job.
bench-farm: setup
	bash scripts/farm_bench.sh

## bench-print: a 2048 px print whole on one worker, in tiles on one, in tiles on two (one core each).
bench-print: setup
	bash scripts/print_bench.sh

## bench-video: temporal error of the farm's video path over frames stylised on their own (OpenCV Farneback flow), pan/zoom/rotation, 96/256/512 px, both presets.
bench-video: release
	bash scripts/video_bench.sh $(BENCH_VIDEO_ARGS)

## bench-pipeline: how busy a worker keeps its device: small jobs with --pipeline off / on / on with --previews off, 1 and 2 workers, 3 interleaved rounds.
bench-pipeline: setup
	ROUNDS=3 bash scripts/pipeline_bench.sh

## video-demo: a generated clip stylised temporally consistent vs frame by frame, figures side by side (CPU, ~15 min at 256 px).
video-demo: setup release
	bash scripts/video_demo.sh

## render-demo: one local render of the sample images, no farm.
render-demo: release
	$(TARGET)/release/stylefarm-worker render --content .samples/chelsea.png --style .samples/retina.jpg \
	  --output out/chelsea-retina.png --size 256 --iterations 100 --preset keras --device auto \
	  --trace out/chelsea-retina.trace.jsonl --animation out/chelsea-retina.gif --metadata out/chelsea-retina.json
	@echo "outputs: out/chelsea-retina.png out/chelsea-retina.trace.jsonl out/chelsea-retina.gif out/chelsea-retina.json"

## figures: the README's pictures and loss plot (docs/results/).
figures: release
	bash scripts/readme_figures.sh

## images: the coordinator and S3 images with podman (Debian base from mmdebstrap; this checkout's binaries).
images:
	bash scripts/images.sh coordinator s3

## deploy-test: the farm from its images with podman: containers, drain, restart, kube play of deploy/k8s, podman-compose (~15 min; worker image ~5 GB).
deploy-test: setup
	bash scripts/deploy_test.sh

## dist: target/dist/stylefarm-VERSION-linux-x86_64.tar.gz (binaries, systemd units, install.sh) and the Python wheel.
dist: wheel
	bash scripts/dist.sh
