"""Score CMMMU validation outputs, as the original `eval/cmmmu/eval_script.py` does.

Run as:
    python -m bunny.eval.cmmmu.eval_script --output_path eval/cmmmu/answers_upload/val/bunny-phi-2.jsonl \\
        [--data_path eval/cmmmu/cmmmu-data-val-answer.jsonl]

`--output_path`: JSON lines with keys exactly `{id, type, response}` (the generator's raw responses,
"response mode") or exactly `{id, type, answer}` (already extracted answers, "answer mode").
`--data_path`: the val questions with their answers (`python -m bunny.eval.prepare cmmmu` writes it).

For each category (艺术与设计, 商业, 科学, 健康与医学, 人文社会科学, 技术与工程) the output must answer exactly
the data file's ids (matched as integers); output ids absent from the data file are ignored. Response
mode parses by the output line's `type`: choice (选择) counts `(X)` markers, else bare letters anywhere
(`DNA` -> `AD`), else option texts, and predicts the most frequent letters in ABCD order (random when
none; an empty response is wrong); fill-in (填空) extracts key phrases and numbers, keeps those passing a
length / letter-count filter, and matches numbers or substrings (not lower-cased); true/false (判断)
votes the key phrases positive (`正确` counts even inside `不正确`) or negative, at random on a tie.
Random draws come from `random.Random(42)` in file order, category by category, as the original's
`random.seed(42)`. Prints an org-mode table Subject / Correct Num / Entries Num / Acc (accuracies in
`%g`) with an Overall row.

Differences from the original, on purpose: ids missing from the output, duplicate ids, a line of neither
format and non-string answers are errors naming the file and the ids (the original asserts or crashes).
"""

from __future__ import annotations

import argparse
import random
import re
from typing import Any, Sequence

from bunny.eval.common import read_jsonl
from bunny.eval.mmmu.eval_mmmu import EDGE_PUNCTUATION, TRIVIAL_PHRASES, check_is_number, key_phrase
from bunny.eval.cmmmu.data import CHOICE, FILL_IN

# Chinese category -> printed row name, in the printed order.
CATEGORIES: dict[str, str] = {
    "艺术与设计": "Art & Design",
    "商业": "Business",
    "科学": "Science",
    "健康与医学": "Health & Medicine",
    "人文社会科学": "Humanities & Social Sciences",
    "技术与工程": "Technology & Engineering",
}
HEADERS = ("Subject", "Correct Num", "Entries Num", "Acc")
CHOICES = ("A", "B", "C", "D")
RESPONSE_KEYS, ANSWER_KEYS = frozenset({"id", "type", "response"}), frozenset({"id", "type", "answer"})

FILL_IN_INDICATORS = ("是", "为", "所以", "等于", "方案", "选择", "正确答案", "因此", "最后", "答案", "结果")
TRUE_FALSE_INDICATORS = ("是", "为", "所以", "判断", "陈述", "说法", "表达", "答案", "结果")
POSITIVE = ("正确", "对", "准确", "肯定", "对的")
NEGATIVE = ("不对", "错误", "不正确", "不准确", "不合适", "否定", "错的", "错")
AMBIGUOUS = ("对错", "是否正确", "否正确", "或者", "是否", "正确性", "对不")

NUMBER_WITH_COMMAS = re.compile(r"-?\d{1,3}(?:，\d{3})+")  # Chinese thousands commas
NUMBER_SCIENTIFIC = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")
NUMBER_SIMPLE = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+)(?![eE][+-]?\d+)(?!，\d)")

Normalized = str | float | None
Counts = dict[str, int]  # correct_num, entries_num (and acc) of one category


# --- parsing responses ---------------------------------------------------------------------------------

def get_multi_choice_prediction(
    response: str, all_choices: Sequence[str], index2ans: dict[str, str], rng: random.Random
) -> str:
    """The most frequent letters, concatenated in `all_choices` order: counting `(X)`, else every bare
    letter, else every occurrence of an option's text; a random letter when nothing is found."""
    for mark in EDGE_PUNCTUATION:
        response = response.strip(mark)
    padded = f" {response} "
    counts = {choice: padded.count(f"({choice})") for choice in all_choices}
    if not any(counts.values()):
        counts = {choice: padded.count(choice) for choice in all_choices}
    if not any(counts.values()) and padded.split():
        # an empty option text counts len + 1 times, as str.count says
        counts = {choice: padded.count(text) for choice, text in index2ans.items()}
    if not any(counts.values()):
        return rng.choice(list(all_choices))
    top = max(counts.values())
    return "".join(choice for choice in all_choices if counts.get(choice, 0) == top)


def sentence_phrases(response: str, indicators: Sequence[str], equation_last: bool) -> list[str]:
    """The non-trivial key phrase of each sentence (split on 。 and newlines); the whole stripped response
    when there is none. With `equation_last`, `=` is also an indicator in the last sentence."""
    text = response.strip("。").strip()
    sentences = re.split(r"。|\n", text)
    phrases = []
    for number, sentence in enumerate(sentences, start=1):
        last = equation_last and number == len(sentences)
        phrase = key_phrase(sentence, tuple(indicators) + ("=",) if last else indicators)
        if phrase and phrase not in TRIVIAL_PHRASES:
            phrases.append(phrase)
    return phrases or [text]


def extract_numbers(string: str) -> list[str]:
    return NUMBER_WITH_COMMAS.findall(string) + NUMBER_SCIENTIFIC.findall(string) + NUMBER_SIMPLE.findall(string)


def count_letters(string: str) -> int:
    """ASCII letters in the string."""
    return sum("a" <= char <= "z" or "A" <= char <= "Z" for char in string)


def normalize_str(string: str | None, answer: str) -> list[Normalized]:
    """A number as a float rounded to 2 decimals; a string kept as written (not lower-cased) unless it
    is more than 20 characters or 2 ASCII letters longer than the answer (then dropped)."""
    if string is None:
        return [None]
    string = string.strip()
    if check_is_number(string):
        return [round(float(string.replace(",", "")), 2)]
    if len(string) > len(answer) + 20 or count_letters(string) > count_letters(answer) + 2:
        return []
    return [string]


def get_fill_blank_prediction(response: str, answer: str) -> list[Normalized]:
    """The normalised candidates of a fill-in response: key phrases and the numbers in them."""
    phrases = sentence_phrases(response, FILL_IN_INDICATORS, equation_last=True)
    candidates = phrases + [number for phrase in phrases for number in extract_numbers(phrase)]
    return list({value: None for candidate in candidates for value in normalize_str(candidate, answer)})


def get_true_false_prediction(response: str) -> list[str]:
    """The distinct key phrases of a true/false response."""
    return list(dict.fromkeys(sentence_phrases(response, TRUE_FALSE_INDICATORS, equation_last=False)))


def judge_true_false(phrases: Sequence[str], rng: random.Random) -> str:
    """对 or 错 by majority of the unambiguous phrases (a phrase with a positive word is positive, even
    inside 不正确); a tie is a random pick."""
    kept = [phrase for phrase in phrases if not any(word in phrase for word in AMBIGUOUS)]
    positive = sum(any(word in phrase for word in POSITIVE) for phrase in kept)
    negative = sum(
        not any(word in phrase for word in POSITIVE) and any(word in phrase for word in NEGATIVE) for phrase in kept
    )
    if positive != negative:
        return "对" if positive > negative else "错"
    return rng.choice(["对", "错"])


def fill_in_correct(predictions: Sequence[Normalized], golds: Sequence[Normalized]) -> bool:
    """A gold string inside a predicted string, or a predicted number among the gold values."""
    for prediction in predictions:
        if isinstance(prediction, str):
            if any(isinstance(gold, str) and gold in prediction for gold in golds):
                return True
        elif prediction in golds:
            return True
    return False


# --- scoring -------------------------------------------------------------------------------------------

def choice_options(row: dict[str, Any]) -> dict[str, str]:
    """{"A": option1, ...} of a data row; a missing or null option is ""."""
    options = [row.get(f"option{number}") for number in range(1, len(CHOICES) + 1)]
    return {letter: "" if option is None else str(option) for letter, option in zip(CHOICES, options)}


def text_field(value: Any, what: str, sample_id: int) -> str:
    if not isinstance(value, str):
        raise ValueError(f"id {sample_id}: {what} must be a string, found {value!r:.80}")
    return value


def response_correct(output: dict[str, Any], row: dict[str, Any], rng: random.Random) -> bool:
    """Response mode. The output line's `type` picks the parser; the data row's type decides whether
    the choice parser gets the options (as the original)."""
    sample_id, response, gold = output["id"], output["response"], row.get("answer")
    if output.get("type") == CHOICE:
        index2ans = choice_options(row) if row.get("type") == CHOICE else {}
        if not response or not index2ans:
            return False
        response = text_field(response, "the response", sample_id)
        return get_multi_choice_prediction(response, CHOICES, index2ans, rng) == gold
    response = text_field(response, "the response", sample_id)
    if output.get("type") == FILL_IN:
        gold = text_field(gold, "the data file's answer", sample_id)
        return fill_in_correct(get_fill_blank_prediction(response, gold), normalize_str(gold, gold))
    return judge_true_false(get_true_false_prediction(response), rng) == gold


def answer_correct(output: dict[str, Any], row: dict[str, Any]) -> bool:
    """Answer mode: exact match, except fill-in answers which are normalised and matched as above."""
    predicted, gold = output["answer"], row.get("answer")
    if output.get("type") != FILL_IN:
        return predicted == gold
    gold = text_field(gold, "the data file's answer", output["id"])
    if predicted is not None:
        predicted = text_field(predicted, "the answer", output["id"])
    return fill_in_correct(normalize_str(predicted, gold), normalize_str(gold, gold))


def count(correct: int, entries: int) -> Counts:
    if not entries:
        print("entries_num == 0, please check your file")
        return {"correct_num": 0, "entries_num": 0, "acc": 0}
    return {"correct_num": correct, "entries_num": entries, "acc": correct / entries}


# --- reading -------------------------------------------------------------------------------------------

def integer_id(row: dict[str, Any], path: str) -> int:
    try:
        return int(row["id"])
    except (TypeError, ValueError):
        raise ValueError(f"{path}: id {row['id']!r} is not an integer") from None


def by_id(rows: Sequence[dict[str, Any]], path: str) -> dict[int, dict[str, Any]]:
    """Rows keyed by integer id, in file order; a repeated id is an error."""
    keyed: dict[int, dict[str, Any]] = {}
    for row in rows:
        key = integer_id(row, path)
        if key in keyed:
            raise ValueError(f"{path}: id {key} occurs twice")
        keyed[key] = row
    return keyed


def output_mode(rows: Sequence[dict[str, Any]], path: str) -> str:
    """"answer" or "response": every line must have exactly the keys of one of the two formats."""
    for mode, keys in (("answer", ANSWER_KEYS), ("response", RESPONSE_KEYS)):
        if all(set(row) == keys for row in rows):
            return mode
    odd = next((row for row in rows if set(row) not in (RESPONSE_KEYS, ANSWER_KEYS)), None)
    if odd is not None:
        raise ValueError(
            f"{path}: every line needs exactly the keys id, type, response (or id, type, answer); "
            f"the line with id {odd.get('id')!r} has {', '.join(sorted(odd))}"
        )
    raise ValueError(f"{path}: some lines have a 'response', others an 'answer'; use one format")


def category_pairs(
    data: dict[int, dict[str, Any]], outputs: dict[int, dict[str, Any]], category: str, output_path: str
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(output, data row) for each of the category's ids, in output file order."""
    expected = {key for key, row in data.items() if row.get("category") == category}
    answered = [key for key in outputs if key in expected]
    missing = sorted(expected - set(answered))
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
        raise ValueError(f"{output_path}: no line for {len(missing)} {category} id(s) of the data file: {shown}")
    return [(outputs[key], data[key]) for key in answered]


# --- the table -----------------------------------------------------------------------------------------

def cell_text(value: Any, numeric: str | None) -> str:
    if numeric == "float":
        return format(float(value), "g")
    return str(value)


def digits_after_point(text: str) -> int:
    """Characters after the decimal point (or exponent mark) of a formatted number; -1 without one."""
    if re.fullmatch(r"-?\d+", text):
        return -1
    position = text.rfind(".")
    if position < 0:
        position = text.lower().rfind("e")
    return len(text) - position - 1 if position >= 0 else -1


def align_column(header: str, values: Sequence[Any]) -> list[str]:
    """The header and cells of one column, padded to a common width as tabulate's orgtbl does: text left,
    numbers right with their decimal points lined up; at least 2 characters wider than the header."""
    numbers = all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in values)
    numeric = ("int" if all(isinstance(value, int) for value in values) else "float") if numbers else None
    cells = [cell_text(value, numeric) for value in values]
    if numeric:
        decimals = [digits_after_point(cell) for cell in cells]
        cells = [cell + " " * (max(decimals) - places) for cell, places in zip(cells, decimals)]
    width = max([len(header) + 2] + [len(cell) for cell in cells])
    if numeric:
        return [header.rjust(width)] + [cell.rjust(width) for cell in cells]
    return [header.ljust(width)] + [cell.ljust(width) for cell in cells]


def format_table(rows: Sequence[Sequence[Any]]) -> str:
    """`tabulate(rows, headers=HEADERS, tablefmt="orgtbl")`, floats in %g."""
    columns = [align_column(header, [row[index] for row in rows]) for index, header in enumerate(HEADERS)]
    lines = ["|" + "|".join(f" {column[line]} " for column in columns) + "|" for line in range(len(rows) + 1)]
    rule = "|" + "+".join("-" * (len(column[0]) + 2) for column in columns) + "|"
    return "\n".join([lines[0], rule] + lines[1:])


# --- command line --------------------------------------------------------------------------------------

def evaluate(data_path: str, output_path: str) -> dict[str, Counts]:
    """Score the output file against the data file, print the table; the counts per printed row."""
    data = by_id(read_jsonl(data_path, ("id",)), data_path)
    output_rows = read_jsonl(output_path)
    mode = output_mode(output_rows, output_path)
    outputs = by_id([row for row in output_rows if integer_id(row, output_path) in data], output_path)
    rng = random.Random(42)
    results: dict[str, Counts] = {}
    for category, name in CATEGORIES.items():
        pairs = category_pairs(data, outputs, category, output_path)
        if mode == "response":
            correct = sum(response_correct(output, row, rng) for output, row in pairs)
        else:
            correct = sum(answer_correct(output, row) for output, row in pairs)
        results[name] = count(correct, len(pairs))
    correct_sum = sum(counts["correct_num"] for counts in results.values())
    entries_sum = sum(counts["entries_num"] for counts in results.values())
    if not entries_sum:
        raise ValueError(f"{data_path}: no question belongs to the six CMMMU categories")
    results["Overall"] = {"correct_num": correct_sum, "entries_num": entries_sum, "acc": correct_sum / entries_sum}
    table = [[name, counts["correct_num"], counts["entries_num"], counts["acc"]] for name, counts in results.items()]
    print(format_table(table))
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bunny.eval.cmmmu.eval_script", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--output_path", type=str, default="eval/example/Yi-VL-34B-answer.jsonl",
        help="the model's outputs: JSON lines {id, type, response} or {id, type, answer}",
    )
    parser.add_argument(
        "--data_path", type=str, default="eval/cmmmu/cmmmu-data-val-answer.jsonl",
        help="the val questions with their answers (JSON lines)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Counts]:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return evaluate(args.data_path, args.output_path)
    except (OSError, ValueError) as err:
        parser.exit(1, f"error: {err}\n")


if __name__ == "__main__":
    main()
