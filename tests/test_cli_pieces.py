"""The command line's pieces on their own: param typing, the login file and its
precedence, exit codes from a job, tables, bars and durations."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from jobserver.cli.client import EXIT_USAGE, CliError
from jobserver.cli.follow import job_exit_code
from jobserver.cli.output import StatusLine, Style, bar, duration, table, wants_colour
from jobserver.cli.params import build, convert
from jobserver.cli.settings import DEFAULT_URL, read_login, resolve, write_login

TEMPLATE = {"name": "t", "params": [
    {"name": "n", "type": "int"}, {"name": "x", "type": "float"},
    {"name": "b", "type": "bool"}, {"name": "s", "type": "string"},
    {"name": "c", "type": "choice", "choices": ["red", "blue"]}]}


def test_words_are_typed_by_the_declared_type() -> None:
    params = build(TEMPLATE, ["n=60", "x=60", "b=yes", "s=60", "c=red", "s=a=b"])
    assert params == {"n": 60, "x": 60.0, "b": True, "s": "a=b", "c": "red"}
    assert type(params["n"]) is int and type(params["x"]) is float
    assert convert({"name": "b", "type": "bool"}, "OFF") is False
    assert convert({"name": "s"}, "") == ""  # a string param with no type is a string


@pytest.mark.parametrize(("word", "message"), [
    ("n=6.5", "bad param n: '6.5' is not an integer"),
    ("x=nan", "bad param x: 'nan' is not a number"),
    ("x=inf", "bad param x: 'inf' is not a number"),
    ("b=maybe", "bad param b: 'maybe' is not true or false"),
    ("c=green", "bad param c: 'green' is not one of red, blue"),
    ("z=1", "bad param z: template t has no such param (its params: n, x, b, s, c)"),
    ("=1", "write it as name=value"),
])
def test_a_word_that_does_not_fit_names_its_param(word: str, message: str) -> None:
    with pytest.raises(CliError) as caught:
        build(TEMPLATE, [word])
    assert message in caught.value.message and caught.value.exit_code == EXIT_USAGE


def test_the_param_file_keeps_json_types_and_words_win(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text('{"n": 1, "s": "file", "extra": [1]}')
    assert build(TEMPLATE, ["s=word"], param_file=str(path)) == \
        {"n": 1, "s": "word", "extra": [1]}  # the server judges what the file says
    path.write_text("[1, 2]")
    with pytest.raises(CliError, match="must hold a JSON object"):
        build(TEMPLATE, [], param_file=str(path))
    with pytest.raises(CliError, match="cannot read --param-file"):
        build(TEMPLATE, [], param_file=str(tmp_path / "none.json"))


def test_login_file_is_0600_and_the_environment_wins(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert resolve(None, env).url == DEFAULT_URL and resolve(None, env).token is None
    path = tmp_path / "jobserver" / "config.toml"
    write_login(path, url="http://h:1/", token='t"o\\k')
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_login(path) == {"url": "http://h:1/", "token": 't"o\\k'}
    assert resolve(None, env).url == "http://h:1" and resolve(None, env).token == 't"o\\k'
    both = {**env, "JOBSERVER_URL": "http://e:2", "JOBSERVER_TOKEN": "envtok"}
    target = resolve(None, both)
    assert (target.url, target.token, target.token_source) == \
        ("http://e:2", "envtok", "JOBSERVER_TOKEN")
    assert resolve("http://flag:3", both).url == "http://flag:3"
    assert resolve("flag:3", both).url == "http://flag:3"
    assert resolve(None, {**env, "JOBSERVER_URL": "e:2/"}).url == "http://e:2"
    assert list(path.parent.iterdir()) == [path]  # no temporary file left


@pytest.mark.parametrize(("job", "code"), [
    ({"status": "SUCCEEDED", "exit_code": 0}, 0),
    ({"status": "FAILED", "exit_code": 3}, 3),
    ({"status": "FAILED", "exit_code": 300}, 255),
    ({"status": "FAILED", "exit_code": -9}, 137),
    ({"status": "FAILED", "exit_code": None}, 1),
    ({"status": "CANCELLED", "exit_code": -100}, 130),
])
def test_a_waited_for_job_gives_its_exit_code(job: dict[str, object], code: int) -> None:
    assert job_exit_code(job) == code


def test_tables_bars_and_durations() -> None:
    rows = [["a", "\x1b[32mSUCCEEDED\x1b[0m"], ["bbb", "x"]]
    assert table(["H", "STATUS"], rows, aligned=True).splitlines() == [
        "H    STATUS", "a    \x1b[32mSUCCEEDED\x1b[0m", "bbb  x"]  # colour takes no width
    assert table(["H"], [["a", "b"]], aligned=False) == "a\tb\n"
    assert bar(0.0, 8) == " " * 8 and bar(1.0, 8) == "█" * 8 and bar(0.5, 8) == "████    "
    assert bar(1 / 16, 8) == "▌       "
    assert [duration(s) for s in (None, 0.25, 75, 3 * 3600 + 120)] == \
        ["-", "0.2s", "1m15s", "3h02m"]


def test_colour_only_on_a_terminal_and_never_with_no_color() -> None:
    pipe = io.StringIO()
    assert not wants_colour("auto", pipe, {})
    assert wants_colour("always", pipe, {"NO_COLOR": "1"})
    assert not wants_colour("never", pipe, {})

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert wants_colour("auto", Tty(), {}) and not wants_colour("auto", Tty(), {"NO_COLOR": "1"})
    assert not wants_colour("auto", Tty(), {"TERM": "dumb"})


def test_the_status_line_steps_aside_for_the_jobs_lines() -> None:
    out, err = io.StringIO(), io.StringIO()
    ui = StatusLine(out, err, Style(False), enabled=True)
    ui.label = "abc t"
    ui.update(status="RUNNING", progress={"at": 1, "of": 4}, message="quarter")
    assert err.getvalue().endswith("abc t RUNNING ██████                   1/4 25% quarter")
    ui.write(err, "a job's stderr line\n")
    ui.write(out, "a job's stdout line\n")
    assert err.getvalue().endswith("\r\x1b[2Ka job's stderr line\n")  # erased once, then the line
    assert out.getvalue() == "a job's stdout line\n"
    off = StatusLine(out, err, Style(False), enabled=False)
    off.update(status="RUNNING")
    off.write(out, "x\n")
    assert "RUNNING" not in err.getvalue()[-30:] and out.getvalue().endswith("x\n")
