"""Score MMMU validation predictions, as the original `eval/mmmu/eval_mmmu.py` does; also home of the
response parsers the MMMU answer generator applies.

Run as:
    python -m bunny.eval.mmmu.eval_mmmu --output-path eval/mmmu/answers_upload/validation/bunny-phi-2.json \\
        [--answer_path eval/mmmu/answer_dict_val.json]

`--output-path`: the generator's prediction dict `{"validation_<Subject>_<n>": prediction}` (multiple
choice already parsed to a letter, open questions the raw response). `--answer_path`: the answer key
`{id: {"question_type", "ground_truth"}}` (`python -m bunny.eval.prepare mmmu` writes it).

Only ids with a prediction are scored. Multiple choice is right when the letter equals the ground truth
(or one of a list); an open answer is parsed (`parse_open_response`) and is right when one of its
numbers equals a gold number (both rounded to 2 decimals) or a gold string (lower-cased) occurs inside
one of its strings. For each of the 30 subjects it prints `Evaluating: <Subject>` (or `Skipping
<Subject> for not found` when the predictions or the key lack it), then one Python dict, the original's
printout: per domain `Overall-<domain>`, its subjects, and `Overall`, each `{'num': n, 'acc': a}` with
the instance-weighted accuracy rounded to 3 decimals (an empty domain is `{'num': 0, 'acc': 0}`).

Differences from the original, on purpose: a prediction whose id is missing from the key of its subject,
or whose id names no MMMU subject, is an error naming it (the original crashes on the first and silently
ignores the second); unreadable files are errors naming them.
"""

from __future__ import annotations

import argparse
import random
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

from bunny.eval.common import read_json
from bunny.eval.mmmu.data import SUBJECTS

DOMAINS: dict[str, tuple[str, ...]] = {
    "Art and Design": ("Art", "Art_Theory", "Design", "Music"),
    "Business": ("Accounting", "Economics", "Finance", "Manage", "Marketing"),
    "Science": ("Biology", "Chemistry", "Geography", "Math", "Physics"),
    "Health and Medicine": (
        "Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine", "Pharmacy",
        "Public_Health",
    ),
    "Humanities and Social Science": ("History", "Literature", "Sociology", "Psychology"),
    "Tech and Engineering": (
        "Agriculture", "Architecture_and_Engineering", "Computer_Science", "Electronics", "Energy_and_Power",
        "Materials", "Mechanical_Engineering",
    ),
}

# Stripped from both ends of a multiple-choice response, one mark after the other (so "B,." keeps "B,").
EDGE_PUNCTUATION = (",", ".", "!", "?", ";", ":", "'")
# A key phrase is the shortest tail of a sentence after one of these words.
OPEN_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
TRIVIAL_PHRASES = frozenset({":", ",", ".", "!", "?", ";", "'"})

NUMBER_WITH_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
NUMBER_SCIENTIFIC = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")
NUMBER_SIMPLE = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])")

Normalized = str | float
Accuracy = tuple[float, int]  # (accuracy, number of predictions) of one subject


# --- parsing responses ---------------------------------------------------------------------------------

def parse_multi_choice_response(response: str, all_choices: Sequence[str], index2ans: Mapping[str, str]) -> str:
    """The letter a multiple-choice response picks: letters written `(X)`, else ` X `, else (for responses
    of more than 5 words) options whose text occurs, case-insensitively; with several, the one occurring
    last; with none, `random.choice(all_choices)` from Python's global generator (as the original)."""
    letter = parse_multi_choice_letter(response, all_choices, index2ans)
    if letter is not None:
        return letter
    if not all_choices:
        raise ValueError(f"no choices to pick from for the response {response!r:.80}")
    return random.choice(list(all_choices))


def parse_multi_choice_letter(response: str, all_choices: Sequence[str], index2ans: Mapping[str, str]) -> str | None:
    """The letter `parse_multi_choice_response` reads in a response, or None where it would draw one
    at random (the scorers count those draws)."""
    for mark in EDGE_PUNCTUATION:
        response = response.strip(mark)
    padded = f" {response} "
    bracketed = [choice for choice in all_choices if f"({choice})" in padded]
    if bracketed:
        return last_occurring(bracketed, lambda choice: padded.rfind(f"({choice})"))
    spaced = [choice for choice in all_choices if f" {choice} " in padded]
    if spaced:
        return last_occurring(spaced, lambda choice: padded.rfind(f" {choice} "))
    if len(padded.split()) > 5:
        lowered = padded.lower()
        named = [choice for choice, text in index2ans.items() if text.lower() in lowered]
        if named:
            return last_occurring(named, lambda choice: lowered.rfind(index2ans[choice].lower()))
    return None


def last_occurring(candidates: list[str], position: Callable[[str], int]) -> str:
    """The candidate found furthest right; the first listed on a tie (numpy.argmax's rule)."""
    return max(candidates, key=position)


def key_phrase(sentence: str, indicators: Iterable[str]) -> str:
    """The shortest stripped tail of `sentence` after the last occurrence of an indicator; an empty tail
    gives way to any later indicator's tail. "" when no indicator occurs."""
    shortest = ""
    for indicator in indicators:
        if indicator in sentence:
            tail = sentence.rpartition(indicator)[2].strip()
            if not shortest or len(tail) < len(shortest):
                shortest = tail
    return shortest


def key_phrases(response: str) -> list[str]:
    """The non-trivial key phrase of each sentence of the lower-cased response (`=` also counts in the
    last sentence); the whole response when there is none."""
    text = response.strip().strip(".").lower()
    # The original splits on ". " before a capital too, but only after lower-casing: only newlines split.
    sentences = re.split(r"\.\s(?=[A-Z])|\n", text)
    phrases = []
    for number, sentence in enumerate(sentences, start=1):
        indicators = OPEN_INDICATORS + ("=",) if number == len(sentences) else OPEN_INDICATORS
        phrase = key_phrase(sentence, indicators)
        if phrase and phrase not in TRIVIAL_PHRASES:
            phrases.append(phrase)
    return phrases or [text]


def extract_numbers(string: str) -> list[str]:
    """Numbers written with thousands commas, in scientific notation, then plain ones, in that order."""
    return NUMBER_WITH_COMMAS.findall(string) + NUMBER_SCIENTIFIC.findall(string) + NUMBER_SIMPLE.findall(string)


def check_is_number(string: str) -> bool:
    """Whether Python's float() reads the string once its commas are removed."""
    try:
        float(string.replace(",", ""))
    except ValueError:
        return False
    return True


def normalize_str(string: str) -> list[Normalized]:
    """A number as a float rounded to 2 decimals; otherwise the lower-cased string, a single character
    padded as [" x", "x "] so it only matches as a word."""
    string = string.strip()
    if check_is_number(string):
        return [round(float(string.replace(",", "")), 2)]
    string = string.lower()
    if len(string) == 1:
        return [" " + string, string + " "]
    return [string]


def parse_open_response(response: str) -> list[Normalized]:
    """The normalised candidate answers of an open response: its key phrases and the numbers in them,
    without duplicates (the original returns them in set order; only membership matters)."""
    phrases = key_phrases(response)
    candidates = phrases + [number for phrase in phrases for number in extract_numbers(phrase)]
    return list({value: None for candidate in candidates for value in normalize_str(candidate)})


# --- scoring -------------------------------------------------------------------------------------------

def eval_multi_choice(gold: Any, prediction: Any) -> bool:
    """Exact match with the gold letter, or with any of a list of them."""
    return prediction in gold if isinstance(gold, list) else gold == prediction


def eval_open(gold: str | list[str], predictions: Sequence[Normalized]) -> bool:
    """Right when a predicted number equals a normalised gold number, or a normalised gold string occurs
    inside a predicted string."""
    golds = [value for answer in (gold if isinstance(gold, list) else [gold]) for value in normalize_str(answer)]
    for prediction in predictions:
        if isinstance(prediction, str):
            if any(isinstance(answer, str) and answer in prediction for answer in golds):
                return True
        elif prediction in golds:
            return True
    return False


def subject_of(sample_id: str) -> str:
    """`validation_Art_Theory_12` -> `Art_Theory`."""
    return "_".join(sample_id.split("_")[1:-1])


def is_correct(sample_id: str, prediction: Any, answer: Any, where: str) -> bool:
    if not isinstance(answer, dict) or "question_type" not in answer or "ground_truth" not in answer:
        raise ValueError(f"{where}: the entry of {sample_id!r} needs 'question_type' and 'ground_truth'")
    gold = answer["ground_truth"]
    if answer["question_type"] == "multiple-choice":
        return eval_multi_choice(gold, prediction)
    if not isinstance(prediction, str):
        raise ValueError(f"prediction of {sample_id!r}: an open answer must be a string, found {prediction!r}")
    if not (isinstance(gold, str) or (isinstance(gold, list) and all(isinstance(item, str) for item in gold))):
        raise ValueError(f"{where}: the ground truth of {sample_id!r} must be a string or a list of strings")
    return eval_open(gold, parse_open_response(prediction))


def score_subject(predictions: Mapping[str, Any], answers: Mapping[str, Any], where: str) -> Accuracy:
    """(accuracy, count) over one subject's predictions."""
    correct = 0
    for sample_id, prediction in predictions.items():
        if sample_id not in answers:
            raise ValueError(f"prediction {sample_id!r} has no answer in {where}")
        correct += is_correct(sample_id, prediction, answers[sample_id], where)
    return correct / len(predictions), len(predictions)


def group_by_subject(entries: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    for sample_id, value in entries.items():
        groups.setdefault(subject_of(sample_id), {})[sample_id] = value
    return groups


def weighted_accuracy(results: Iterable[Accuracy]) -> float | int:
    """Instance-weighted accuracy, summed as the original does (0 when empty)."""
    total, count = 0.0, 0
    for accuracy, number in results:
        total += accuracy * number
        count += number
    return total / count if count else 0


def summarize(results: Mapping[str, Accuracy]) -> dict[str, dict[str, float | int]]:
    """The printed dict: each domain's overall line followed by its subjects, then `Overall`."""
    printable: dict[str, dict[str, float | int]] = {}
    for domain, subjects in DOMAINS.items():
        present = [subject for subject in subjects if subject in results]
        in_domain = [results[subject] for subject in present]
        printable[f"Overall-{domain}"] = {
            "num": sum(number for _, number in in_domain), "acc": round(weighted_accuracy(in_domain), 3),
        }
        for subject in present:
            accuracy, number = results[subject]
            printable[subject] = {"num": number, "acc": round(accuracy, 3)}
    printable["Overall"] = {
        "num": sum(number for _, number in results.values()), "acc": round(weighted_accuracy(results.values()), 3),
    }
    return printable


def evaluate(
    predictions: Mapping[str, Any], answers: Mapping[str, Any], where: str = "the answer key"
) -> dict[str, Any]:
    """Score `predictions` against `answers`, printing the original's lines; the printed dict."""
    for sample_id in predictions:
        if subject_of(sample_id) not in SUBJECTS:
            raise ValueError(f"prediction {sample_id!r}: {subject_of(sample_id)!r} is not one of the 30 MMMU subjects")
    predicted, expected = group_by_subject(predictions), group_by_subject(answers)
    results: dict[str, Accuracy] = {}
    for subject in SUBJECTS:
        print(f"Evaluating: {subject}")
        if subject not in predicted or subject not in expected:
            print(f"Skipping {subject} for not found")
            continue
        results[subject] = score_subject(predicted[subject], expected[subject], where)
    printable = summarize(results)
    print(printable)
    return printable


# --- command line --------------------------------------------------------------------------------------

def read_json_object(path: str, what: str) -> dict[str, Any]:
    value = read_json(path)
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected {what} (a JSON object), found {type(value).__name__}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bunny.eval.mmmu.eval_mmmu", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output-path", type=str, default=None, required=True, help="the model's prediction dict (JSON)",
    )
    parser.add_argument(
        "--answer_path", type=str, default="eval/mmmu/answer_dict_val.json", help="the answer key (JSON)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        predictions = read_json_object(args.output_path, "the prediction dict {sample_id: prediction}")
        answers = read_json_object(args.answer_path, "the answer key {sample_id: {question_type, ground_truth}}")
        return evaluate(predictions, answers, args.answer_path)
    except (OSError, ValueError) as err:
        parser.exit(1, f"error: {err}\n")


if __name__ == "__main__":
    main()
