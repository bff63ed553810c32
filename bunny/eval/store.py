"""Resumable answering: every answer is kept as soon as it is made, so a run that dies at question
9,000 of 10,000 answers only the last 1,000 when it is started again, with any batch size or number
of chunks, and writes the same answer file as a run that never stopped.

Answers are kept in a progress folder beside the answer file (see `progress_dir`): one append-only
part file per process,
each starting with a header line holding the run's fingerprint (the generator, the question file,
the weights, the template and the generation settings), then one `{"key", "text"}` line per answer.
A row's key is its position in the question file plus a hash of its question and prompt, never the
question id alone (MME and TextVQA repeat ids). Answers from a run with another fingerprint are
refused: they would silently mix two models or two settings in one file.

With greedy decoding (`--temperature 0`) a resumed run's file is byte-identical to an uninterrupted
one; with sampling each answer is still drawn once, but the draws differ from another run's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict
from typing import Any, Callable, Sequence

from bunny.eval.answering import LoadedModel, Prompt, Settings, answer_prompts, load

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".model", ".txt")
CHUNK_FILE = re.compile(r"\d+_\d+\.jsonl")  # the chunk answer files of the multi-GPU scripts
SAMPLE_BYTES = 1 << 20  # bytes hashed from each end of a weight file: quick, and changes with the weights


class FingerprintMismatch(ValueError):
    """Kept answers that another run made."""


def digest(value: Any) -> str:
    """A short stable hash of a JSON-able value."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()[:16]


def row_key(row: Any, question: Any, prompt: str) -> str:
    return f"{row}:{digest([question, prompt])}"


def file_digest(path: str, whole: bool = True) -> str:
    """sha256 of a file (or, with `whole=False`, of its size and first and last megabyte)."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        if whole or os.path.getsize(path) <= 2 * SAMPLE_BYTES:
            for block in iter(lambda: f.read(SAMPLE_BYTES), b""):
                sha.update(block)
        else:
            sha.update(str(os.path.getsize(path)).encode())
            sha.update(f.read(SAMPLE_BYTES))
            f.seek(-SAMPLE_BYTES, os.SEEK_END)
            sha.update(f.read(SAMPLE_BYTES))
    return sha.hexdigest()[:16]


def weights_identity(path: str | None) -> Any:
    """What identifies a checkpoint: for a local folder, its config and weight files (names and hashes);
    for a hub id, the id."""
    if path is None:
        return None
    if not os.path.isdir(path):
        return {"hub_id": path}
    files = sorted(
        name for name in os.listdir(path) if name.endswith(WEIGHT_SUFFIXES) and os.path.isfile(os.path.join(path, name))
    )
    return {name: file_digest(os.path.join(path, name), whole=name.endswith(".json")) for name in files}


def tree_digest(path: str) -> str:
    """The hash of a question file, or of a dataset folder's file names and sizes."""
    if os.path.isfile(path):
        return file_digest(path)
    listing = []
    for root, _, names in sorted(os.walk(path)):
        listing += [(os.path.relpath(os.path.join(root, n), path), os.path.getsize(os.path.join(root, n))) for n in sorted(names)]
    return digest(listing)


def fingerprint(generator: str, questions: str, model_path: str, model_base: str | None, settings: Settings) -> dict[str, Any]:
    """What must be equal for two runs' answers to belong in one file."""
    return {
        "generator": generator,
        "questions": tree_digest(questions),
        "model": weights_identity(model_path),
        "model_base": weights_identity(model_base),
        "settings": asdict(settings),
    }


def progress_dir(answers_file: str) -> str:
    """Where a run's answers are kept while it runs: `.progress-<name>/` beside the answer file, or, for
    the chunk files `<chunks>_<index>.jsonl` of a multi-process run, `.progress/`, shared by all the chunk
    files of that folder whatever their number, so that a rerun with another number of chunks resumes."""
    folder, name = os.path.split(os.path.abspath(answers_file))
    return os.path.join(folder, ".progress" if CHUNK_FILE.fullmatch(name) else f".progress-{name}")


class AnswerStore:
    """The kept answers of one run: read from every part file in the folder, appended to this process's."""

    def __init__(self, directory: str, header: dict[str, Any], part: str = "part") -> None:
        self.directory = directory
        self.header = header
        self.path = os.path.join(directory, f"{part}.jsonl")
        self._file: Any = None

    def load(self) -> dict[str, str]:
        """{key: answer} of every kept answer; `FingerprintMismatch` if any part was made by another run."""
        kept: dict[str, str] = {}
        if not os.path.isdir(self.directory):
            return kept
        for name in sorted(os.listdir(self.directory)):
            if name.endswith(".jsonl"):
                kept.update(self._read_part(os.path.join(self.directory, name)))
        return kept

    def _read_part(self, path: str) -> dict[str, str]:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        if not lines[0]:
            return {}
        try:
            header = json.loads(lines[0])
        except json.JSONDecodeError:
            raise ValueError(f"{path}: the first line is not a run header; delete {self.directory} to start over") from None
        if header != self.header:
            changed = sorted(key for key in set(header) | set(self.header) if header.get(key) != self.header.get(key))
            raise FingerprintMismatch(
                f"the answers kept in {self.directory} were made by another run (its {', '.join(changed)} differ); "
                f"write the answers elsewhere, or delete that folder to start over"
            )
        kept = {}
        for line in lines[1:]:
            try:
                row = json.loads(line)
                kept[row["key"]] = row["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line a crash cut short (or the empty line that ends it): that row is answered again
        return kept

    def append(self, key: str, text: str) -> None:
        """Keep one answer now (flushed: a killed process loses at most the answer it was writing)."""
        if self._file is None:
            os.makedirs(self.directory, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
            if self._file.tell() == 0:
                self._file.write(json.dumps(self.header, sort_keys=True) + "\n")
            else:
                self._file.write("\n")  # ends a line a crash may have cut short; empty lines are skipped
        self._file.write(json.dumps({"key": key, "text": text}, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def answer_keyed(
    rows: Sequence[tuple[str, Prompt]],
    load: Callable[[], LoadedModel],
    settings: Settings,
    store: AnswerStore,
    batch_size: int = 1,
) -> list[str]:
    """The answer of every (key, prompt) row: the kept ones, and the others generated (the model is loaded
    only if some are missing) and kept as they come."""
    kept = store.load()
    todo = [(key, prompt) for key, prompt in rows if key not in kept]
    if todo:
        try:
            for (key, _), text in zip(todo, answer_prompts([p for _, p in todo], load(), settings, batch_size)):
                store.append(key, text)
                kept[key] = text
        finally:
            store.close()
    return [kept[key] for key, _ in rows]


def store_for(args: Any, generator: str, questions: str, settings: Settings, answers_file: str | None = None) -> AnswerStore:
    """The store of a generator run, from its flags: the answers file (or `answers_file`), the chunk and the
    model flags."""
    chunks, chunk_idx = getattr(args, "num_chunks", 1), getattr(args, "chunk_idx", 0)
    header = fingerprint(generator, questions, args.model_path, args.model_base, settings)
    directory = getattr(args, "progress_dir", None) or progress_dir(answers_file or args.answers_file)
    return AnswerStore(directory, header, f"part-{chunks}_{chunk_idx}")


def keyed_rows(records: Sequence[Any], prompts: Sequence[Prompt], rows: int | Sequence[Any] = 0) -> list[tuple[str, Prompt]]:
    """(row key, prompt) for question records in file order: `rows` is the row of the first record in the
    whole file, or each record's row (e.g. "12/3" for round 3 of row 12)."""
    positions = range(rows, rows + len(records)) if isinstance(rows, int) else rows
    return [(row_key(row, record, prompt.text), prompt) for row, record, prompt in zip(positions, records, prompts)]


def answer_rows(
    args: Any,
    generator: str,
    questions: str,
    settings: Settings,
    records: Sequence[Any],
    prompts: Sequence[Prompt],
    rows: int | Sequence[Any] = 0,
    answers_file: str | None = None,
) -> list[str]:
    """A generator's answers to its question `records` of the file (or dataset) at `questions`, asked as
    `prompts` (`rows`: see `keyed_rows`): kept answers are reused, the others generated and kept (see
    `answer_keyed`)."""
    store = store_for(args, generator, questions, settings, answers_file)
    return answer_keyed(keyed_rows(records, prompts, rows), lambda: load(args)[0], settings, store, args.batch_size)
