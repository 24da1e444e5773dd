"""What an audio stream is, read from its first bytes: pure functions, no decoding.

:func:`sniff` names the container from its magic bytes; :func:`parse_wav` reads a
RIFF/WAVE header far enough to know whether the samples are PCM the gateway converts
itself (integer or float, plain or ``WAVE_FORMAT_EXTENSIBLE``) or something a decoder
must handle (A-law, µ-law, ADPCM, …). Neither needs more than the header, so a stream
can be classified while it is still arriving.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.protocol import UnsupportedAudio

#: Bytes :func:`sniff` needs to decide (``RIFF....WAVE`` is the longest magic).
SNIFF_BYTES = 12
#: A WAV header larger than this is not a WAV header we accept.
MAX_WAV_HEADER = 64 * 1024

#: Formats that go to a decoder, by the FFmpeg demuxer that reads them.
WAV, OGG, MATROSKA, FLAC, MP3, AAC = "wav", "ogg", "matroska", "flac", "mp3", "aac"

SUPPORTED_HINT = (
    "send WAV, OGG (Vorbis, Opus), WebM/Matroska (Opus, Vorbis), MP3, FLAC or AAC (ADTS), "
    "or raw PCM with a content-type such as audio/x-raw, rate=16000, format=S16LE, channels=1"
)

_WAVE_PCM, _WAVE_FLOAT, _WAVE_EXTENSIBLE = 0x0001, 0x0003, 0xFFFE


def sniff(head: bytes, *, final: bool = False) -> str | None:
    """The FFmpeg demuxer for a stream starting with ``head``.

    Returns ``None`` while ``head`` is too short to decide (unless ``final``: the
    stream ended); raises :class:`UnsupportedAudio` when nothing matches.
    """
    if len(head) >= 12 and head[:4] in (b"RIFF", b"RF64", b"RIFX") and head[8:12] == b"WAVE":
        return WAV
    if head[:4] == b"OggS":
        return OGG
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML: WebM and Matroska
        return MATROSKA
    if head[:4] == b"fLaC":
        return FLAC
    if head[:3] == b"ID3":  # an ID3v2 tag: in practice an MP3 follows
        return MP3
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        layer = (head[1] >> 1) & 3
        if layer != 0:
            return MP3  # MPEG audio layer I, II or III frame sync
        if head[1] & 0xF6 == 0xF0:
            return AAC  # ADTS frame sync (MPEG version bit either way, layer 0)
    if len(head) < SNIFF_BYTES and not final and _could_grow(head):
        return None
    raise UnsupportedAudio(
        f"Unsupported audio: not a WAV file or a known container; {SUPPORTED_HINT}"
    )


def _could_grow(head: bytes) -> bool:
    """Whether more bytes could still make ``head`` one of the known magics."""
    magics = (b"RIFF", b"RF64", b"RIFX", b"OggS", b"\x1a\x45\xdf\xa3", b"fLaC", b"ID3", b"\xff")
    return any(magic.startswith(head[: len(magic)]) for magic in magics)


@dataclass(frozen=True)
class WavInfo:
    """A RIFF/WAVE header: where the samples start and what they are."""

    data_offset: int
    #: bytes of samples the header declares, or ``None``: take all that comes
    data_bytes: int | None
    rate: int
    channels: int
    #: the caps name of the sample format (``S16LE``…), or ``None`` for a coded format
    #: (A-law, ADPCM, …) that needs a decoder
    sample_format: str | None
    format_tag: int
    bits: int


def parse_wav(buf: bytes) -> WavInfo | None:
    """Parse a WAV header; ``None`` while the ``data`` chunk has not begun yet.

    Raises :class:`UnsupportedAudio` for a broken or oversized header.
    """
    if buf[:4] == b"RIFX":
        # Big-endian WAV: rare enough to leave to the decoder entirely.
        return WavInfo(0, None, 0, 0, None, 0, 0) if len(buf) >= 12 else None
    pos = 12
    fmt: bytes | None = None
    while pos + 8 <= len(buf):
        chunk, size = buf[pos : pos + 4], int.from_bytes(buf[pos + 4 : pos + 8], "little")
        if chunk == b"data":
            if fmt is None:
                raise UnsupportedAudio("Unsupported WAV file: data chunk before fmt chunk")
            return _wav_info(fmt, pos + 8, size, rf64=buf[:4] == b"RF64")
        if chunk == b"fmt ":
            if pos + 8 + size > len(buf):
                break  # the fmt chunk is still arriving
            fmt = buf[pos + 8 : pos + 8 + size]
        pos += 8 + size + (size & 1)  # chunks are padded to even sizes
    if len(buf) > MAX_WAV_HEADER:
        raise UnsupportedAudio("Unsupported WAV file: header larger than 64 KiB")
    return None


def _wav_info(fmt: bytes, offset: int, size: int, *, rf64: bool) -> WavInfo:
    if len(fmt) < 16:
        raise UnsupportedAudio("Unsupported WAV file: fmt chunk too short")
    tag = int.from_bytes(fmt[0:2], "little")
    channels = int.from_bytes(fmt[2:4], "little")
    rate = int.from_bytes(fmt[4:8], "little")
    block_align = int.from_bytes(fmt[12:14], "little")
    bits = int.from_bytes(fmt[14:16], "little")
    if tag == _WAVE_EXTENSIBLE and len(fmt) >= 26:
        tag = int.from_bytes(fmt[24:26], "little")  # the SubFormat GUID's first two bytes
    if not 1 <= channels <= 8 or not 1000 <= rate <= 384000:
        raise UnsupportedAudio(f"Unsupported WAV format: {channels} channels, {rate} Hz")
    # The container width decides the layout; ``bits`` may be less (20 bits in 24).
    width = block_align // channels if block_align else (bits + 7) // 8
    sample_format = {
        (_WAVE_PCM, 1): "U8",
        (_WAVE_PCM, 2): "S16LE",
        (_WAVE_PCM, 3): "S24LE",
        (_WAVE_PCM, 4): "S32LE",
        (_WAVE_FLOAT, 4): "F32LE",
        (_WAVE_FLOAT, 8): "F64LE",
    }.get((tag, width))
    if sample_format is None and tag in (_WAVE_PCM, _WAVE_FLOAT):
        raise UnsupportedAudio(f"Unsupported WAV format: {bits}-bit samples in {width} bytes")
    # Streamed WAVs often declare a zero or maximal length (RF64 keeps the real one
    # elsewhere): then take all that comes.
    declared = size if 0 < size < 0xFFFFFF00 and not rf64 else None
    return WavInfo(offset, declared, rate, channels, sample_format, tag, bits)
