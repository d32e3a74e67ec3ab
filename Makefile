# `make demo` and `make test` work on a fresh clone: both create .venv/ and install the project first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch build installed before everything else. Here `pip install torch==2.13.0` takes the CPU
# wheel from local disk; on a GPU machine the same line takes PyPI's CUDA wheel. Override freely,
# e.g. `make install TORCH_SPEC='torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu'`.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install demo test demo-model clean help

help:
	@echo "make install   create $(VENV)/ and install relation (+ test tools)"
	@echo "make demo      run relation infer on the bundled example images with the embedded model"
	@echo "make test      run the whole test suite"

$(BIN)/relation: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install $(TORCH_SPEC)
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(BIN)/relation

install: $(BIN)/relation

demo: install
	$(BIN)/relation infer --exemplar examples/exemplar_before.png examples/exemplar_after.png \
		--query examples/query.png

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) outputs .pytest_cache
