"""The worker's YAML file: kaldi-gstreamer-server's worker keys, read strictly.

``ksc worker --config FILE`` (or ``KSC_CONFIG``) accepts the YAML a kaldi-gstreamer-server
worker was started with (``worker.py -c FILE``). Every key of the original is either

* **honoured** — it means here what it meant there (``silence-timeout``,
  ``post-processor``, ``full-post-processor``, ``out-dir``, ``decoder.beam`` …);
* **mapped** — it becomes the nearest setting of ours (``traceback-period-in-secs`` is
  the partial interval, the ``endpoint-rule*`` settings tune the VAD endpointer);
* **ignored** — it names something this server does not have (a GStreamer element,
  a model file: models are chosen with ``--model``); each one found is logged once.

A key that is none of these is an error naming it, as is a value of the wrong type,
and ``decoder.num-nbest`` above 1 (kaldi-active-grammar gives the best path only).
docs/configuration.md has the full table. The file only supplies defaults: flags and
``KSC_*`` variables override it (see :func:`shared.config.build`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["WorkerConfigError", "WorkerFile", "load", "parse"]


class WorkerConfigError(ValueError):
    """The file is unreadable, not YAML, or has an unknown key or a bad value."""


@dataclass(frozen=True)
class WorkerFile:
    """What a worker YAML file says, sorted by where it goes."""

    #: ``WorkerSettings`` field name -> value (defaults under flags and environment)
    settings: dict[str, Any] = field(default_factory=dict)
    #: ``EndpointRules`` field name -> value (over the model's ``model.conf``)
    endpoint: dict[str, Any] = field(default_factory=dict)
    #: one line per ignored key, saying why; the CLI logs them
    ignored: tuple[str, ...] = ()


# --- value checks ------------------------------------------------------------------------


def _positive_float(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WorkerConfigError(f"{key}: expected a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise WorkerConfigError(f"{key}: must be a positive number, got {value!r}")
    return float(value)


def _non_negative_float(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WorkerConfigError(f"{key}: expected a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise WorkerConfigError(f"{key}: must be 0 or more, got {value!r}")
    return float(value)


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise WorkerConfigError(f"{key}: expected a positive integer, got {value!r}")
    return value


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise WorkerConfigError(f"{key}: expected a non-empty string, got {value!r}")
    return value


def _phones(key: str, value: Any) -> tuple[int, ...]:
    """Kaldi's colon-separated phone ids, e.g. ``"1:2:3:4:5"`` (a single id may be an int)."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str):
        raise WorkerConfigError(f"{key}: expected phone ids like '1:2:3', got {value!r}")
    try:
        phones = tuple(int(p) for p in text.split(":") if p.strip())
    except ValueError:
        raise WorkerConfigError(f"{key}: expected phone ids like '1:2:3', got {value!r}") from None
    if not phones or min(phones) < 0:
        raise WorkerConfigError(f"{key}: expected phone ids like '1:2:3', got {value!r}")
    return phones


def _nbest(key: str, value: Any) -> int:
    n = _positive_int(key, value)
    if n > 1:
        raise WorkerConfigError(
            f"{key}: {n} is not supported: kaldi-active-grammar gives only the best path, "
            "so every result has exactly one hypothesis (use num-nbest: 1 or leave it out)"
        )
    return n


Check = Callable[[str, Any], Any]

#: top-level keys -> (WorkerSettings field, check)
_SETTINGS: Mapping[str, tuple[str, Check]] = {
    "silence-timeout": ("silence_timeout", _non_negative_float),
    "post-processor": ("post_processor", _text),
    "full-post-processor": ("full_post_processor", _text),
    "post-processor-timeout": ("post_processor_timeout", _positive_float),
    "out-dir": ("out_dir", _text),
}

#: ``decoder:`` keys that are worker settings
_DECODER_SETTINGS: Mapping[str, tuple[str, Check]] = {
    "beam": ("beam", _positive_float),
    "max-active": ("max_active", _positive_int),
    "lattice-beam": ("lattice_beam", _positive_float),
    "traceback-period-in-secs": ("partial_interval", _positive_float),
}

#: ``decoder:`` keys that tune the VAD endpointer (EndpointRules fields)
_ENDPOINT: Mapping[str, tuple[str, Check]] = {
    "endpoint-silence-phones": ("silence_phones", _phones),
    **{
        f"endpoint-rule{n}-min-trailing-silence": (
            f"rule{n}_min_trailing_silence",
            _positive_float,
        )
        for n in (1, 2, 3, 4)
    },
    "endpoint-rule5-min-utterance-length": ("rule5_max_utterance_length", _positive_float),
}

_MODEL = "the model is chosen with --model (a prepared directory), never by file paths here"
_LATTICE = "needs lattice costs of the decoder; the VAD endpointer has no equivalent"

#: top-level keys accepted and ignored, with the reason logged
_IGNORED: Mapping[str, str] = {
    "use-nnet2": "there is one decoder (nnet3 through kaldi-active-grammar)",
    "logging": "logging is configured with --log-level",
    "use-vad": "segmentation always uses the webrtcvad endpointer",
}

#: ``decoder:`` keys accepted and ignored
_DECODER_IGNORED: Mapping[str, str] = {
    "nnet-mode": "there is one decoder (nnet3 through kaldi-active-grammar)",
    "use-threaded-decoder": "each session decodes in its own process",
    "model": _MODEL,
    "fst": _MODEL,
    "word-syms": _MODEL,
    "phone-syms": _MODEL,
    "mfcc-config": _MODEL,
    "fbank-config": _MODEL,
    "plp-config": _MODEL,
    "feature-type": _MODEL,
    "ivector-extraction-config": _MODEL,
    "word-boundary-file": _MODEL,
    "lm-fst": "language-model rescoring is not available in kaldi-active-grammar",
    "big-lm-const-arpa": "language-model rescoring is not available in kaldi-active-grammar",
    "arpa": "language-model rescoring is not available in kaldi-active-grammar",
    "rnnlm": "language-model rescoring is not available in kaldi-active-grammar",
    "min-active": "taken from the model's conf/model.conf",
    "acoustic-scale": "taken from the model's conf/model.conf",
    "frame-subsampling-factor": "taken from the model's conf/model.conf",
    "chunk-length-in-secs": "audio reaches the decoder in fixed 100 ms blocks",
    "max-mem": "kaldi-active-grammar does not expose it",
    "determinize-lattice": "finals always come from the determinised lattice",
    "do-endpointing": "endpointing is always on (the VAD endpointer)",
    "do-phone-alignment": "phone alignments are not produced",
    "num-phone-alignment": "phone alignments are not produced",
    "endpoint-rule5-min-trailing-silence": _LATTICE,
    **{f"endpoint-rule{n}-must-contain-nonsilence": _LATTICE for n in range(1, 6)},
    **{f"endpoint-rule{n}-max-relative-cost": _LATTICE for n in range(1, 6)},
}


def parse(text: str, source: str = "<config>") -> WorkerFile:
    """Parse and validate the YAML text of a worker configuration file."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise WorkerConfigError(f"{source}: not valid YAML: {exc}") from None
    if doc is None:
        return WorkerFile()
    if not isinstance(doc, dict):
        raise WorkerConfigError(f"{source}: expected a mapping of keys, got {type(doc).__name__}")
    settings: dict[str, Any] = {}
    endpoint: dict[str, Any] = {}
    ignored: list[str] = []
    for key, value in doc.items():
        if key in _SETTINGS:
            name, check = _SETTINGS[key]
            settings[name] = check(f"{source}: {key}", value)
        elif key in _IGNORED:
            ignored.append(f"{key}: ignored ({_IGNORED[key]})")
        elif key == "decoder":
            if value is None:
                continue
            if not isinstance(value, dict):
                raise WorkerConfigError(f"{source}: decoder: expected a mapping, got {value!r}")
            _decoder(value, source, settings, endpoint, ignored)
        else:
            raise WorkerConfigError(f"{source}: unknown key {key!r} (see docs/configuration.md)")
    return WorkerFile(settings, endpoint, tuple(ignored))


def _decoder(
    block: dict[Any, Any],
    source: str,
    settings: dict[str, Any],
    endpoint: dict[str, Any],
    ignored: list[str],
) -> None:
    for key, value in block.items():
        where = f"{source}: decoder.{key}"
        if key in _DECODER_SETTINGS:
            name, check = _DECODER_SETTINGS[key]
            settings[name] = check(where, value)
        elif key in _ENDPOINT:
            name, check = _ENDPOINT[key]
            endpoint[name] = check(where, value)
        elif key == "num-nbest":
            _nbest(where, value)
        elif key in _DECODER_IGNORED:
            ignored.append(f"decoder.{key}: ignored ({_DECODER_IGNORED[key]})")
        else:
            raise WorkerConfigError(
                f"{source}: unknown key 'decoder.{key}' (see docs/configuration.md)"
            )


def load(path: Path | str) -> WorkerFile:
    """Read and parse a worker configuration file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkerConfigError(f"{path}: cannot read it: {exc}") from None
    return parse(text, str(path))


def documented_keys() -> dict[str, str]:
    """Every key this module knows, dotted (``decoder.beam``), to how it is treated:
    ``honoured``, ``mapped`` or ``ignored``. docs/configuration.md is checked against it."""
    keys: dict[str, str] = {}
    for key in _SETTINGS:
        keys[key] = "honoured"
    for key in _IGNORED:
        keys[key] = "ignored"
    for key in ("beam", "max-active", "lattice-beam", "num-nbest"):
        keys[f"decoder.{key}"] = "honoured"
    keys["decoder.traceback-period-in-secs"] = "mapped"
    for key in _ENDPOINT:
        keys[f"decoder.{key}"] = "mapped"
    for key in _DECODER_IGNORED:
        keys[f"decoder.{key}"] = "ignored"
    return keys
