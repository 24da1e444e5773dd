"""This installation's version, as ``pyproject.toml`` gives it (from the package metadata)."""

from __future__ import annotations

from importlib import metadata

try:
    VERSION = metadata.version("kaldi-stream-cluster")
except metadata.PackageNotFoundError:  # run from a checkout that was never installed
    VERSION = "0+unknown"
