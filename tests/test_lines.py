"""The line splitter: bytes in any chunking, lines out, capped, never crashing."""

from __future__ import annotations

import random

import pytest

from jobserver.core.lines import LineSplitter, truncation_marker


def split(data: bytes, *, max_line: int = 64, sizes: list[int] | None = None) -> list[str]:
    """All lines of `data` fed in chunks of the given sizes (cycled), then closed."""
    s = LineSplitter(max_line)
    out: list[str] = []
    pos, i = 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)] if sizes else len(data)
        out += s.feed(data[pos:pos + n])
        pos, i = pos + n, i + 1
    return out + s.close()


SAMPLES = [
    b"",
    b"one\ntwo\n",
    b"no newline at the end",
    b"\n\n\n",
    b"crlf\r\nline\r\n",
    b"two crs\r\r\n",
    b"bare \r inside\n",
    "héllo wörld ✓ 😀\nzweite Zeile\n".encode(),
    b"bad \xff\xfe bytes\nhalf a char \xe2\x82\n\xe2\x82\xac euro\n",
    b"x" * 200 + b"\nshort\n" + b"y" * 65 + b"\n" + b"z" * 64 + b"\n",
    ("é" * 100 + "\n").encode(),
]


@pytest.mark.parametrize("data", SAMPLES)
def test_any_chunking_gives_the_same_lines(data: bytes) -> None:
    whole = split(data)
    for size in (1, 2, 3, 5, 7, 64, 65):
        assert split(data, sizes=[size]) == whole, size
    rng = random.Random(7)
    for _ in range(20):
        assert split(data, sizes=[rng.randint(1, 40) for _ in range(10)]) == whole


def test_lines_and_the_last_partial_line() -> None:
    s = LineSplitter(100)
    assert s.feed(b"a\nb") == ["a"]
    assert s.feed(b"c\nd") == ["bc"]
    assert s.close() == ["d"]
    assert s.close() == []
    assert split(b"one\ntwo\n") == ["one", "two"]
    assert split(b"\n\n") == ["", ""]


def test_one_trailing_carriage_return_is_dropped() -> None:
    assert split(b"a\r\nb\r\r\nc\rd\n") == ["a", "b\r", "c\rd"]
    assert split(b"last\r") == ["last"]


def test_a_character_cut_across_reads_is_whole() -> None:
    data = "€uro ✓\n".encode()
    for cut in range(1, len(data)):
        s = LineSplitter(100)
        assert s.feed(data[:cut]) + s.feed(data[cut:]) == ["€uro ✓"]


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert split(b"bad \xff\xfe!\n\xe2\x82\nok\n") == ["bad \ufffd\ufffd!", "\ufffd", "ok"]
    rng = random.Random(1)
    noise = bytes(rng.randrange(256) for _ in range(20000))
    expected = [p.removesuffix(b"\r").decode("utf-8", "replace") for p in noise.split(b"\n")]
    if noise.endswith(b"\n"):
        expected.pop()
    assert split(noise, max_line=100_000) == expected
    assert split(noise, max_line=100_000, sizes=[1, 2, 3, 4096]) == expected


def test_a_long_line_is_capped_with_a_marker() -> None:
    data = b"x" * 1000 + b"\nafter\n"
    for sizes in (None, [1], [7], [100], [999]):
        assert split(data, max_line=64, sizes=sizes) == [
            "x" * 64 + truncation_marker(936), "after"]


def test_a_line_of_exactly_max_line_is_whole() -> None:
    for sizes in (None, [1], [64], [65]):
        assert split(b"y" * 64 + b"\n", max_line=64, sizes=sizes) == ["y" * 64]
        assert split(b"y" * 64 + b"\r\n", max_line=64, sizes=sizes) == ["y" * 64]
        assert split(b"y" * 63 + b"\r\r\n", max_line=64, sizes=sizes) == ["y" * 63 + "\r"]
    assert split(b"y" * 65 + b"\r\n", max_line=64) == ["y" * 64 + truncation_marker(1)]


def test_the_cap_cuts_at_a_character_boundary() -> None:
    data = ("é" * 50 + "\n").encode()  # 100 bytes, 2 per character
    assert split(data, max_line=9) == ["é" * 4 + truncation_marker(92)]
    assert split(data, max_line=9, sizes=[1]) == ["é" * 4 + truncation_marker(92)]
    assert split("😀😀\n".encode(), max_line=5) == ["😀" + truncation_marker(4)]


def test_mixed_long_and_short_lines_in_one_read() -> None:
    data = b"short\n" + b"L" * 300 + b"\n" + "ünïcode\n".encode() + b"s2\r\n"
    assert split(data, max_line=100) == [
        "short", "L" * 100 + truncation_marker(200), "ünïcode", "s2"]
    # Over the cap as a whole, but no line is: the whole-chunk path.
    many = "ä\n".encode() * 200
    assert split(many, max_line=100) == ["ä"] * 200


def test_memory_stays_bounded_by_max_line() -> None:
    s = LineSplitter(1000)
    chunk = b"z" * 65536
    for _ in range(160):  # 10 MiB without a newline
        assert s.feed(chunk) == []
        assert len(s._buf) <= 1000  # what is kept of the line; the rest is only counted
    assert s.feed(b"\n") == ["z" * 1000 + truncation_marker(160 * 65536 - 1000)]


def test_max_line_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_line"):
        LineSplitter(0)
