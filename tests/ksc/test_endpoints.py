"""Every form of the gateway's address the user may paste, read in one place."""

from __future__ import annotations

import pytest

from ksc.batch_client import http_base
from ksc.client import speech_url
from ksc.endpoints import GatewayUrl

SPEECH = "ws://h:8888/client/ws/speech?content-type="


@pytest.mark.parametrize(
    "given",
    [
        "ws://h:8888",
        "ws://h:8888/",
        "http://h:8888",
        "http://h:8888/",
        "h:8888",
        "ws://h:8888/client/ws/speech",  # what `ksc up` prints
        "ws://h:8888/client/ws/speech/",
        "ws://h:8888/client/ws/speech?content-type=",
        "http://h:8888/client/dynamic/recognize",
        "http://h:8888/client/dynamic/recognize/",
        "http://h:8888/client/dynamic/reference",
        "ws://h:8888/client/ws/status",
        "http://h:8888/v1/transcriptions",
        "http://h:8888/v1/transcriptions/0f3c9a",
        "ws://h:8888/vosk",
        "http://h:8888/status",
        "http://h:8888/readyz",
        "  WS://h:8888/client/ws/speech  ",
    ],
)
def test_base_and_endpoint_urls_name_the_same_gateway(given: str) -> None:
    assert speech_url(given) == SPEECH
    assert http_base(given) == "http://h:8888"


@pytest.mark.parametrize(
    ("given", "http", "speech"),
    [
        ("https://h", "https://h", "wss://h/client/ws/speech?content-type="),
        ("wss://h/client/ws/speech", "https://h", "wss://h/client/ws/speech?content-type="),
        (
            "https://example.org/asr/client/ws/speech/",
            "https://example.org/asr",
            "wss://example.org/asr/client/ws/speech?content-type=",
        ),
        (
            "http://[::1]:8888/",
            "http://[::1]:8888",
            "ws://[::1]:8888/client/ws/speech?content-type=",
        ),
        (
            "http://u:p@h:81/x/",
            "http://u:p@h:81/x",
            "ws://u:p@h:81/x/client/ws/speech?content-type=",
        ),
    ],
)
def test_security_host_and_prefix_are_kept(given: str, http: str, speech: str) -> None:
    assert http_base(given) == http
    assert speech_url(given) == speech


def test_the_query_goes_on_to_the_speech_socket() -> None:
    url = "ws://h:8888/client/ws/speech?model=ko-fast&token=s%20cret&content-type=audio/x-raw"
    assert speech_url(url) == (
        "ws://h:8888/client/ws/speech?content-type=audio%2Fx-raw&model=ko-fast&token=s+cret"
    )
    # What the caller says wins over the URL's own query.
    assert speech_url(url, "audio/x-flac", model="ko") == (
        "ws://h:8888/client/ws/speech?content-type=audio%2Fx-flac&model=ko&token=s+cret"
    )
    assert GatewayUrl.parse(url).http("/v1/transcriptions") == "http://h:8888/v1/transcriptions"


@pytest.mark.parametrize("given", ["ftp://h:8888", "redis://h:6379/0", "ws://", "http:///x", ""])
def test_what_names_no_gateway_is_refused(given: str) -> None:
    with pytest.raises(ValueError):
        GatewayUrl.parse(given)
