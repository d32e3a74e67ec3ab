# `make demo` and `make test` work on a fresh clone: both create .venv/ and install the project first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch build installed before everything else. Here `pip install torch==2.13.0` takes the CPU
# wheel from local disk; on a GPU machine the same line takes PyPI's CUDA wheel. Override freely,
# e.g. `make install TORCH_SPEC='torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu'`.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# Quiet by default: `make demo` prints relation's own lines only. `make demo V=1` shows pip's full log.
V ?= 0
ifeq ($(V),1)
PIP_QUIET :=
Q :=
else
PIP_QUIET := --quiet --quiet --disable-pip-version-check
Q := @
endif

DEMO_BUILD := build/demo
RELATION := $(BIN)/relation

.PHONY: install install-ui demo test demo-model demo-eval benchmarks first-hour clean help gpu-wheels gpu-check

help:
	@echo "make install   create $(VENV)/ and install relation (+ test tools)"
	@echo "make install-ui  add the ui extra (gradio) and the browser driver of its tests"
	@echo "make demo      run relation infer on the bundled example images with the embedded model (V=1: full log)"
	@echo "make test      run the whole test suite"
	@echo "make demo-model  rebuild the embedded demo model from nothing with relation's own commands (CPU, < 2 h)"
	@echo "make benchmarks  CPU inference speed, step-cache quality, the demo on photos (prints figures, writes benchmarks/results/)"
	@echo "make first-hour  error latency, offline refusal, demo and photo times of a new user (prints figures)"
	@echo "make demo-eval   score the embedded demo model on held-out synthetic scenes (prepares them if missing)"
	@echo "make gpu-wheels  download the wheels make gpu-check installs on a GPU machine without network (.whl/)"
	@echo "make gpu-check   the prepared GPU check: each base (FLUX.1-dev, FLUX.1 Kontext, FLUX.2 klein 4B) at full size + adapter, random weights (H100/H200, < 8 min)"

$(BIN)/relation: pyproject.toml
	@echo "installing relation into $(VENV)/ (a few minutes the first time; V=1 shows pip's log)"
	$(Q)test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(Q)$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install $(PIP_QUIET) $(TORCH_SPEC)
	$(Q)$(BIN)/python -m pip install $(PIP_QUIET) -e ".[dev]"
	$(Q)touch $(BIN)/relation

# `relation ui` and its tests (tests/test_ui.py); the browser itself is Debian's chromium (.ci/run installs it).
$(VENV)/.ui-extra: $(BIN)/relation
	$(BIN)/python -m pip install -q -e ".[dev,ui-test]"
	touch $@

install-ui: $(VENV)/.ui-extra

install: $(BIN)/relation

demo: install
	$(Q)$(BIN)/relation infer --exemplar examples/exemplar_before.png examples/exemplar_after.png \
		--query examples/query.png

test: install install-ui
	$(BIN)/python -m pytest -rs $(PYTEST_ARGS)

# The embedded demo model, rebuilt from nothing by relation's own commands (configs/demo-*.yaml):
# synthetic data (the fixed relations, the relation families, the tinted_frame family alone) -> random init ->
# VAE pre-training -> full training -> install -> eval.
demo-model: install
	rm -rf $(DEMO_BUILD)
	$(RELATION) prepare --config configs/demo-data.yaml --output $(DEMO_BUILD)/data
	$(RELATION) prepare --config configs/demo-data-families.yaml --output $(DEMO_BUILD)/families \
		--set 'data.synthetic_unseen_families=[contrast]'
	$(RELATION) prepare --config configs/demo-data-families.yaml --output $(DEMO_BUILD)/frames \
		--set 'data.synthetic_families=[tinted_frame]' --set 'data.synthetic_unseen_families=[]'
	$(RELATION) init-model $(DEMO_BUILD)/init --spec configs/arch/demo.yaml --seed 0
	$(RELATION) train --config configs/demo-vae.yaml
	$(RELATION) train --config configs/demo-train.yaml
	rm -rf relation_cli/.demo.new && mkdir relation_cli/.demo.new
	cp -r $(DEMO_BUILD)/main/base $(DEMO_BUILD)/main/image_encoder $(DEMO_BUILD)/main/adapter relation_cli/.demo.new/
	cp configs/demo-defaults.yaml relation_cli/.demo.new/relation.yaml
	rm -rf relation_cli/demo && mv relation_cli/.demo.new relation_cli/demo
	$(MAKE) demo-eval
	cp $(DEMO_BUILD)/eval/grids/seen.png docs/demo-seen.png
	cp $(DEMO_BUILD)/eval/grids/unseen.png docs/demo-unseen.png

# Scores the installed demo model on held-out scenes; the README's grids are copied from its output.
# The held-out scenes are make demo-model's data (seeded: the same bytes every time), prepared here when missing.
demo-eval: install $(DEMO_BUILD)/data/test_seen.jsonl
	$(RELATION) eval --config configs/demo-eval.yaml

$(DEMO_BUILD)/data/test_seen.jsonl:
	$(RELATION) prepare --config configs/demo-data.yaml --output $(DEMO_BUILD)/data

# The CPU benchmarks of the README (need make demo-model's data for cache_quality); JSON in benchmarks/results/.
benchmarks: install
	$(BIN)/python benchmarks/infer_speed.py --target cpu-demo --out benchmarks/results/infer_cpu_demo.json
	$(BIN)/python benchmarks/infer_speed.py --target cpu-mid --out benchmarks/results/infer_cpu_mid.json
	$(BIN)/python benchmarks/cache_quality.py --rows 40 --steps 24 --out benchmarks/results/cache_quality.json
	$(BIN)/python benchmarks/demo_photo.py --out benchmarks/results/demo_photo.json

# The time budgets of a new user's first hour (README, "Time budgets"): prints measured figures.
first-hour: install
	$(BIN)/python benchmarks/first_hour.py

# The GPU check runs where torch, transformers, peft and accelerate are installed but not diffusers, and
# nothing can be downloaded: `make gpu-wheels` here (with network) puts the missing packages in .whl/
# (52 MB, measured), `make gpu-check` there installs them into /tmp/site and runs benchmarks/gpu_check.py
# and the gpu-marked tests. Wheels for Python 3.12 on x86-64 Linux (the GPU machines' python3).
GPU_PYTHON ?= python3
GPU_WHEELS := diffusers==0.42.1 pydantic==2.14.4 pydantic_core==2.50.5 typing-inspection==0.4.5 \
	annotated-types==0.8.0 typing_extensions==4.16.0 bitsandbytes==0.50.2 torchao==0.17.0
GPU_PLATFORMS := $(foreach n,2_28 2_27 2_24 2_17,--platform manylinux_$(n)_x86_64) --platform manylinux2014_x86_64

gpu-wheels:
	rm -rf .whl && mkdir .whl
	$(PYTHON) -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		$(GPU_PLATFORMS) -d .whl $(GPU_WHEELS)
	$(PYTHON) benchmarks/slim_wheel.py .whl/bitsandbytes-*.whl 'libbitsandbytes_(cuda1[0-2]|rocm|xpu)'
	du -ch .whl/*.whl | tail -1

gpu-check:
	$(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
	PYTHONPATH=/tmp/site:$(CURDIR) $(GPU_PYTHON) benchmarks/gpu_check.py --out benchmarks/results/gpu_check.json
	PYTHONPATH=/tmp/site:$(CURDIR) $(GPU_PYTHON) -m pytest -q -rA -p no:cacheprovider -m gpu tests/test_memory_modes.py \
		--junitxml=benchmarks/results/gpu_tests.xml

clean:
	rm -rf $(VENV) outputs .pytest_cache build
