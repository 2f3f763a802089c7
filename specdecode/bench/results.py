"""The benchmark's out folder: `run.json` (the settings the results were measured under, the machine's key
among them, and the commits of the code that measured them) and
`results.jsonl` (one line per finished question x method, appended as they come).

A line is written in one call and flushed; a run killed mid-line leaves a partial last line, which
the next open drops, so the file is always a list of whole records. Reopening with other settings
is refused: results measured under different settings must never be mixed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpecDecodeError
from ..files import write_atomic

FORMAT_VERSION = 1
SETTINGS_FILE = "run.json"
RESULTS_FILE = "results.jsonl"


def ids_hash(token_ids_per_turn) -> str:
    """A short digest of the generated token ids of every turn."""
    text = json.dumps([list(turn) for turn in token_ids_per_turn], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class ResultsFolder:
    """An opened out folder: its settings and the records so far."""

    path: Path
    settings: dict
    records: list[dict]

    @classmethod
    def open(cls, path: str | Path, settings: dict, *, fresh: bool = False, commit: str | None = None
             ) -> ResultsFolder:
        """Open (or create) `path` for results measured under `settings`; `fresh` deletes old results.
        `commit` (the code that measures now) is added to run.json's `commits` when it is new there."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise SpecDecodeError(f"--out {path} is a file; pass a folder for the benchmark's results.")
        settings_path = path / SETTINGS_FILE
        if fresh and settings_path.exists():
            for name in (SETTINGS_FILE, RESULTS_FILE):
                (path / name).unlink(missing_ok=True)
        if settings_path.exists():
            _check_same_settings(path, _read_settings(settings_path), settings)
            document = json.loads(settings_path.read_text(encoding="utf-8"))
            if commit is not None and commit not in document.get("commits", []):
                document["commits"] = [*document.get("commits", []), commit]
                write_atomic(settings_path, json.dumps(document, indent=2))
        elif (path / RESULTS_FILE).exists():
            raise SpecDecodeError(f"{path} holds {RESULTS_FILE} without {SETTINGS_FILE}, so its settings are "
                                  "unknown; use another --out, or pass --fresh to delete those results.")
        else:
            path.mkdir(parents=True, exist_ok=True)
            document = {"format": FORMAT_VERSION, "settings": settings, "commits": [commit] if commit else []}
            write_atomic(settings_path, json.dumps(document, indent=2))
        return cls(path, settings, _read_records(path / RESULTS_FILE))

    def done(self) -> set[tuple[str, str]]:
        """(question key, method) pairs already measured."""
        return {(r["question_id"], r["method"]) for r in self.records}

    def find(self, question_key: str, method: str) -> dict | None:
        return next((r for r in self.records if r["question_id"] == question_key and r["method"] == method), None)

    def append(self, record: dict) -> None:
        """Add one record: one write of a whole line, flushed to disk before returning."""
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with (self.path / RESULTS_FILE).open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)

    def write_text(self, name: str, text: str) -> None:
        write_atomic(self.path / name, text)


def recorded_settings(path: str | Path) -> dict | None:
    """The settings an existing out folder's results were measured under (None: no such folder yet)."""
    settings_path = Path(path) / SETTINGS_FILE
    return _read_settings(settings_path) if settings_path.is_file() else None


def _read_settings(path: Path) -> dict:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        return document["settings"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        raise SpecDecodeError(f"{path} is unreadable; use another --out, or pass --fresh to start over.") from None


def _check_same_settings(folder: Path, old: dict, new: dict) -> None:
    differing = [key for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    if differing:
        details = "; ".join(f"{key}: {old.get(key)!r} there, {new.get(key)!r} now" for key in differing)
        raise SpecDecodeError(
            f"{folder} holds results measured with other settings ({details}); results must not be mixed. "
            "Use another --out, or pass --fresh to delete the old results."
        )


def _read_records(path: Path) -> list[dict]:
    """Every whole line of a results file; a partial last line (a killed run) is cut off the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)
    records = []
    for number, line in enumerate(data[:end].decode("utf-8").splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise SpecDecodeError(f"{path}, line {number} is not valid JSON; the file was edited or damaged. "
                                      "Delete that line, or pass --fresh to start over.") from None
    return records



