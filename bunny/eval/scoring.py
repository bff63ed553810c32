"""Score one benchmark's answers the way `python -m bunny.eval run` reports them: the original's (legacy)
numbers exactly as our scorer modules print them, a corrected score beside them where the original's
parsing is wrong, counts of missing answers and random fallbacks, and the upload file of server-scored
benchmarks. Not a command; `python -m bunny.eval run` calls

    score(benchmark, data_dir, answers, run_dir, split=None) -> dict

`data_dir` is the benchmark's folder (question files from `bunny.eval.prepare`, official files);
`answers` the generator's output; everything written goes under `run_dir`. The returned dict:

    benchmark, score (the model zoo's headline number, in its units: percent, MME points; None when a
    server scores it), score_name, metrics (what the scorer module returns, made JSON-friendly),
    corrected ({score, metrics, changes} or None, see `bunny.eval.corrections`), counts (questions,
    answered, missing, random_fallbacks, unmatched_answers, ...), missing_rows (up to 20 question ids),
    upload ({file, to} or None), printed (the scorer's stdout), warnings (its stderr lines), files.

Answers are matched to the question file by row: the question's id plus, where ids repeat (MME, TextVQA),
the prompt. A scorer that needs every answer (MME, GQA, VizWiz, shapes) gets an empty answer for each
missing one, so it is scored wrong, and the legacy CMMMU score covers the answered questions only (the
original fails on both); with every answer there, the numbers are those of the scorer run on the answer
file. MME's and GQA's converted files are written in question order, so each MME image's two answers stay
paired whatever order the answer file has. MMBench has no local scorer in the original: its score here is
a single-pass letter match on the dev split (`mmbench_letter`), the official number is the server's.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from bunny.eval.common import read_jsonl, require_file
from bunny.eval.prepare import SOURCES
from bunny.util.utils import atomic_write, write_jsonl

MISSING_ROWS_LISTED = 20
UPLOAD_SERVERS = {
    "mmbench": "https://mmbench.opencompass.org.cn/mmbench-submission",
    "vqav2": "https://eval.ai/web/challenges/challenge-page/830/overview",
    "vizwiz": "https://eval.ai/web/challenges/challenge-page/1911/overview",
    "mmvet": "https://huggingface.co/spaces/whyu/MM-Vet_Evaluator",
    "mmmu": "https://eval.ai/web/challenges/challenge-page/2179/overview",
}
GQA_TIER = "testdev_balanced"
Row = dict[str, Any]


# --- plumbing ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    benchmark: str
    data_dir: str
    answers: str
    run_dir: str
    split: str | None

    def data(self, name: str, what: str, source: str | None = None) -> str:
        """`data_dir/name`, which must exist; else MissingDataError saying what it is and where it comes from."""
        hint = f"`python -m bunny.eval.prepare {self.benchmark} --data-dir {self.data_dir}` builds it"
        return require_file(os.path.join(self.data_dir, name), what, source or hint)

    def official(self, name: str, what: str) -> str:
        return self.data(name, what, SOURCES.get(self.benchmark, ""))

    def out(self, name: str) -> str:
        return os.path.join(self.run_dir, name)


@dataclass
class Scored:
    """What one benchmark's scorer fills; `score` turns it into the report dict."""

    score: float | None
    score_name: str
    metrics: Any
    printed: str
    counts: dict[str, Any]
    missing_rows: list[Any]
    corrected: dict[str, Any] | None = None
    upload: dict[str, str] | None = None
    warnings: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


@dataclass
class Matched:
    """The answer of each question row (None: missing) and the answers that match no row."""

    rows: list[Row | None]
    unmatched: list[Row]

    @property
    def complete(self) -> bool:
        return all(answer is not None for answer in self.rows)


def jsonable(value: Any) -> Any:
    """`value` as JSON gives it back (tuples become lists, keys strings), so the report is plain JSON."""
    return json.loads(json.dumps(value))


def captured(function: Callable[..., Any], *args: Any) -> tuple[Any, str, list[str]]:
    """(result, stdout, stderr lines) of `function(*args)`; stderr is passed on too, so the user sees the
    scorer's warnings. A scorer that exits (its `main` on an error) is a ValueError with its message."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            result = function(*args)
    except SystemExit as exit_:
        raise ValueError(err.getvalue().strip() or f"{function.__module__} exited with status {exit_.code}") from None
    finally:
        sys.stderr.write(err.getvalue())
    return result, out.getvalue(), err.getvalue().splitlines()


def read_answers(path: str) -> list[Row]:
    return read_jsonl(require_file(path, "the answer file"), ("question_id", "text"))


def id_key(question_id: Any) -> str:
    """Ids compared as text, so `3` in an answer file matches `"3"` in a TSV."""
    return str(question_id)


def match_answers(questions: Sequence[Row], answers: Sequence[Row], by_prompt: bool = False) -> Matched:
    """Pair each question row with an answer of the same `question_id`, each answer used once, in file
    order. With `by_prompt`, an answer whose `prompt` is the question's `text` is preferred (MME asks two
    questions per image under one id; TextVQA repeats ids), so a missing answer is the right row."""
    waiting: dict[str, list[int]] = {}
    for index, answer in enumerate(answers):
        waiting.setdefault(id_key(answer["question_id"]), []).append(index)
    used: set[int] = set()
    rows: list[Row | None] = [None] * len(questions)
    for prompt_must_match in (True, False) if by_prompt else (False,):
        for row, question in enumerate(questions):
            if rows[row] is not None:
                continue
            for index in waiting.get(id_key(question["question_id"]), ()):
                if index in used or (prompt_must_match and answers[index].get("prompt") != question.get("text")):
                    continue
                used.add(index)
                rows[row] = answers[index]
                break
    return Matched(rows, [answer for index, answer in enumerate(answers) if index not in used])


def tally(
    questions: Sequence[Row], matched: Matched, random_fallbacks: int | None = 0, **extra: Any
) -> tuple[dict[str, Any], list[Any]]:
    """(counts, the ids of the first missing rows)."""
    missing = [question["question_id"] for question, answer in zip(questions, matched.rows) if answer is None]
    counts = {
        "questions": len(questions), "answered": len(questions) - len(missing), "missing": len(missing),
        "random_fallbacks": random_fallbacks, "unmatched_answers": len(matched.unmatched), **extra,
    }
    return counts, missing[:MISSING_ROWS_LISTED]


def blank_answer(question: Row) -> Row:
    """What a missing answer is scored as: an empty text (wrong under every rule)."""
    return {"question_id": question["question_id"], "prompt": question.get("text", ""), "text": ""}


def completed(questions: Sequence[Row], matched: Matched) -> list[Row]:
    """The answers in question order, a blank answer where one is missing."""
    return [answer if answer is not None else blank_answer(q) for q, answer in zip(questions, matched.rows)]


def answers_for_scorer(run: Run, questions: Sequence[Row], matched: Matched) -> str:
    """The answer file itself when every question has an answer; else a copy in run_dir with a blank
    answer added for each missing one (for scorers that need them all)."""
    if matched.complete:
        return run.answers
    path = run.out("answers_completed.jsonl")
    blanks = [blank_answer(q) for q, answer in zip(questions, matched.rows) if answer is None]
    write_jsonl(path, read_answers(run.answers) + blanks)
    return path


def write_json(path: str, value: Any, indent: int | None = None) -> str:
    with atomic_write(path) as f:
        json.dump(value, f, indent=indent)
    return path


def percent(fraction: float) -> float:
    return 100 * fraction


# --- the entry point -------------------------------------------------------------------------------------

def scorers() -> dict[str, Callable[[Run], Scored]]:
    """benchmark -> its scorer (in scoring_local and scoring_mmmu, which build on the plumbing above)."""
    from bunny.eval import scoring_local as local, scoring_mmmu as mmmu

    return {
        "mme": local.score_mme,
        "mmbench": local.score_mmbench,
        "seedbench": local.score_seedbench,
        "mmmu": mmmu.score_mmmu,
        "cmmmu": mmmu.score_cmmmu,
        "vqav2": local.score_vqav2,
        "gqa": local.score_gqa,
        "scienceqa": local.score_scienceqa,
        "pope": local.score_pope,
        "mmvet": local.score_mmvet,
        "textvqa": local.score_textvqa,
        "vizwiz": local.score_vizwiz,
        "shapes": local.score_shapes,
    }


def score(benchmark: str, data_dir: str, answers: str, run_dir: str, split: str | None = None) -> dict[str, Any]:
    """Score `answers` for `benchmark` (see the module docstring for the dict returned); files go to
    `run_dir`. A missing official or question file is a MissingDataError naming it and where it comes
    from; malformed files are ValueErrors naming them."""
    table = scorers()
    if benchmark not in table:
        raise ValueError(f"no scorer for benchmark {benchmark!r}; choose one of {', '.join(table)}")
    os.makedirs(run_dir, exist_ok=True)
    scored = table[benchmark](Run(benchmark, data_dir, answers, run_dir, split))
    return {
        "benchmark": benchmark,
        "score": scored.score,
        "score_name": scored.score_name,
        "metrics": scored.metrics,
        "corrected": jsonable(scored.corrected),
        "counts": scored.counts,
        "missing_rows": jsonable(scored.missing_rows),
        "upload": scored.upload,
        "printed": scored.printed,
        "warnings": scored.warnings,
        "files": scored.files + ([scored.upload["file"]] if scored.upload else []),
    }
