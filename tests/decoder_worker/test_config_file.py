"""The worker YAML file: kaldi-gstreamer-server's keys honoured, mapped, ignored or refused."""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path

import pytest

from decoder_worker import config_file
from decoder_worker.config_file import WorkerConfigError, parse
from decoder_worker.model import EndpointRules, PreparedModel
from decoder_worker.worker import tuned
from ksc import cli
from shared.config import WorkerSettings

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "worker.yaml"


def test_the_example_file_loads() -> None:
    loaded = config_file.load(EXAMPLE)
    assert loaded.settings["beam"] == 10.0
    assert loaded.settings["max_active"] == 3000
    assert loaded.settings["lattice_beam"] == 2.0
    assert loaded.settings["partial_interval"] == 0.5
    assert loaded.settings["silence_timeout"] == 10.0
    assert loaded.settings["post_processor"].startswith("sed")
    assert loaded.endpoint["rule2_min_trailing_silence"] == 0.5
    assert loaded.endpoint["rule5_max_utterance_length"] == 20.0
    assert loaded.endpoint["silence_phones"] == tuple(range(1, 11))
    ignored = {line.split(":")[0] for line in loaded.ignored}
    assert ignored == {
        "use-nnet2",
        "logging",
        "decoder.nnet-mode",
        "decoder.model",
        "decoder.word-syms",
        "decoder.fst",
        "decoder.use-threaded-decoder",
    }


def test_every_key_becomes_a_real_field() -> None:
    text = """
silence-timeout: 3
post-processor: cat
full-post-processor: cat
post-processor-timeout: 2
out-dir: /tmp/x
decoder:
  beam: 8
  max-active: 100
  lattice-beam: 1.5
  traceback-period-in-secs: 0.25
  endpoint-silence-phones: "1:2"
  endpoint-rule1-min-trailing-silence: 4
  endpoint-rule2-min-trailing-silence: 0.4
  endpoint-rule3-min-trailing-silence: 0.9
  endpoint-rule4-min-trailing-silence: 1.5
  endpoint-rule5-min-utterance-length: 12
"""
    loaded = parse(text)
    WorkerSettings(**loaded.settings)  # every name is a settings field of the right kind
    rules = EndpointRules(**loaded.endpoint)
    assert rules.rule3_min_trailing_silence == 0.9 and rules.silence_phones == (1, 2)
    assert loaded.settings["out_dir"] == "/tmp/x" and loaded.ignored == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bogus: 1", "unknown key 'bogus'"),
        ("decoder: {bogus-key: 1}", "unknown key 'decoder.bogus-key'"),
        ("decoder: {num-nbest: 5}", "num-nbest: 5 is not supported"),
        ("decoder: {num-nbest: 0}", "positive integer"),
        ("decoder: {beam: fast}", "decoder.beam: expected a number"),
        ("decoder: {beam: -1}", "decoder.beam: must be a positive number"),
        ("decoder: {max-active: 1.5}", "decoder.max-active: expected a positive integer"),
        ("decoder: {endpoint-silence-phones: 'a:b'}", "phone ids"),
        ("silence-timeout: -2", "silence-timeout: must be 0 or more"),
        ("silence-timeout: true", "silence-timeout: expected a number"),
        ("post-processor: ''", "post-processor: expected a non-empty string"),
        ("decoder: [1, 2]", "decoder: expected a mapping"),
        ("- a\n- b", "expected a mapping of keys"),
        ("a: [", "not valid YAML"),
    ],
)
def test_bad_files_are_refused_with_the_key_named(text: str, message: str) -> None:
    with pytest.raises(WorkerConfigError, match=re.escape(message)):
        parse(text, "w.yaml")


def test_num_nbest_one_is_accepted_and_an_empty_file_is_nothing() -> None:
    assert parse("decoder: {num-nbest: 1}") == config_file.WorkerFile()
    assert parse("") == config_file.WorkerFile()


def test_documentation_lists_every_key() -> None:
    """docs/configuration.md has a row for each key, marked as the code treats it."""
    doc = (REPO / "docs" / "configuration.md").read_text()
    rows = dict(
        re.findall(r"^\| `([a-z0-9.-]+)`[^|]* \| (honoured|mapped|ignored|refused)", doc, re.M)
    )
    for key, treatment in config_file.documented_keys().items():
        # one row covers rule1 … rule5 of the lattice-cost keys
        key = re.sub(r"rule[1-5]-(must-contain-nonsilence|max-relative-cost)", r"rule1-\1", key)
        assert key in rows, f"{key} missing from docs/configuration.md"
        expected = "refused" if key == "decoder.num-nbest" else treatment
        assert rows[key] in (treatment, expected), f"{key}: doc says {rows[key]}"


def _args(*argv: str):  # type: ignore[no-untyped-def]
    return cli.parser().parse_args(["worker", *argv])


def test_flags_and_environment_override_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(
        "silence-timeout: 7\nout-dir: /from/file\nuse-nnet2: true\n"
        "decoder: {beam: 9, max-active: 900, endpoint-rule3-min-trailing-silence: 0.8}\n"
    )
    monkeypatch.setenv("KSC_MAX_ACTIVE", "500")
    monkeypatch.delenv("KSC_CONFIG", raising=False)
    with caplog.at_level(logging.INFO, logger="decoder_worker.config_file"):
        settings, endpoint = cli._worker_settings(_args("--config", str(path), "--beam", "6"))
    assert settings.beam == 6.0  # flag over file
    assert settings.max_active == 500  # environment over file
    assert settings.silence_timeout == 7.0 and settings.out_dir == "/from/file"  # file
    assert settings.lattice_beam == 0.0  # default
    assert endpoint == {"rule3_min_trailing_silence": 0.8}
    assert "use-nnet2: ignored" in caplog.text

    monkeypatch.setenv("KSC_CONFIG", str(path))
    settings, _ = cli._worker_settings(_args())
    assert settings.beam == 9.0 and settings.config == str(path)


def test_a_bad_file_stops_the_worker_with_its_reason(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("decoder:\n  num-nbest: 10\n")
    with pytest.raises(SystemExit, match="num-nbest: 10 is not supported"):
        cli._worker_settings(_args("--config", str(path)))
    with pytest.raises(SystemExit, match="cannot read"):
        cli._worker_settings(_args("--config", str(tmp_path / "missing.yaml")))


def test_decoder_settings_and_rules_replace_the_models() -> None:
    model = PreparedModel(
        path=Path("/m"),
        kind="lookahead",
        sample_rate=16000,
        decoder={"beam": 10.0, "max_active": 3000, "lattice_beam": 2.0, "lm_weight": 10.0},
        endpoint=EndpointRules(silence_phones=(1, 2)),
    )
    settings = replace(WorkerSettings(), beam=7.0, lattice_beam=1.0)
    out = tuned(model, settings, {"rule3_min_trailing_silence": 0.7})
    assert out.decoder == {"beam": 7.0, "max_active": 3000, "lattice_beam": 1.0, "lm_weight": 10.0}
    assert out.endpoint == EndpointRules(rule3_min_trailing_silence=0.7, silence_phones=(1, 2))
    assert tuned(model, WorkerSettings(), {}) == model
