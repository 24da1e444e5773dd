"""Direct decoding, as a worker's decoder processes decode, outside the cluster.

kaldi-active-grammar carries process-wide state from one utterance to the next (a
second engine loaded in a process that already decoded is not pristine either;
``docs/engine.md``). So the reference runs in a freshly spawned interpreter that loads
the engine once, never decodes with it, and decodes in fresh forks of it, one per
decoder epoch — as a worker does. :func:`pool` starts that interpreter; its
``decode(pcm)`` gives the finals a session of the same audio must give.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

_ENGINE: tuple[Any, Any] | None = None


def _load(model_path: str, decoder: Mapping[str, Any]) -> None:
    from decoder_worker.engine import KagEngine
    from decoder_worker.model import load_prepared

    global _ENGINE
    model = load_prepared(Path(model_path))
    if decoder:
        model = replace(model, decoder={**model.decoder, **decoder})
    _ENGINE = (KagEngine.load(model), model.endpoint)


def _decode(pcm: bytes, chunk_bytes: int) -> Any:
    from decoder_worker.forking import ForkingEngine
    from decoder_worker.recognizer import decode_pcm

    assert _ENGINE is not None
    engine, rules = _ENGINE
    return decode_pcm(ForkingEngine(engine), rules, pcm, chunk_bytes)


@contextmanager
def pool(
    model_path: Path, decoder: Mapping[str, Any] | None = None
) -> Iterator[Callable[..., Any]]:
    """A spawned reference decoder for the prepared model at ``model_path``, with
    ``decoder`` settings in place of the model's (as ``--beam`` … give a worker).
    Yields ``decode(pcm, chunk_bytes=8000) -> list[Final]``."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1, initializer=_load, initargs=(str(model_path), dict(decoder or {}))) as p:
        yield lambda pcm, chunk_bytes=8000: p.apply(_decode, (pcm, chunk_bytes))
