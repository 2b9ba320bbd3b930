"""Reading the landing folder: which files hold events, and their lines as bytes."""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

LINE_SUFFIXES = (".ndjson", ".jsonl", ".ndjson.gz", ".jsonl.gz")
# Snowplow enriched events as a warehouse or loader writes them: a header row, then one event
# per row, comma- or tab-separated.
TABLE_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz")
SUFFIXES = LINE_SUFFIXES + TABLE_SUFFIXES
GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
_DATE_IN_PATH = re.compile(r"(\d{4}-\d{2}-\d{2})")


@dataclass(frozen=True)
class LandedFile:
    """A landing file, named relative to the landing folder so the name survives a move."""

    path: Path
    name: str

    @property
    def landed_on(self) -> date:
        """The day a file belongs to when a line has no time of its own.

        Collectors write one folder (or file name) per day, so a date in the path is the best
        guess; otherwise the file's modification day in UTC.
        """
        for match in reversed(_DATE_IN_PATH.findall(self.name)):
            try:
                return date.fromisoformat(match)
            except ValueError:
                continue
        return datetime.fromtimestamp(self.path.stat().st_mtime, tz=UTC).date()


class UnreadableFile(Exception):
    """A file whose bytes cannot be read to the end, such as a truncated gzip."""


def is_table_file(name: str) -> bool:
    """Whether a landing file holds a table with a header (Snowplow) rather than lines."""
    return name.lower().endswith(TABLE_SUFFIXES)


def landing_files(landing_dir: Path) -> list[LandedFile]:
    """Every event file under the landing folder, in a stable order."""
    if not landing_dir.is_dir():
        return []
    files = [
        path for path in landing_dir.rglob("*")
        if path.is_file() and path.name.lower().endswith(SUFFIXES)
    ]
    return [LandedFile(path, _name(path.relative_to(landing_dir).as_posix()))
            for path in sorted(files)]


def _name(relative: str) -> str:
    """The name the manifest keeps: a path's bytes that are not UTF-8 (Python holds them as
    lone surrogates, which DuckDB refuses) written as `\\xNN`, the same way every time."""
    return relative.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def read_lines(landed: LandedFile) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, bytes without the line ending) for every line of a file.

    The whole file is read before the first line is given, so that a file that breaks
    part-way yields nothing rather than half its rows.
    """
    try:
        data = landed.path.read_bytes()
        # A file named .gz that is not gzip (a collector that forgot to compress) is read as
        # it is rather than lost.
        if landed.name.lower().endswith(".gz") and data[:2] == GZIP_MAGIC:
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as error:
        raise UnreadableFile(f"{type(error).__name__}: {error}") from error
    lines = data.removeprefix(UTF8_BOM).split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for number, line in enumerate(lines, start=1):
        yield number, line[:-1] if line.endswith(b"\r") else line
