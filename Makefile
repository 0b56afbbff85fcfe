# stylefarm — see README.md
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: setup build release test bench render-demo figures

## setup: libtorch (PyPI torch==2.11.0), VGG-16 weights, sample images. Idempotent.
setup:
	bash scripts/setup.sh
	$(CARGO) build --workspace --all-targets
	./target/debug/stylefarm-worker weights fetch

build: setup

## test: every test in the workspace (runs `make setup` first).
test: setup
	$(CARGO) test --workspace

release: setup
	$(CARGO) build --release -p stylefarm-worker

## bench: engine vs the in-repo eager PyTorch reference, 256 and 512 px.
bench: release
	./target/release/stylefarm-worker bench --sizes 256,512 --repeats 3 --rounds 3

## render-demo: one local render of the sample images (until `make demo` lands with the farm).
render-demo: release
	./target/release/stylefarm-worker render --content .samples/chelsea.png --style .samples/retina.jpg \
	  --output out/chelsea-retina.png --size 256 --iterations 100 --preset keras --device auto \
	  --trace out/chelsea-retina.trace.jsonl --animation out/chelsea-retina.gif --metadata out/chelsea-retina.json
	@echo "outputs: out/chelsea-retina.png out/chelsea-retina.trace.jsonl out/chelsea-retina.gif out/chelsea-retina.json"

## figures: the README's pictures and loss plot (docs/results/).
figures: release
	bash scripts/readme_figures.sh
