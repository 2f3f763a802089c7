"""Spec-Bench questions: `question.jsonl`, one JSON record per line:
`{"question_id": int | str, "category": str, "turns": [str, ...], "reference": [...]?, "images": [...]?}`;
`images` (paths relative to the file's folder) go with the first turn, for a vision-language target."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpecDecodeError
from ..files import write_atomic


@dataclass(frozen=True)
class Question:
    question_id: int | str
    category: str
    turns: tuple[str, ...]  # user messages, in order; turn 2 follows the model's own answer to turn 1
    reference: tuple | None = None
    images: tuple[Path, ...] = ()  # shown with the first turn (a captioning question)

    @property
    def key(self) -> str:
        """The question's id as results files store it."""
        return str(self.question_id)


def read_questions(path: str | Path) -> list[Question]:
    """Every record of a question.jsonl file, in file order; a malformed line is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise SpecDecodeError(f"question file {path} does not exist; pass the path of a Spec-Bench question.jsonl.")
    questions: list[Question] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            question = _parse_record(line, f"{path}, line {number}", path.parent)
            if question.key in seen:
                raise SpecDecodeError(f"{path}, line {number}: question_id {question.question_id!r} appears twice.")
            seen.add(question.key)
            questions.append(question)
    if not questions:
        raise SpecDecodeError(f"question file {path} holds no questions.")
    return questions


def _parse_record(line: str, where: str, folder: Path) -> Question:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise SpecDecodeError(f"{where} is not valid JSON ({e.msg} at column {e.colno}).") from None
    if not isinstance(record, dict):
        raise SpecDecodeError(f"{where}: expected a JSON object with question_id, category and turns.")
    missing = [key for key in ("question_id", "category", "turns") if key not in record]
    if missing:
        raise SpecDecodeError(f"{where}: the record lacks {', '.join(missing)}.")
    turns = record["turns"]
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
        raise SpecDecodeError(f"{where}: 'turns' must be a non-empty list of non-empty strings.")
    if not isinstance(record["category"], str) or not record["category"]:
        raise SpecDecodeError(f"{where}: 'category' must be a non-empty string.")
    if not isinstance(record["question_id"], (int, str)) or isinstance(record["question_id"], bool):
        raise SpecDecodeError(f"{where}: 'question_id' must be a number or a string.")
    reference = record.get("reference")
    images = record.get("images", [])
    if not isinstance(images, list) or not all(isinstance(i, str) and i for i in images):
        raise SpecDecodeError(f"{where}: 'images' must be a list of image paths (relative to the file's folder).")
    missing = [i for i in images if not (folder / i).is_file()]
    if missing:
        raise SpecDecodeError(f"{where}: no such image file {folder / missing[0]}; rebuild the suite or fix the path.")
    return Question(record["question_id"], record["category"], tuple(turns),
                    tuple(reference) if isinstance(reference, list) else None, tuple(folder / i for i in images))


def select_questions(questions: Sequence[Question], categories: Sequence[str] | None = None,
                     limit_per_category: int | None = None) -> list[Question]:
    """The first `limit_per_category` questions of each chosen category, in file order."""
    known = list(dict.fromkeys(q.category for q in questions))
    if categories:
        unknown = [c for c in categories if c not in known]
        if unknown:
            raise SpecDecodeError(f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
                                  f"this question file has: {', '.join(known)}.")
    if limit_per_category is not None and limit_per_category < 1:
        raise SpecDecodeError(f"--limit-per-category must be >= 1 (omit it for every question), "
                              f"got {limit_per_category}.")
    chosen = set(categories or known)
    taken: dict[str, int] = {}
    selected = []
    for q in questions:
        if q.category in chosen and (limit_per_category is None or taken.get(q.category, 0) < limit_per_category):
            taken[q.category] = taken.get(q.category, 0) + 1
            selected.append(q)
    return selected


def write_questions(records: Sequence[dict], path: str | Path) -> Path:
    """A question file: one JSON line per record, written whole or not at all (its folder made if missing)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path
