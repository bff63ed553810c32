"""The scorers of `bunny.eval.scoring` for MMMU and CMMMU: their raw responses lie beside the answers, and
the random draws of the original are replayed to count random fallbacks."""

from __future__ import annotations

import os
import random
import sys
from typing import Any, Sequence

from bunny.eval.common import read_jsonl, require_file, responses_path
from bunny.eval.scoring import (
    UPLOAD_SERVERS,
    Row,
    Run,
    Scored,
    jsonable,
    captured,
    match_answers,
    tally,
    percent,
)
from bunny.util.utils import write_jsonl


# --- MMMU, CMMMU: raw responses beside the answers, random draws replayed -------------------------------

def read_responses(answers: str, warnings: list[str]) -> dict[Any, Row] | None:
    """{id: raw response row} in question order, or None (and a warning) when the generator wrote no
    responses file."""
    path = responses_path(answers)
    if not os.path.exists(path):
        warning = f"warning: no {path}: random fallbacks not counted, no corrected score"
        print(warning, file=sys.stderr)
        warnings.append(warning)
        return None
    return {row["id"]: row for row in read_jsonl(path, ("id", "response", "generated"))}


def mmmu_replay(responses: dict[Any, Row], predictions: dict[str, Any]) -> dict[str, list[Any]]:
    """Replay the MMMU generator's random draws (Python's `random` seeded 42, in question order): the ids
    not asked (answered at random), those whose response has no readable letter (a random letter), and
    those whose replayed prediction differs from the prediction file (another seed or order)."""
    from bunny.eval.mmmu.eval_mmmu import parse_multi_choice_letter

    rng = random.Random(42)
    replay: dict[str, list[Any]] = {"not_asked": [], "parser_fallbacks": [], "replay_mismatches": []}
    for sample_id, row in responses.items():
        multiple_choice = row["question_type"] == "multiple-choice"
        choices = list(row.get("all_choices") or [])
        prediction, drawn_ok = row["response"], True
        if not row["generated"]:
            replay["not_asked"].append(sample_id)
            drawn_ok = not (multiple_choice and choices) or rng.choice(choices) == row["response"]
        if multiple_choice and choices:
            prediction = parse_multi_choice_letter(row["response"], choices, row.get("index2ans") or {})
            if prediction is None:
                replay["parser_fallbacks"].append(sample_id)
                prediction = rng.choice(choices)
        if not drawn_ok or (sample_id in predictions and predictions[sample_id] != prediction):
            replay["replay_mismatches"].append(sample_id)
    return replay


def mmmu_corrected(
    key: dict[str, Row], predictions: dict[str, Any], responses: dict[Any, Row], where: str
) -> dict[str, Any]:
    """Every id of the answer key scored under `corrections.mmmu_letter`; not asked or missing is wrong."""
    from bunny.eval import corrections
    from bunny.eval.mmmu import eval_mmmu

    right: dict[str, list[bool]] = {}
    for sample_id, entry in key.items():
        row = responses.get(sample_id) if sample_id in predictions else None
        correct = False
        if row is not None and row["generated"] and entry.get("question_type") == "multiple-choice":
            letter = corrections.mmmu_letter(row["response"], row.get("all_choices") or [], row.get("index2ans") or {})
            correct = letter is not None and eval_mmmu.eval_multi_choice(entry["ground_truth"], letter)
        elif row is not None and row["generated"]:
            correct = eval_mmmu.is_correct(sample_id, row["response"], entry, where)
        right.setdefault(eval_mmmu.subject_of(sample_id), []).append(correct)
    results = {
        subject: (sum(right[subject]) / len(right[subject]), len(right[subject]))
        for subject in eval_mmmu.SUBJECTS if subject in right
    }
    metrics = eval_mmmu.summarize(results)
    return {"score": percent(metrics["Overall"]["acc"]), "metrics": metrics, "changes": corrections.CHANGES["mmmu"]}


def score_mmmu(run: Run) -> Scored:
    from bunny.eval.mmmu import eval_mmmu
    from bunny.eval.mmmu.data import ANSWER_FILE

    split = run.split or "validation"
    prediction_file = require_file(run.answers, "the MMMU prediction file")
    predictions = eval_mmmu.read_json_object(prediction_file, "the prediction dict")
    warnings: list[str] = []
    responses = read_responses(run.answers, warnings)
    replay = mmmu_replay(responses, predictions) if responses is not None else None
    fallbacks = len(set(replay["not_asked"]) | set(replay["parser_fallbacks"])) if replay else None
    extra = {name: len(ids) for name, ids in replay.items()} if replay else {}
    score, metrics, printed, corrected, upload = None, {}, "", None, None
    if split == "validation":
        key_path = run.data(ANSWER_FILE, "MMMU's validation answer key")
        key = eval_mmmu.read_json_object(key_path, "the answer key")
        metrics, printed, scorer_warnings = captured(eval_mmmu.evaluate, predictions, key, key_path)
        warnings += scorer_warnings
        score = percent(metrics["Overall"]["acc"])
        corrected = mmmu_corrected(key, predictions, responses, key_path) if responses is not None else None
        ids = list(key)
    else:
        ids = list(responses) if responses is not None else list(predictions)
        if split == "test":
            upload = {"file": run.answers, "to": UPLOAD_SERVERS["mmmu"]}
    questions = [{"question_id": sample_id} for sample_id in ids]
    matched = match_answers(questions, [{"question_id": sample_id} for sample_id in predictions])
    counts, missing = tally(questions, matched, fallbacks, **extra)
    name = "MMMU validation overall accuracy (%)" if split == "validation" else f"MMMU {split} (no local answer key)"
    return Scored(score, name, jsonable(metrics), printed, counts, missing, corrected, upload, warnings)


class CountingRandom(random.Random):
    """A `random.Random` that counts its `choice` calls (the CMMMU scorer's random picks), same draws."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.picks = 0

    def choice(self, seq: Sequence[Any]) -> Any:
        self.picks += 1
        return super().choice(seq)


def cmmmu_replay(data_path: str, output_path: str) -> dict[int, tuple[bool, bool]]:
    """{id: (legacy correct, legacy drew at random)}, replaying `eval_script.evaluate` in its order with
    its `random.Random(42)`."""
    from bunny.eval.cmmmu import eval_script

    data = eval_script.by_id(read_jsonl(data_path, ("id",)), data_path)
    rows = read_jsonl(output_path)
    mode = eval_script.output_mode(rows, output_path)
    outputs = eval_script.by_id([r for r in rows if eval_script.integer_id(r, output_path) in data], output_path)
    rng = CountingRandom(42)
    replay = {}
    for category in eval_script.CATEGORIES:
        for output, row in eval_script.category_pairs(data, outputs, category, output_path):
            picks = rng.picks
            if mode == "response":
                correct = eval_script.response_correct(output, row, rng)
            else:
                correct = eval_script.answer_correct(output, row)
            replay[eval_script.integer_id(row, data_path)] = (correct, rng.picks > picks)
    return replay


def cmmmu_corrected(data: Sequence[Row], outputs: dict[int, Row], responses: dict[int, Row]) -> dict[str, Any]:
    """Every question of the data file under `corrections.cmmmu_correct`; not asked or missing is wrong."""
    from bunny.eval import corrections
    from bunny.eval.cmmmu import eval_script

    results: dict[str, dict[str, Any]] = {}
    for category, name in eval_script.CATEGORIES.items():
        rows = [row for row in data if row.get("category") == category]
        correct = 0
        for row in rows:
            output, raw = outputs.get(int(row["id"])), responses.get(int(row["id"]))
            if output is not None and raw is not None and raw["generated"] and isinstance(output.get("response"), str):
                correct += corrections.cmmmu_correct(output["response"], row)
        results[name] = {"correct_num": correct, "entries_num": len(rows), "acc": correct / len(rows) if rows else 0}
    correct = sum(counts["correct_num"] for counts in results.values())
    entries = sum(counts["entries_num"] for counts in results.values())
    results["Overall"] = {"correct_num": correct, "entries_num": entries, "acc": correct / entries if entries else 0}
    return {"score": percent(results["Overall"]["acc"]), "metrics": results, "changes": corrections.CHANGES["cmmmu"]}


def cmmmu_data_for_scorer(run: Run, data_path: str, data: Sequence[Row], answered: set[int]) -> str:
    """The data file itself when every question has an answer, else a copy of the answered rows only."""
    if all(int(row["id"]) in answered for row in data):
        return data_path
    path = run.out("cmmmu-data-answered.jsonl")
    write_jsonl(path, [row for row in data if int(row["id"]) in answered])
    return path


def score_cmmmu(run: Run) -> Scored:
    from bunny.eval.cmmmu import eval_script
    from bunny.eval.cmmmu.data import ANSWER_FILE

    split = run.split or "val"
    answer_file = require_file(run.answers, "the CMMMU answer file")
    outputs = {int(row["id"]): row for row in read_jsonl(answer_file, ("id", "type"))}
    warnings: list[str] = []
    raw = read_responses(run.answers, warnings)
    responses = {int(key): row for key, row in raw.items()} if raw is not None else None
    not_asked = {key for key, row in responses.items() if not row["generated"]} if responses is not None else set()
    score, metrics, printed, corrected, picks = None, {}, "", None, set()
    if split == "val":
        data_path = run.data(ANSWER_FILE, "CMMMU's val questions with answers")
        data = read_jsonl(data_path, ("id", "type", "answer", "category"))
        scored_data = cmmmu_data_for_scorer(run, data_path, data, set(outputs))
        metrics, printed, scorer_warnings = captured(eval_script.evaluate, scored_data, run.answers)
        warnings += scorer_warnings
        picks = {key for key, (_, drew) in cmmmu_replay(scored_data, run.answers).items() if drew}
        score = percent(metrics["Overall"]["acc"])
        with_responses = responses is not None and all("response" in row for row in outputs.values())
        corrected = cmmmu_corrected(data, outputs, responses) if with_responses else None
        ids = [int(row["id"]) for row in data]
    else:
        ids = list(responses) if responses is not None else list(outputs)
    questions = [{"question_id": key} for key in ids]
    matched = match_answers(questions, [{"question_id": key} for key in outputs])
    counts, missing = tally(
        questions, matched, len(not_asked | picks) if responses is not None else None,
        not_asked=len(not_asked) if responses is not None else None, scorer_random_picks=len(picks),
    )
    name = "CMMMU val overall accuracy (%)" if split == "val" else f"CMMMU {split} (no local answers)"
    return Scored(score, name, jsonable(metrics), printed, counts, missing, corrected, None, warnings)
