"""The bundled video pipeline behind the jobs dialect's presets.

    python3 -m jobserver.examples.video_pipeline STEP [options]
    (or python3 path/to/video_pipeline.py STEP [options])

STEP is one of preflight, narration, broll, subtitles, mux: the spec's step
names, one process each, run in order by the job server (a template's `steps`).
Everything is made offline with the standard library: narration is a WAV of
synthesized tone bursts, b-roll is frames drawn in pure Python, subtitles an
.srt, and mux an uncompressed AVI (RGB frames + PCM audio); with FFmpeg on
PATH (`VIDEO_PIPELINE_FFMPEG` names the executable) `balanced` and `high`
quality make an H.264 mp4 instead. `high` needs FFmpeg: without it mux fails
with the spec's FFmpegNotFound error, or reports itself Skipped when
`--allow-skip true`.

Talking back: JSON lines on the fd in JOBSERVER_CONTROL_FD (progress with the
step, an error with code/message/remediation, the final result with
`output.videoPath` and `output.sizeBytes`). Files: deliverables in
JOBSERVER_OUTPUT_DIR (kept), frames and files still being written in
JOBSERVER_WORK_DIR (removed when the job ends). A step whose input is missing
(a retry resumed past the step that made it) rebuilds it: every step is
deterministic in its options.

The legacy body (`--input file|stdin`) is the jobs dialect's
brief/planSpec/voiceSpec/renderSpec document; see docs/dialects/jobs.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

if __package__:
    from . import media
else:  # run by path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import media  # type: ignore[no-redef, import-not-found]

STEPS = ("preflight", "narration", "broll", "subtitles", "mux")
QUALITIES = ("fast", "balanced", "high")
ASPECTS = {"Widescreen16x9": (160, 90), "Vertical9x16": (92, 160), "Square1x1": (120, 120)}
MAX_SECONDS = 60
MAX_FPS = 10
FFMPEG_ENV = "VIDEO_PIPELINE_FFMPEG"
FFMPEG_NOT_FOUND = {
    "code": "FFmpegNotFound",
    "message": "FFmpeg executable not found.",
    "remediation": "Install FFmpeg from Settings → Dependencies",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    topic: str = "Hello YouTube"
    seconds: int = 20
    fps: int = 5
    width: int = 160
    height: int = 90
    quality: str = "balanced"
    allow_skip: bool = False
    voice_rate: float = 1.0
    voice_pitch: float = 1.0
    pace: float = 0.0
    audience: str | None = None
    container: str | None = None  # what a legacy body asked for
    sentences: list[str] = field(default_factory=list)

    @property
    def frames(self) -> int:
        return self.seconds * self.fps

    def script(self) -> list[media.Cue]:
        return media.cues(self.sentences, float(self.seconds))


class Reporter:
    """JSON lines to the job server's control pipe (stderr outside a job)."""

    def __init__(self, step: str) -> None:
        self.step = step
        fd = os.environ.get("JOBSERVER_CONTROL_FD", "")
        self._out: TextIO | None = os.fdopen(int(fd), "w", buffering=1) if fd.isdigit() else None

    def send(self, message: dict[str, Any]) -> None:
        line = json.dumps(message, ensure_ascii=False) + "\n"
        if self._out is None:
            sys.stderr.write(f"[control] {line}")
        else:
            self._out.write(line)

    def progress(self, at: int, of: int, message: str | None = None) -> None:
        body: dict[str, Any] = {"progress": {"at": at, "of": of}, "step": self.step}
        if message:
            body["message"] = message
        self.send(body)

    def error(self, error: dict[str, str]) -> None:
        self.send({"error": {**error, "step": self.step}})


# ---- the plan -----------------------------------------------------------------

def _duration(text: Any) -> int | None:
    match = re.fullmatch(r"(?:(\d+):)?(\d+):(\d+)", str(text or ""))
    if match is None:
        return None
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def _number(value: Any, default: float, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return min(max(float(value), low), high)


def legacy_plan(body: dict[str, Any], base: Plan) -> Plan:
    """The legacy brief/planSpec/voiceSpec/renderSpec body as a plan (bounded to a preview)."""
    brief, plan_spec = body.get("brief") or {}, body.get("planSpec") or {}
    voice, render = body.get("voiceSpec") or {}, body.get("renderSpec") or {}
    topic = str(brief.get("topic") or base.topic)[:200]
    width, height = ASPECTS.get(str(brief.get("aspect")), (base.width, base.height))
    seconds = _duration(plan_spec.get("targetDuration")) or base.seconds
    container = str(render.get("container") or "mp4").lower()
    quality = {"mp4": "high", "avi": "fast"}.get(container, base.quality)
    sentences = [f"Hello! Today: {topic}."]
    if brief.get("audience"):
        sentences.append(f"For {str(brief['audience'])[:80]}.")
    if brief.get("goal"):
        sentences.append(f"Goal: {str(brief['goal'])[:80]}.")
    sentences.append("Made offline by jobserver.")
    return Plan(
        topic=topic, seconds=min(max(seconds, 1), MAX_SECONDS),
        fps=int(_number(render.get("fps"), base.fps, 1, MAX_FPS)), width=width, height=height,
        quality=quality, allow_skip=base.allow_skip, pace=base.pace,
        voice_rate=_number(voice.get("rate"), 1.0, 0.25, 4.0),
        voice_pitch=_number(voice.get("pitch"), 1.0, 0.25, 4.0),
        audience=str(brief["audience"]) if brief.get("audience") else None,
        container=container, sentences=sentences)


def read_input(mode: str) -> dict[str, Any] | None:
    if mode == "none":
        return None
    if mode == "stdin":
        text = sys.stdin.read()
    else:
        name = os.environ.get("JOBSERVER_INPUT_FILE")
        if not name:
            raise SystemExit("video_pipeline: --input file but JOBSERVER_INPUT_FILE is not set")
        text = Path(name).read_text("utf-8")
    body = json.loads(text)
    if not isinstance(body, dict):
        raise SystemExit("video_pipeline: the input document must be a JSON object")
    return body


def make_plan(args: argparse.Namespace) -> tuple[Plan, dict[str, Any] | None]:
    base = Plan(topic=args.topic, seconds=min(max(args.seconds, 1), MAX_SECONDS),
                quality=args.quality, allow_skip=args.allow_skip == "true",
                pace=max(args.pace, 0.0),
                sentences=["Hello, YouTube!", f"This is {args.topic[:80]}.",
                           "Narration, b-roll and subtitles,", "made offline by jobserver."])
    body = read_input(args.input)
    return (legacy_plan(body, base) if body is not None else base), body


# ---- where things live ---------------------------------------------------------

def _dir(env: str) -> Path:
    path = Path(os.environ.get(env) or ".")
    path.mkdir(parents=True, exist_ok=True)
    return path


def narration_path() -> Path:
    return _dir("JOBSERVER_OUTPUT_DIR") / "narration.wav"


def subtitles_path() -> Path:
    return _dir("JOBSERVER_OUTPUT_DIR") / "subtitles.srt"


def frames_path() -> Path:
    return _dir("JOBSERVER_WORK_DIR") / "frames.rgb"


def ffmpeg() -> str | None:
    return shutil.which(os.environ.get(FFMPEG_ENV) or "ffmpeg")


# ---- the steps ----------------------------------------------------------------

def preflight(plan: Plan, body: dict[str, Any] | None, report: Reporter) -> int:
    checks = ["plan", "output directory", "disk space", "ffmpeg"]
    for n, check in enumerate(checks, 1):
        if check == "plan":
            print(f"topic: {plan.topic}")
            print(f"plan: {plan.seconds} s at {plan.fps} fps, {plan.width}x{plan.height}, "
                  f"quality {plan.quality}")
            if body is not None:
                print(f"legacy body: {', '.join(sorted(body))}")
        elif check == "output directory":
            print(f"output: {_dir('JOBSERVER_OUTPUT_DIR').resolve()}")
        elif check == "disk space":
            free = shutil.disk_usage(_dir("JOBSERVER_OUTPUT_DIR")).free
            print(f"free space: {free // 2**20} MiB")
        else:
            found = ffmpeg()
            note = "" if found or plan.quality != "high" else " (quality high needs it: mux " \
                + ("will be skipped)" if plan.allow_skip else "will fail)")
            print(f"ffmpeg: {found or 'not found'}{note}")
        report.progress(n, len(checks), check)
        _pace(plan)
    return 0


def _narration_chunks(plan: Plan, report: Reporter | None) -> Iterator[array[int]]:
    script = plan.script()
    for second in range(plan.seconds):
        yield media.narration_samples(script, second, second + 1, rate=plan.voice_rate,
                                      pitch=plan.voice_pitch)
        if report is not None:
            report.progress(second + 1, plan.seconds)
            _pace(plan)


def _partial(path: Path) -> Path:
    """Where `path` is written before it is complete: the work dir, which the server
    removes when the job ends however it ends, so a cancel leaves no partial file."""
    return _dir("JOBSERVER_WORK_DIR") / f"{path.name}.part"


def _publish(tmp: Path, path: Path) -> None:
    shutil.move(tmp, path)  # a rename when both dirs share a file system


def narration(plan: Plan, report: Reporter | None) -> int:
    path = narration_path()
    tmp = _partial(path)
    samples = media.write_wav(tmp, _narration_chunks(plan, report))
    _publish(tmp, path)
    print(f"narration: {path} ({samples / media.SAMPLE_RATE:g} s, {path.stat().st_size} bytes)")
    return 0


SCENE_COLORS = [((20, 40, 110), (90, 30, 120)), ((10, 90, 80), (20, 40, 60)),
                ((120, 50, 20), (40, 20, 70)), ((30, 30, 30), (70, 70, 90))]


def draw_frame(plan: Plan, n: int, script: list[media.Cue]) -> bytes:
    t = n / plan.fps
    frame = media.Frame(plan.width, plan.height)
    scene = min(int(t * len(SCENE_COLORS) / plan.seconds), len(SCENE_COLORS) - 1)
    top, bottom = SCENE_COLORS[scene]
    for y in range(plan.height):
        mix = y / max(plan.height - 1, 1)
        r, g, b = (int(lo + (hi - lo) * mix) for lo, hi in zip(top, bottom, strict=True))
        frame.rows(y, y + 1, (r, g, b))
    size = plan.height // 5
    x = int((t * plan.width / 4) % (plan.width + size)) - size
    frame.rect(x, plan.height - 2 * size, size, size, (240, 200, 60))
    frame.rect(plan.width - x - size, 19, size // 2, size // 2, (90, 200, 240))
    title = plan.topic if media.text_width(plan.topic, 2) <= plan.width - 8 else "JOBSERVER"
    frame.centered_text(6, title, scale=2, color=(255, 255, 255))
    cue = next((c for c in script if c.start <= t < c.end), script[-1])
    for row, line in enumerate(media.wrap(cue.text, plan.width - 6, 1)[:3]):
        frame.centered_text(plan.height // 2 - 4 + row * 7, line, scale=1, color=(255, 255, 210))
    frame.rect(0, plan.height - 3, int(plan.width * (n + 1) / plan.frames), 3, (255, 60, 60))
    return bytes(frame.pixels)


def broll(plan: Plan, report: Reporter | None) -> int:
    path, script = frames_path(), plan.script()
    tmp = path.with_suffix(".part")
    every = max(plan.frames // 20, 1)
    with tmp.open("wb") as out:
        for n in range(plan.frames):
            out.write(draw_frame(plan, n, script))
            if report is not None and ((n + 1) % every == 0 or n + 1 == plan.frames):
                report.progress(n + 1, plan.frames)
                _pace(plan)
    tmp.replace(path)
    print(f"b-roll: {plan.frames} frames of {plan.width}x{plan.height} in {path.name}")
    return 0


def subtitles(plan: Plan, report: Reporter | None) -> int:
    script = plan.script()
    path = subtitles_path()
    path.write_text(media.srt(script), "utf-8")
    if report is not None:
        for n in range(len(script)):
            report.progress(n + 1, len(script))
            _pace(plan)
    print(f"subtitles: {len(script)} cues in {path}")
    return 0


def _ensure_inputs(plan: Plan) -> None:
    """A resumed attempt starts in a fresh work dir: rebuild what earlier steps made."""
    if not narration_path().exists():
        print("narration.wav is missing (resumed attempt): rebuilding it")
        narration(plan, None)
    if not frames_path().exists():
        print("frames are missing (resumed attempt): rebuilding them")
        broll(plan, None)
    if not subtitles_path().exists():
        subtitles(plan, None)


def mux(plan: Plan, report: Reporter) -> int:
    tool = ffmpeg()
    wants_mp4 = plan.quality == "high" or (plan.quality == "balanced" and tool is not None)
    if wants_mp4 and tool is None:
        if plan.allow_skip:
            print("mux skipped: FFmpeg executable not found (allowSkipUnavailable)",
                  file=sys.stderr)
            report.send({"step": "mux", "status": "skipped"})
            report.send({"result": {
                "message": "Video not rendered: the mux step was skipped (FFmpeg not found).",
                "output": {"videoPath": None, "sizeBytes": 0, "skippedSteps": ["mux"],
                           "audioPath": str(narration_path().resolve()),
                           "subtitlesPath": str(subtitles_path().resolve())}}})
            return 0
        report.error(FFMPEG_NOT_FOUND)
        print(f"error: {FFMPEG_NOT_FOUND['message']} {FFMPEG_NOT_FOUND['remediation']}",
              file=sys.stderr)
        return 1
    _ensure_inputs(plan)
    out_dir = _dir("JOBSERVER_OUTPUT_DIR")
    if wants_mp4 and tool is not None:
        video = out_dir / "video.mp4"
        code = _mux_mp4(tool, plan, video, report)
        if code:
            return code
    else:
        video = out_dir / "video.avi"
        _mux_avi(plan, video, report)
    size = video.stat().st_size
    kind = "mp4" if video.suffix == ".mp4" else "uncompressed AVI"
    report.send({"result": {
        "message": f"Rendered a {plan.seconds} s {kind} ({plan.width}x{plan.height}, "
                   f"{plan.fps} fps).",
        "output": {"videoPath": str(video.resolve()), "sizeBytes": size}}})
    print(f"video: {video.resolve()} ({size} bytes)")
    return 0


def _mux_avi(plan: Plan, video: Path, report: Reporter) -> None:
    audio = media.read_wav(narration_path())
    frame_bytes = plan.width * plan.height * 3

    def frames() -> Iterator[bytes]:
        with frames_path().open("rb") as f:
            while chunk := f.read(frame_bytes):
                yield chunk

    tmp = _partial(video)
    every = max(plan.frames // 20, 1)
    with tmp.open("wb") as out:
        for done in media.write_avi(out, frames(), audio, width=plan.width, height=plan.height,
                                    fps=plan.fps, frame_count=plan.frames):
            if done % every == 0 or done == plan.frames:
                report.progress(done, plan.frames)
                _pace(plan)
    _publish(tmp, video)


def _mux_mp4(tool: str, plan: Plan, video: Path, report: Reporter) -> int:
    argv = [tool, "-hide_banner", "-loglevel", "error", "-nostats", "-progress", "pipe:1", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{plan.width}x{plan.height}",
            "-r", str(plan.fps), "-i", str(frames_path()), "-i", str(narration_path()),
            "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-shortest", "-movflags", "+faststart", "-f", "mp4",
            str(_partial(video))]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                          text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            key, _, value = line.strip().partition("=")
            if key == "frame" and value.isdigit():
                report.progress(min(int(value), plan.frames), plan.frames)
    if proc.returncode != 0:
        report.error({"code": "FFmpegFailed",
                      "message": f"FFmpeg exited with code {proc.returncode}.",
                      "remediation": "See the job's log; check that FFmpeg has libx264."})
        return 1
    _publish(_partial(video), video)
    return 0


def _pace(plan: Plan) -> None:
    if plan.pace:
        time.sleep(plan.pace)


# ---- the command ----------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m jobserver.examples.video_pipeline",
                                description="One step of the bundled offline video pipeline.")
    p.add_argument("step", choices=STEPS)
    p.add_argument("--quality", choices=QUALITIES, default="balanced")
    p.add_argument("--allow-skip", choices=("true", "false"), default="false")
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--topic", default="Hello YouTube")
    p.add_argument("--pace", type=float, default=0.0, help="seconds to wait per progress tick")
    p.add_argument("--input", choices=("none", "file", "stdin"), default="none",
                   help="read a legacy body from JOBSERVER_INPUT_FILE or stdin")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    plan, body = make_plan(args)
    report = Reporter(args.step)
    match args.step:
        case "preflight":
            return preflight(plan, body, report)
        case "narration":
            return narration(plan, report)
        case "broll":
            return broll(plan, report)
        case "subtitles":
            return subtitles(plan, report)
        case _:
            return mux(plan, report)


if __name__ == "__main__":
    sys.exit(main())
