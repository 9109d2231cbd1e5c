"""Tiny media writers for the bundled video pipeline: WAV, AVI, frames, SRT.

Rules: standard library only (the sample must run offline with nothing but
what the project installs), deterministic (the same plan makes the same
bytes, so a resumed attempt can rebuild a missing input), and small: a frame
is raw RGB, top-down; the AVI is uncompressed 24-bit DIB video plus 16-bit PCM
audio, interleaved one audio chunk per frame, with an `idx1` index, which any
player reads. Nothing here knows about jobs or the control pipe.
"""

from __future__ import annotations

import math
import struct
import wave
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

SAMPLE_RATE = 16000
Color = tuple[int, int, int]

# A 3x5 bitmap font: enough for titles and captions in upper case.
_GLYPHS: dict[str, tuple[str, ...]] = {
    "A": ("010", "101", "111", "101", "101"), "B": ("110", "101", "110", "101", "110"),
    "C": ("011", "100", "100", "100", "011"), "D": ("110", "101", "101", "101", "110"),
    "E": ("111", "100", "110", "100", "111"), "F": ("111", "100", "110", "100", "100"),
    "G": ("011", "100", "101", "101", "011"), "H": ("101", "101", "111", "101", "101"),
    "I": ("111", "010", "010", "010", "111"), "J": ("001", "001", "001", "101", "010"),
    "K": ("101", "101", "110", "101", "101"), "L": ("100", "100", "100", "100", "111"),
    "M": ("101", "111", "111", "101", "101"), "N": ("110", "101", "101", "101", "101"),
    "O": ("010", "101", "101", "101", "010"), "P": ("110", "101", "110", "100", "100"),
    "Q": ("010", "101", "101", "110", "011"), "R": ("110", "101", "110", "101", "101"),
    "S": ("011", "100", "010", "001", "110"), "T": ("111", "010", "010", "010", "010"),
    "U": ("101", "101", "101", "101", "111"), "V": ("101", "101", "101", "101", "010"),
    "W": ("101", "101", "111", "111", "101"), "X": ("101", "101", "010", "101", "101"),
    "Y": ("101", "101", "010", "010", "010"), "Z": ("111", "001", "010", "100", "111"),
    "0": ("111", "101", "101", "101", "111"), "1": ("010", "110", "010", "010", "111"),
    "2": ("110", "001", "010", "100", "111"), "3": ("110", "001", "010", "001", "110"),
    "4": ("101", "101", "111", "001", "001"), "5": ("111", "100", "110", "001", "110"),
    "6": ("011", "100", "111", "101", "111"), "7": ("111", "001", "010", "010", "010"),
    "8": ("111", "101", "111", "101", "111"), "9": ("111", "101", "111", "001", "110"),
    " ": ("000",) * 5, ".": ("000", "000", "000", "000", "010"),
    ",": ("000", "000", "000", "010", "100"), "!": ("010", "010", "010", "000", "010"),
    "?": ("110", "001", "010", "000", "010"), "-": ("000", "000", "111", "000", "000"),
    ":": ("000", "010", "000", "010", "000"), "'": ("010", "010", "000", "000", "000"),
}


class Frame:
    """One RGB picture, top-down rows, drawn with rectangles and a bitmap font."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(width * height * 3)

    def rows(self, y0: int, y1: int, color: Color) -> None:
        row = bytes(color) * self.width
        for y in range(max(y0, 0), min(y1, self.height)):
            start = y * self.width * 3
            self.pixels[start:start + self.width * 3] = row

    def rect(self, x: int, y: int, w: int, h: int, color: Color) -> None:
        x0, x1 = max(x, 0), min(x + w, self.width)
        if x1 <= x0:
            return
        run = bytes(color) * (x1 - x0)
        for yy in range(max(y, 0), min(y + h, self.height)):
            start = (yy * self.width + x0) * 3
            self.pixels[start:start + len(run)] = run

    def text(self, x: int, y: int, text: str, *, scale: int, color: Color) -> None:
        for i, char in enumerate(text.upper()):
            glyph = _GLYPHS.get(char, _GLYPHS["?"])
            for gy, line in enumerate(glyph):
                for gx, bit in enumerate(line):
                    if bit == "1":
                        self.rect(x + (i * 4 + gx) * scale, y + gy * scale, scale, scale, color)

    def centered_text(self, y: int, text: str, *, scale: int, color: Color) -> None:
        width = len(text) * 4 * scale - scale
        self.text((self.width - width) // 2, y, text, scale=scale, color=color)


def text_width(text: str, scale: int) -> int:
    return len(text) * 4 * scale - scale


def wrap(text: str, width: int, scale: int) -> list[str]:
    """Words in lines that fit `width` pixels at `scale`."""
    lines: list[str] = []
    for word in text.split():
        if lines and text_width(f"{lines[-1]} {word}", scale) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


# ---- audio ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Cue:
    start: float
    end: float
    text: str


def cues(sentences: list[str], seconds: float) -> list[Cue]:
    """Sentences spread over `seconds`, each given time in proportion to its words."""
    weights = [max(len(s.split()), 1) for s in sentences]
    total, at, out = sum(weights), 0.0, []
    for sentence, weight in zip(sentences, weights, strict=True):
        span = seconds * weight / total
        out.append(Cue(round(at, 3), round(at + span, 3), sentence))
        at += span
    return out


def narration_samples(script: list[Cue], start: float, end: float, *, rate: float = 1.0,
                      pitch: float = 1.0) -> array[int]:
    """Speech-like tone bursts (one per word) for the time range [start, end)."""
    first, last = int(start * SAMPLE_RATE), int(end * SAMPLE_RATE)
    out = array("h", bytes(2 * (last - first)))
    for cue in script:
        words = cue.text.split() or [""]
        slot = (cue.end - cue.start) / len(words)
        for k, word in enumerate(words):
            w0 = cue.start + k * slot
            w1 = w0 + slot * min(0.85, 0.45 + 0.08 * len(word) / max(rate, 0.25))
            if w1 <= start or w0 >= end:
                continue
            freq = pitch * (150.0 + 23.0 * (sum(map(ord, word)) % 7))
            _tone(out, first, w0, w1, freq)
    return out


def _tone(out: array[int], first: int, t0: float, t1: float, freq: float) -> None:
    s0, s1 = max(int(t0 * SAMPLE_RATE), first), min(int(t1 * SAMPLE_RATE), first + len(out))
    n = max(int((t1 - t0) * SAMPLE_RATE), 1)
    step = 2 * math.pi * freq / SAMPLE_RATE
    begin = int(t0 * SAMPLE_RATE)
    for s in range(s0, s1):
        i = s - begin
        envelope = min(1.0, i / 400, (n - i) / 800)
        phase = i * step
        value = 7000 * envelope * (math.sin(phase) + 0.35 * math.sin(2 * phase))
        out[s - first] = int(value)


def write_wav(path: Path, chunks: Iterable[array[int]]) -> int:
    """A mono 16-bit PCM WAV from sample chunks; returns the sample count."""
    count = 0
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        for chunk in chunks:
            w.writeframes(chunk.tobytes())
            count += len(chunk)
    return count


def read_wav(path: Path) -> bytes:
    with wave.open(str(path), "rb") as w:
        if (w.getnchannels(), w.getsampwidth(), w.getframerate()) != (1, 2, SAMPLE_RATE):
            raise ValueError(f"{path.name}: expected mono 16-bit {SAMPLE_RATE} Hz PCM")
        return w.readframes(w.getnframes())


# ---- subtitles -----------------------------------------------------------------

def srt(script: list[Cue]) -> str:
    return "".join(f"{i}\n{_srt_time(c.start)} --> {_srt_time(c.end)}\n{c.text}\n\n"
                   for i, c in enumerate(script, 1))


def _srt_time(t: float) -> str:
    ms = round(t * 1000)
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


# ---- AVI -----------------------------------------------------------------------

AVIF_HASINDEX = 0x10
AVIIF_KEYFRAME = 0x10


def _chunk(fourcc: bytes, data: bytes) -> bytes:
    return fourcc + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")


def _list(kind: bytes, body: bytes) -> bytes:
    return b"LIST" + struct.pack("<I", len(body) + 4) + kind + body


def _avi_headers(width: int, height: int, fps: int, frames: int, samples: int) -> bytes:
    frame_bytes = width * height * 3
    avih = struct.pack("<10I4I", 1_000_000 // fps, (frame_bytes + 2 * SAMPLE_RATE // fps) * fps,
                       0, AVIF_HASINDEX, frames, 0, 2, frame_bytes, width, height, 0, 0, 0, 0)
    vids = struct.pack("<4s4sIHHIIIIIIIIhhhh", b"vids", b"DIB ", 0, 0, 0, 0, 1, fps, 0, frames,
                       frame_bytes, 0xFFFFFFFF, 0, 0, 0, width, height)
    bih = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, frame_bytes, 0, 0, 0, 0)
    auds = struct.pack("<4s4sIHHIIIIIIIIhhhh", b"auds", b"\0\0\0\0", 0, 0, 0, 0, 2,
                       2 * SAMPLE_RATE, 0, samples, 2 * SAMPLE_RATE // fps, 0xFFFFFFFF, 2,
                       0, 0, 0, 0)
    wfx = struct.pack("<HHIIHHH", 1, 1, SAMPLE_RATE, 2 * SAMPLE_RATE, 2, 16, 0)
    return _list(b"hdrl", _chunk(b"avih", avih)
                 + _list(b"strl", _chunk(b"strh", vids) + _chunk(b"strf", bih))
                 + _list(b"strl", _chunk(b"strh", auds) + _chunk(b"strf", wfx)))


def _dib(rgb: bytes, width: int, height: int) -> bytes:
    """Top-down RGB to bottom-up BGR rows (24-bit DIB; our widths keep rows 4-aligned)."""
    stride = width * 3
    bgr = bytearray(len(rgb))
    bgr[0::3], bgr[1::3], bgr[2::3] = rgb[2::3], rgb[1::3], rgb[0::3]
    return b"".join(bytes(bgr[y * stride:(y + 1) * stride]) for y in range(height - 1, -1, -1))


def write_avi(out: BinaryIO, frames: Iterator[bytes], audio: bytes, *, width: int, height: int,
              fps: int, frame_count: int) -> Iterator[int]:
    """Write an AVI, yielding after each frame (for progress). `out` must be seekable."""
    if width * 3 % 4:
        raise ValueError("width * 3 must be a multiple of 4")
    samples = len(audio) // 2
    header = _avi_headers(width, height, fps, frame_count, samples)
    out.write(b"RIFF\0\0\0\0AVI " + header)
    movi_at = out.tell()
    out.write(b"LIST\0\0\0\0movi")
    index: list[bytes] = []
    for n in range(frame_count):
        rgb = next(frames)
        for fourcc, data in ((b"00db", _dib(rgb, width, height)),
                             (b"01wb", audio[2 * (n * SAMPLE_RATE // fps):
                                             2 * ((n + 1) * SAMPLE_RATE // fps)])):
            index.append(struct.pack("<4sIII", fourcc, AVIIF_KEYFRAME,
                                     out.tell() - movi_at - 8, len(data)))
            out.write(_chunk(fourcc, data))
        yield n + 1
    movi_end = out.tell()
    out.write(_chunk(b"idx1", b"".join(index)))
    end = out.tell()
    out.seek(movi_at + 4)
    out.write(struct.pack("<I", movi_end - movi_at - 8))
    out.seek(4)
    out.write(struct.pack("<I", end - 8))
    out.seek(end)
