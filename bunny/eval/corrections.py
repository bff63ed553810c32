"""The corrected answer rules that `bunny.eval.scoring` reports beside the original's (legacy) scores.

The legacy scorers (`bunny.eval.<benchmark>.*`) reproduce the original's parsing exactly, quirks
included, because those are the numbers papers compare. Where a quirk is plainly wrong, the report also
gives a corrected score computed with the rules below; it never replaces the legacy one. Not a command.

Common to every corrected score: an answer drawn at random instead of read from the model's text, and a
question without an answer, count as wrong (legacy scores may leave them out or draw a letter).
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

from bunny.eval.cmmmu import eval_script as cmmmu
from bunny.eval.cmmmu.data import CHOICE, FILL_IN, TRUE_FALSE
from bunny.eval.mmmu.eval_mmmu import EDGE_PUNCTUATION, parse_multi_choice_letter

# What each benchmark's corrected score fixes (shown in the report).
CHANGES = {
    "pope": (
        "yes/no read case-insensitively: an answer whose first word is yes is yes, one whose first word is "
        "no or not is no (`NO`, `Not really.`), otherwise no when its first sentence has the word no or not; "
        "a question without an answer counts as the wrong label"
    ),
    "mmmu": (
        "edge punctuation , . ! ? ; : ' stripped as a set (`B,.` reads B); a response with no readable letter, "
        "a question not asked (several pictures) and a question without an answer are wrong instead of a "
        "random letter"
    ),
    "cmmmu": (
        "choice answers count option letters only where they stand alone (`DNA` is not A and D); true/false "
        "phrases with a negative word are negative (`不正确`); no random picks: no readable answer, a tie, "
        "a question not asked and a question without an answer are wrong"
    ),
    "scienceqa": "image questions without an answer count in the IMG-Accuracy denominator (as wrong)",
    "textvqa": (
        "every period is removed by the EvalAI normalisation (the original stops after 32); questions "
        "without an answer score 0 and count in the denominator"
    ),
}

_FIRST_SENTENCE_WORDS = re.compile(r"[a-z]+")
_NEGATIVE_WORDS = frozenset({"no", "not"})


def pope_label(text: str) -> str:
    """`yes` or `no` for a POPE answer, case-insensitively: the first word decides when it is yes, no or
    not; otherwise the answer is no when its first sentence (text before the first `.`) has the word no
    or not. Legacy (`eval_pope.answer_label`) matches only `No`, `no`, `not` as written, so `NO` and
    `Not really.` are yes, and `Yes, there is no doubt.` is no."""
    words = _FIRST_SENTENCE_WORDS.findall(text.split(".")[0].lower())
    if words and words[0] == "yes":
        return "yes"
    return "no" if _NEGATIVE_WORDS.intersection(words) else "yes"


def mmmu_letter(response: str, all_choices: Sequence[str], index2ans: Mapping[str, str]) -> str | None:
    """The letter an MMMU multiple-choice response picks, or None when none can be read (wrong, where
    legacy draws a random letter). The edge punctuation is stripped as a set, not one mark after the
    other (legacy reads `B,.` as `B,` and falls back to a random letter); then the legacy rules."""
    return parse_multi_choice_letter(response.strip("".join(EDGE_PUNCTUATION)), all_choices, index2ans)


def standalone_count(text: str, letter: str) -> int:
    """How often the ASCII capital `letter` occurs with no ASCII letter on either side (so `答案是A` and
    `A.` count, `DNA` does not; `\\b` would not do, Chinese characters are word characters)."""
    return len(re.findall(rf"(?<![A-Za-z]){re.escape(letter)}(?![A-Za-z])", text))


def cmmmu_choice(response: str, index2ans: Mapping[str, str]) -> str | None:
    """The letters a CMMMU choice response picks, concatenated in A-D order: the most frequent among `(X)`
    markers, else among standalone letters, else among occurrences of the option texts, counting only
    the letters that have an option; None when nothing is found (legacy counts every capital A-D, so
    `DNA` is A and D, and draws a random letter)."""
    text = response.strip("".join(EDGE_PUNCTUATION))
    options = {letter: option for letter, option in index2ans.items() if option}
    counts = {letter: text.count(f"({letter})") for letter in options}
    if not any(counts.values()):
        counts = {letter: standalone_count(text, letter) for letter in options}
    if not any(counts.values()):
        counts = {letter: text.count(option) for letter, option in options.items()}
    if not any(counts.values()):
        return None
    top = max(counts.values())
    return "".join(letter for letter in options if counts[letter] == top)


def cmmmu_true_false(response: str) -> str | None:
    """对 or 错 by majority of the unambiguous key phrases (legacy extraction): a phrase with a negative
    word (不对, 错误, 不正确, ...) is negative, else one with a positive word is positive; None on a tie
    (legacy counts `不正确` as positive, because it contains 正确, and breaks ties at random)."""
    phrases = cmmmu.get_true_false_prediction(response)
    kept = [phrase for phrase in phrases if not any(word in phrase for word in cmmmu.AMBIGUOUS)]
    negative = sum(any(word in phrase for word in cmmmu.NEGATIVE) for phrase in kept)
    positive = sum(
        not any(word in phrase for word in cmmmu.NEGATIVE) and any(word in phrase for word in cmmmu.POSITIVE)
        for phrase in kept
    )
    if positive == negative:
        return None
    return "对" if positive > negative else "错"


def cmmmu_correct(response: str, row: Mapping[str, object]) -> bool:
    """Whether a CMMMU response answers its data row (`type`, `answer`, `option1..4`) under the corrected
    rules; fill-in answers keep the legacy matching. The data row's type picks the rule."""
    gold = row.get("answer")
    if row.get("type") == CHOICE:
        return bool(response) and cmmmu_choice(response, cmmmu.choice_options(dict(row))) == gold
    if row.get("type") == TRUE_FALSE:
        return cmmmu_true_false(response) == gold
    if row.get("type") == FILL_IN and isinstance(gold, str):
        return cmmmu.fill_in_correct(cmmmu.get_fill_blank_prediction(response, gold), cmmmu.normalize_str(gold, gold))
    return False
