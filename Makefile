# The two commands: `make run` (set up and run the pipeline, embedded) and
# `make test` (set up and run every test). Both build .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run demo test setup system-deps lint bench clean

$(STAMP): pyproject.toml constraints.txt
	@echo "Setting up $(VENV): PyTorch (CPU) and about 150 packages, a few minutes the first time."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: the CPU wheel, not the registry's newest CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]' --config-settings editable_mode=compat
	touch $(STAMP)
	@echo "$(VENV) is ready."

setup: $(STAMP)

# Debian packages the tests use: DCMTK (storescu/echoscu/storescp) and Chromium.
system-deps:
	@if ! command -v /usr/bin/storescu >/dev/null || ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends dcmtk chromium; \
	fi

run: $(STAMP)
	$(BIN)/prelim run --stand-in-if-missing

test: $(STAMP) system-deps
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy prelim db dicom_listener flows models review bench

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts

demo: $(STAMP)
	$(BIN)/prelim demo

# Regenerate the configuration table in README.md from the settings object.
readme: $(STAMP)
	$(BIN)/python -c "import pathlib; from prelim.config_doc import readme_with_table as r; p = pathlib.Path('README.md'); p.write_text(r(p.read_text()))"
