# The two commands: `make up` runs the whole cluster locally, `make test` runs the suite.
# `make setup` is what both do first; it is idempotent and installs everything needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := redis-server libfst-tools libfst22-plugins-base espeak-ng sox curl \
	chromium fonts-noto-cjk
STAMP := $(VENV)/.installed
# The image builds and the container stage of `make test` (tests/containers): rootful
# podman with runc, and debootstrap for the local Python base (docs/deploy.md).
CONTAINER_PACKAGES := podman runc debootstrap

.PHONY: setup up test lint bench bench-smoke clean images container-tools

setup: $(STAMP)
	@$(BIN)/ksc model prepare

$(STAMP): pyproject.toml
	@scripts/install-system-packages $(APT_PACKAGES)
	@# Node.js for the KEDA schema validators; some images ship NodeSource's, which
	@# bundles npm and conflicts with Debian's npm package.
	@command -v npm >/dev/null || scripts/install-system-packages nodejs npm
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@scripts/deploy-tools $(VENV)
	@touch $(STAMP)

up: setup
	$(BIN)/ksc up

# Checked on every run (dpkg only), so a tree set up before the container stage existed
# gets podman too.
container-tools:
	@scripts/install-system-packages $(CONTAINER_PACKAGES)

# The gateway and worker images (and the local base and Redis images) with podman, no
# Docker daemon or registry needed; a no-op when they are up to date (docs/deploy.md,
# "Images and the container test").
images: container-tools
	scripts/build-images

test: setup container-tools
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy shared gateway decoder_worker batch_worker ksc harness
	$(BIN)/pytest

# The benchmark suite (docs/performance.md): writes benchmarks/results/latest.json and plots.
bench: setup
	$(BIN)/python -m benchmarks.run --out benchmarks/results

# The same stages with tiny parameters: checks the harness, not the numbers (also in `make test`).
bench-smoke: setup
	$(BIN)/pytest -q tests/benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
