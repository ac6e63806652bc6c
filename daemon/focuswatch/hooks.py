"""Event hooks: commands the acquisition side runs when focuswatch finds something.

Smart microscopy: a lab's acquisition script pauses, or asks for a refocus, when a
tile comes out of focus, a whole section fails, or the microscope stops writing.
``[hooks]`` names a command per event (``tile_out_of_focus``, ``section_failing``,
``microscope_stalled``), each ``[program, arg, ...]``:

- run without a shell, each argument formatted on its own from the event's fields
  (``{section}``, ``{tile}``, ... ``config.HOOK_FIELDS``): a tile name is one argument,
  whatever it holds (``; rm -rf /`` included), never a command;
- the event as one JSON object on stdin;
- at most ``hooks.timeout_s`` (then killed), its exit status and output logged
  (``hook_ran``, ``hook_failed``, ``hook_timed_out``);
- one at a time, in a thread of its own: a slow or hanging hook never delays scoring;
  past ``QUEUE_SIZE`` events waiting, new ones are dropped with a log line.

A section-wide failure is one ``section_failing`` event for the section, not one
``tile_out_of_focus`` per tile. The stall is read from the alarms the alert sink keeps
in the ledger (``focuswatch.alarms``): one event per episode.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import queue
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping

import structlog

from focuswatch import alarms
from focuswatch.config import HOOK_FIELDS, HooksConfig
from focuswatch.ledger import Ledger
from focuswatch.policy import SECTION_WIDE
from focuswatch.text import printable
from focuswatch.verdict import VerdictRecord, format_score

__all__ = ["QUEUE_SIZE", "HookSink", "build_sink", "run_hook"]

log = structlog.get_logger("focuswatch.hooks")

#: Events waiting for their hook at most; more are dropped (and said so).
QUEUE_SIZE = 64
# How often the stall alarm is looked for, and how much of a hook's output is logged.
_ALARM_EVERY_S = 5.0
_OUTPUT_CHARS = 2000
# A stop waits this long for the hook running now before leaving it to its time limit.
_STOP_WAIT_S = 5.0

_Event = tuple[str, dict[str, str]]
_BLANK = dict.fromkeys(HOOK_FIELDS, "")


class HookSink:
    """Turns verdicts and the stall alarm into hook runs (a sink of the service)."""

    def __init__(
        self,
        hcfg: HooksConfig,
        ledger: Ledger,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cfg = hcfg
        self._ledger = ledger
        self._clock = clock
        self._commands: dict[str, list[str]] = {
            "tile_out_of_focus": hcfg.tile_out_of_focus,
            "section_failing": hcfg.section_failing,
            "microscope_stalled": hcfg.microscope_stalled,
        }
        self._queue: queue.Queue[_Event | None] = queue.Queue(QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._told_tiles: set[int] = set()
        self._told_sections: set[str] = set()
        self._stall_since: float | None = None
        self._next_alarm_check = 0.0
        self._closed = threading.Event()

    # -- the sink protocol -------------------------------------------------------------

    def start(self) -> None:
        # A stall that began before a restart was told then: not again for that episode.
        stall = self._stall()
        self._stall_since = None if stall is None else stall.since
        self._thread = threading.Thread(target=self._run, name="focuswatch-hooks", daemon=True)
        self._thread.start()

    def _stall(self) -> alarms.Alarm | None:
        meta = self._ledger.get_meta(alarms.META_KEY)
        found = alarms.from_meta(None if meta is None else meta[0])
        return next((a for a in found if a.name is alarms.AlarmName.STALL), None)

    def on_verdict(self, record: VerdictRecord) -> None:
        kind = record.verdict.kind
        if not kind.needs_retake:
            return
        fields = _fields(record)
        if record.verdict.reason.startswith(SECTION_WIDE):
            section = record.section or ""
            if section not in self._told_sections:
                self._told_sections.add(section)
                self._offer("section_failing", fields | {"tile": "", "path": "", "position": ""})
        elif record.version_id not in self._told_tiles:
            self._told_tiles.add(record.version_id)
            self._offer("tile_out_of_focus", fields)

    def tick(self, now: float) -> None:
        if not self._commands["microscope_stalled"] or now < self._next_alarm_check:
            return
        self._next_alarm_check = now + _ALARM_EVERY_S
        stall = self._stall()
        if stall is None:
            self._stall_since = None
            return
        if stall.since != self._stall_since:
            self._stall_since = stall.since
            self._offer("microscope_stalled", {"reason": stall.line})

    def close(self) -> None:
        """No hook starts after this; the one running now gets ``_STOP_WAIT_S``."""
        self._closed.set()
        thread, self._thread = self._thread, None
        if thread is None:
            return
        with contextlib.suppress(queue.Full):  # wakes a waiting thread at once
            self._queue.put_nowait(None)
        thread.join(_STOP_WAIT_S)

    # -- running -----------------------------------------------------------------------

    def _offer(self, event: str, fields: dict[str, str]) -> None:
        if not self._commands[event] or self._closed.is_set():
            return
        at = dt.datetime.fromtimestamp(self._clock(), dt.UTC).isoformat()
        try:  # every field a template may name is there, empty where the event has none
            self._queue.put_nowait((event, _BLANK | fields | {"event": event, "at": at}))
        except queue.Full:
            log.warning("hook_dropped", hook_event=event, reason=f"{QUEUE_SIZE} events waiting")

    def _run(self) -> None:
        while not self._closed.is_set():
            item = self._queue.get()
            if item is None or self._closed.is_set():
                return
            event, fields = item
            try:
                run_hook(self._commands[event], fields, timeout_s=self._cfg.timeout_s)
            except Exception as exc:  # a hook never takes the service down
                log.error("hook_failed", hook_event=event, error=repr(exc))


def run_hook(command: list[str], fields: Mapping[str, str], *, timeout_s: float) -> int | None:
    """Run one hook; its exit status (None: it did not run, or ran out of time).

    In a session of its own, its output to a file: a program that leaves a child
    running in the background is done when it exits (the child keeps no pipe of ours
    open), and one that runs out of time is killed with all it started.
    """
    argv = [arg.format_map(fields) for arg in command]
    event = fields.get("event", "")
    stdin = json.dumps(dict(fields), ensure_ascii=True).encode("ascii")
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:  # no such program, not executable
            log.error(
                "hook_failed", hook_event=event, program=printable(argv[0]), error=exc.strerror
            )
            return None
        with contextlib.suppress(OSError):  # a hook that does not read its stdin
            assert proc.stdin is not None
            proc.stdin.write(stdin)
            proc.stdin.close()
        try:
            status = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            log.error(
                "hook_timed_out", hook_event=event, program=printable(argv[0]), after_s=timeout_s
            )
            return None
        size = out.seek(0, os.SEEK_END)
        out.seek(max(0, size - 4 * _OUTPUT_CHARS))
        output = out.read().decode("utf-8", "replace")[-_OUTPUT_CHARS:]
    level = "info" if status == 0 else "warning"
    getattr(log, level)(
        "hook_ran",
        hook_event=event,
        program=printable(argv[0]),
        exit_status=status,
        output=printable(output.strip()),
    )
    return status


def _fields(record: VerdictRecord) -> dict[str, str]:
    return {
        "section": record.section or "",
        "tile": record.tile_name,
        "path": record.path,
        "position": record.position,
        "verdict": str(record.verdict.kind),
        "score": "" if record.score is None else format_score(record.score),
        "reason": record.verdict.reason,
    }


def build_sink(
    hcfg: HooksConfig, ledger: Ledger, *, clock: Callable[[], float] = time.time
) -> HookSink | None:
    """The hook sink, or None when no hook is configured."""
    if not (hcfg.tile_out_of_focus or hcfg.section_failing or hcfg.microscope_stalled):
        return None
    return HookSink(hcfg, ledger, clock=clock)
