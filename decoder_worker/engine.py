"""The decoding engine: kaldi-active-grammar behind a small Protocol.

Everything above this module (recogniser, worker) talks to :class:`Engine`, so the
segmenting and numbering logic is testable without Kaldi, and another decoder could be
slotted in. :class:`KagEngine` is the real one.

Fork model: a worker loads one :class:`KagEngine` in its parent process and forks
children that each decode with their inherited copy. The model (FSTs, acoustic model,
i-vector extractor) is read-only after load, so its pages stay shared between children
copy-on-write; only per-utterance decoder state is private. :meth:`KagEngine.load`
decodes the bundled sample utterance before returning, so the part of the lazily
expanded lookahead graph that speech reaches already exists before the fork and is
shared too: every utterance still starts from the same state, at about three quarters
of the CPU a never-used template costs (``docs/performance.md``). KaG starts no
threads of its own, which is what makes forking after load safe.

Word times: when the model has an alignment lexicon, :meth:`KagEngine.finish` also
aligns the finished utterance's words (:mod:`decoder_worker.alignment`); an alignment
that fails leaves the words without times, it never fails the utterance.
"""

from __future__ import annotations

import logging
import re
import wave
from dataclasses import dataclass, replace
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from decoder_worker.model import DICTATION_FST, ModelError, PreparedModel

if TYPE_CHECKING:
    from decoder_worker.alignment import Aligner

__all__ = [
    "BLOCK_MS",
    "Aligning",
    "Decoded",
    "Engine",
    "KagEngine",
    "Renewable",
    "WordTime",
    "clean_text",
]

log = logging.getLogger(__name__)

_NONTERM = re.compile(r"#nonterm:\S*")
_DICTATION_GRAMMAR = "0 1 #nonterm:dictation #nonterm:dictation\n1\n"

#: Decoded once by :meth:`KagEngine.load` before any fork (in ``shared/samples``).
WARMUP_SAMPLE = "ko-sample.wav"

#: Audio reaches KaG in blocks of this length (see :meth:`KagEngine.accept`); it bounds
#: how far a partial can lag behind the audio received.
BLOCK_MS = 100

#: i-vector estimation down-weights frames whose best path is a silence phone, as Vosk
#: does; this is Vosk's weight.
_SILENCE_WEIGHT = 1e-3


@dataclass(frozen=True, slots=True)
class WordTime:
    """A word and its time, in seconds from the first sample of its utterance."""

    word: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Decoded:
    """A finished utterance: its text (``#nonterm`` markers dropped) and likelihood,
    and its words with times, ``None`` when there are none (no alignment lexicon,
    nothing recognised, or the alignment failed)."""

    text: str
    likelihood: float
    words: tuple[WordTime, ...] | None = None
    #: an alignment was tried and failed (the words go out without times)
    align_failed: bool = False


class Engine(Protocol):
    """One utterance at a time: accept audio, peek at the best path, finish."""

    sample_rate: int

    def accept(self, pcm: bytes) -> None:
        """Decode s16le mono PCM at ``sample_rate`` (any length, may be empty)."""

    def partial(self) -> str:
        """Best-path text of the open utterance so far ("" if none)."""

    def finish(self) -> Decoded:
        """Finalise the utterance; its text, likelihood and word times. Ready for the
        next one."""


@runtime_checkable
class Aligning(Protocol):
    """An engine whose :meth:`Engine.finish` is :meth:`finalize` then :meth:`align`.

    The decoding process (:mod:`decoder_worker.forking`) calls the two steps itself
    and reports the text between them, so that a crash inside the native aligner costs
    the word times of that utterance, not its text.
    """

    def finalize(self) -> Decoded:
        """Finalise the utterance; its text and likelihood, no word times yet."""

    def align(self, decoded: Decoded) -> Decoded:
        """``decoded`` with the word times of the utterance just finalised."""


@runtime_checkable
class Renewable(Protocol):
    """An engine whose decoding state can be dropped: after :meth:`renew`, the next
    utterance decodes from the engine's starting state, exactly as the first one did.

    The recogniser renews it between decoder epochs (:mod:`decoder_worker.recognizer`),
    which is what makes a replay from an epoch's start exact.
    """

    def renew(self) -> None:
        """Forget what was decoded so far (no utterance may be open)."""


def clean_text(raw: str) -> str:
    """Drop KaG's nonterminal markers and collapse whitespace."""
    return " ".join(_NONTERM.sub(" ", raw).split())


def _warmup_pcm() -> bytes:
    """The bundled Korean sample (16 kHz mono S16LE, KaG's only rate): any speech
    expands the shared part of the graph, which is most of what a first utterance pays."""
    with resources.as_file(resources.files("shared") / "samples" / WARMUP_SAMPLE) as path:
        with wave.open(str(path)) as wav:
            return bytes(wav.readframes(wav.getnframes()))


class KagEngine:
    """kaldi-active-grammar's nnet3 decoder for a prepared model."""

    sample_rate: int

    def __init__(
        self,
        decoder: Any,
        *,
        lookahead: bool,
        sample_rate: int,
        aligner: Aligner | None = None,
    ) -> None:
        """Wrap an already constructed KaG decoder; use :meth:`load`."""
        self._decoder = decoder
        self._lookahead = lookahead
        self.sample_rate = sample_rate
        #: word times for finished utterances (None: the model has no lexicon)
        self.aligner = aligner
        self._raw = ""  # the last finalised utterance's output, markers included
        self._started = False
        #: which grammars are active at the start of an utterance: dictation only,
        #: unless :meth:`restrict` added a phrase-list grammar
        self._activity = [True]
        self._block_bytes = 2 * sample_rate * BLOCK_MS // 1000
        self._pending = bytearray()  # less than one block, not yet decoded

    @classmethod
    def load(
        cls, model: PreparedModel, *, word_times: bool = True, whole_lexicon: bool = False
    ) -> KagEngine:
        """Construct the decoder for ``model`` and warm it up.

        ``tmp_dir`` is a required argument of KaG's decoder constructors but is only
        used by KaG's grammar *compiler* (to cache compiled FSTs); decoding never
        touches it, so we pass ``None`` rather than create a directory nobody writes.

        ``word_times``: align finished utterances when the model has an alignment
        lexicon, each with a lexicon of its own words (:mod:`decoder_worker.alignment`);
        ``whole_lexicon`` loads all of it with the decoder instead (the benchmark's
        comparison, not what a worker does).
        """
        try:
            from kaldi_active_grammar import utils as kag_utils
            from kaldi_active_grammar import wrapper as kag
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ModelError(
                "kaldi-active-grammar is not installed; install kaldi-stream-cluster[worker]"
            ) from exc
        kag_utils.disable_donation_message()  # it prints to stdout otherwise
        config: dict[str, Any] = dict(model.decoder)
        lexicon, index = model.align_lexicon, model.align_lexicon_index
        aligning = word_times and lexicon is not None and index is not None
        # KaG loads a lexicon by the name align_lexicon.int from the model directory
        # unless told otherwise; it is loaded here only on purpose.
        config["word_align_lexicon_filename"] = str(lexicon) if aligning and whole_lexicon else ""
        if model.endpoint.silence_phones:
            config["silence_phones_str"] = ":".join(map(str, model.endpoint.silence_phones))
            config["silence_weight"] = _SILENCE_WEIGHT
        path = str(model.path)
        decoder: Any
        try:
            if model.kind == "lookahead":
                if not (model.path / "relabel_ilabels.int").exists():
                    config["relabel_ilabels_filename"] = ""
                decoder = kag.KaldiLafNNet3Decoder(
                    model_dir=path,
                    tmp_dir=None,
                    dictation_fst_file=str(model.path / DICTATION_FST),
                    config=config,
                )
                decoder.add_grammar_fst_text(_DICTATION_GRAMMAR)
            elif model.kind == "plain":
                decoder = kag.KaldiPlainNNet3Decoder(model_dir=path, tmp_dir=None, config=config)
            else:
                raise ModelError(f"unknown model kind {model.kind!r}")
        except (kag.KaldiError, OSError) as exc:
            raise ModelError(f"{path}: kaldi-active-grammar cannot load it: {exc}") from exc
        aligner = None
        if aligning:
            from decoder_worker.alignment import Aligner

            assert lexicon is not None and index is not None
            aligner = Aligner.for_model(
                lexicon, index, model.path / "words.txt", model.sample_rate, whole=whole_lexicon
            )
        engine = cls(
            decoder,
            lookahead=model.kind == "lookahead",
            sample_rate=model.sample_rate,
            aligner=aligner,
        )
        engine.accept(_warmup_pcm())
        engine.finish()  # aligns too: its code is paged in before the forks
        return engine

    def _decode(self, pcm: bytes, finalize: bool) -> None:
        if self._lookahead:
            # The grammar activity is read at the start of an utterance only; later
            # calls pass None (KaG sends an empty list).
            activity = None if self._started else self._activity
            self._decoder.decode(pcm, finalize, activity)
        else:
            self._decoder.decode(pcm, finalize)
        self._started = not finalize

    def restrict(self, grammar: str) -> None:
        """Decode every later utterance with ``grammar`` only, dictation off.

        ``grammar`` is a rule FST in OpenFst text form with words as symbols
        (:mod:`decoder_worker.grammar`). Called in a session's decoder process, never
        in the worker's, whose engine stays pristine for the other sessions.
        """
        from decoder_worker.grammar import GrammarError

        if not self._lookahead:
            raise GrammarError("Bad grammar: this model does not support phrase lists")
        self._decoder.add_grammar_fst_text(grammar)
        self._activity = [False] * (self._decoder.num_grammars - 1) + [True]

    def accept(self, pcm: bytes) -> None:
        """Decode more audio of the open utterance (opening one if needed).

        KaG's output depends on how the audio is split into ``decode`` calls (i-vector
        and network chunk boundaries follow the calls), so audio is passed on in fixed
        blocks: the same audio gives the same text however it arrived.
        """
        self._pending.extend(pcm)
        block = self._block_bytes
        whole = len(self._pending) - len(self._pending) % block
        for i in range(0, whole, block):
            self._decode(bytes(self._pending[i : i + block]), finalize=False)
        del self._pending[:whole]

    def partial(self) -> str:
        """Best path so far; costs a traceback, not a lattice determinisation."""
        if not self._started:
            return ""
        text, _info = self._decoder.get_output()
        return clean_text(text)

    def finish(self) -> Decoded:
        """Finalise the utterance (determinising its lattice): its text and word times."""
        return self.align(self.finalize())

    def finalize(self) -> Decoded:
        """Finalise the utterance: its text and likelihood (no word times yet)."""
        self._raw = ""
        tail = len(self._pending) - len(self._pending) % 2
        if not self._started and not tail:
            self._pending.clear()
            return Decoded("", 0.0)
        self._decode(bytes(self._pending[:tail]), finalize=True)
        self._pending.clear()
        self._raw, info = self._decoder.get_output()
        return Decoded(clean_text(self._raw), float(info["likelihood"]))

    def align(self, decoded: Decoded) -> Decoded:
        """``decoded`` with its words' times, if there is an aligner and a text.

        An alignment that fails (a lattice forced out by audio ending inside a word, a
        word the lexicon lacks) gives the words without times, never an error.
        """
        from decoder_worker.alignment import AlignmentFailed

        if self.aligner is None or not decoded.text:
            return decoded
        try:
            words = self.aligner.align(self._decoder, self._raw)
        except AlignmentFailed as exc:
            log.info("no word times for %r: %s", decoded.text[:80], exc)
            return replace(decoded, align_failed=True)
        return replace(decoded, words=tuple(WordTime(*w) for w in words))

    def close(self) -> None:
        """Free the decoder's native memory; the engine is unusable afterwards."""
        decoder, self._decoder = self._decoder, None
        if decoder is not None:
            decoder.destroy()
