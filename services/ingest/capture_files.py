"""Which capture files an offline replay reads, and the per-file account it gives.

An operator hands ``ingest sip-pcap`` / ``isup-pcap`` whatever a carrier engineer sent: several
files, a folder of them, an empty file from a probe that recorded nothing. Every file is tried
(one unreadable file must not hide the good ones after it), each gets a line saying what it
gave (frames read, events published, dead letters and skips with their reasons), and the exit
status is non-zero only when a file could not be read at all. A folder is read for its capture
files (by extension, sorted by name), which is what "replay this probe's folder" means; a
folder without any is reported as such.
"""

from __future__ import annotations

import sys
from collections import Counter as Tally
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

from services.ingest.sink import EventSink

#: File name endings read from a folder (tshark reads these formats; .gz it inflates itself).
CAPTURE_SUFFIXES: tuple[str, ...] = (".pcap", ".pcapng", ".cap", ".pcap.gz", ".pcapng.gz",
                                     ".erf", ".snoop")
#: tshark's warning when run as root: noise in an operator's error message.
TSHARK_ROOT_NOISE = ("Running as user", "This could be dangerous")
#: How much of tshark's error output goes into a message (the end says what went wrong).
TSHARK_ERROR_CHARS = 500


def clean_tshark_errors(text: str) -> str:
    """tshark's stderr without the "Running as user root ... dangerous" warning, on one
    line, trimmed to its last few hundred characters."""
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not any(noise in ln for noise in TSHARK_ROOT_NOISE)]
    return " ".join(lines)[-TSHARK_ERROR_CHARS:]


@dataclass(frozen=True, slots=True)
class CaptureInput:
    """A path to read, or why a named path gives nothing to read (``problem``)."""

    path: Path
    problem: str | None = None


def is_capture_name(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in CAPTURE_SUFFIXES)


def expand(names: list[str]) -> list[CaptureInput]:
    """The command line's names -> files to read, in order; a folder becomes its capture
    files; a missing path, an empty file or a folder without captures becomes a problem."""
    out: list[CaptureInput] = []
    for name in names:
        path = Path(name)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and is_capture_name(p))
            if not files:
                out.append(CaptureInput(path, f"folder {path} holds no capture files "
                                              f"({', '.join(CAPTURE_SUFFIXES)})"))
            out.extend(expand([str(p) for p in files]))  # an empty file in it says so too
        elif not path.exists():
            out.append(CaptureInput(path, f"no such capture file: {path}"))
        elif not path.is_file():
            out.append(CaptureInput(path, f"{path} is not a regular file"))
        elif path.stat().st_size == 0:
            out.append(CaptureInput(path, f"{path} is empty (0 bytes): nothing was captured"))
        else:
            out.append(CaptureInput(path))
    return out


@dataclass(slots=True)
class FileReport:
    """What one file gave: sink counts taken before and after it, plus the reader's own."""

    path: Path
    frames: int = 0
    events: Tally[str] = field(default_factory=Tally)
    dead: Tally[str] = field(default_factory=Tally)
    ignored: Tally[str] = field(default_factory=Tally)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def line(self, unit: str) -> str:
        def tally(t: Tally[str]) -> str:
            return f" ({', '.join(f'{k} {v}' for k, v in sorted(t.items()))})" if t else ""

        if self.error is not None:
            text = f"{self.path}: NOT READ: {self.error}"
            if self.frames:
                text += (f" (after {self.frames} {unit}: {sum(self.events.values())} events, "
                         f"{sum(self.dead.values())} dead-lettered)")
            return text
        text = (f"{self.path}: {self.frames} {unit}, {sum(self.events.values())} events "
                f"published{tally(self.events)}, {sum(self.dead.values())} dead-lettered"
                f"{tally(self.dead)}, {sum(self.ignored.values())} skipped{tally(self.ignored)}")
        return "; ".join([text, *self.notes])


def _delta(after: Tally[str], before: Tally[str]) -> Tally[str]:
    return Tally({k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)})


#: Reads one file into the sink, filling the report's frame count and notes (e.g. a hint
#: about SIP on an unexpected port); raises RuntimeError/OSError if it cannot read it all.
FileReader = Callable[[Path, FileReport], None]


def read_all(names: list[str], sink: EventSink, read: FileReader, unit: str,
             out: TextIO | None = None) -> list[FileReport]:
    """Try every file; print one line per file (to ``out``, default stderr) as it is done;
    return the reports."""
    out = out or sys.stderr
    reports = []
    for item in expand(names):
        report = FileReport(item.path)
        reports.append(report)
        if item.problem is not None:
            report.error = item.problem
        else:
            before = (Tally(sink.events), Tally(sink.dead), Tally(sink.ignored))
            try:
                read(item.path, report)
            except (RuntimeError, OSError) as exc:
                report.error = str(exc)
            report.events = _delta(sink.events, before[0])
            report.dead = _delta(sink.dead, before[1])
            report.ignored = _delta(sink.ignored, before[2])
        prefix = "ERROR " if report.error is not None else ""
        print(f"[ingest] {prefix}{report.line(unit)}", file=out, flush=True)
    return reports


def exit_status(reports: list[FileReport]) -> int:
    """1 when any file could not be read at all (or none was named), else 0: a file that
    was read but gave no events is reported in its line, not as a failure."""
    return 1 if not reports or any(r.error is not None for r in reports) else 0
