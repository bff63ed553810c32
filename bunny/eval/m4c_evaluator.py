"""The VQA answer normalisation of the EvalAI servers and the soft VQA accuracy scored with it.

Used by the VQAv2 and VizWiz converters (answers are normalised before upload) and by the TextVQA
scorer. Not a command; import `EvalAIAnswerProcessor` / `normalize_answer` and
`TextVQAAccuracyEvaluator`.

The normalisation reproduces the official VQA evaluation step by step, including its quirks:
* commas and `?` are dropped and `'s` split off before anything else;
* each punctuation mark is deleted when it touches a space somewhere in the answer, otherwise
  every occurrence of it becomes a space;
* a period is removed unless a digit follows it, and only the first 32 of them (the original
  passes `re.UNICODE`, which is 32, as the substitution count);
* number words and articles are handled word by word, then contractions are looked up in lower
  case (so the table's `Im`, `Ive`, `Id've`, `I'dve` never apply).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

# The VQA evaluation's contraction table, one "written form -> canonical form" pair a line.
_CONTRACTION_TABLE = """
    aint ain't          arent aren't          cant can't             couldve could've
    couldnt couldn't    couldn'tve couldn't've couldnt've couldn't've didnt didn't
    doesnt doesn't      dont don't            hadnt hadn't           hadnt've hadn't've
    hadn'tve hadn't've  hasnt hasn't          havent haven't         hed he'd
    hed've he'd've      he'dve he'd've        hes he's               howd how'd
    howll how'll        hows how's            Id've I'd've           I'dve I'd've
    Im I'm              Ive I've              isnt isn't             itd it'd
    itd've it'd've      it'dve it'd've        itll it'll             let's let's
    maam ma'am          mightnt mightn't      mightnt've mightn't've mightn'tve mightn't've
    mightve might've    mustnt mustn't        mustve must've         neednt needn't
    notve not've        oclock o'clock        oughtnt oughtn't       ow's'at 'ow's'at
    'ows'at 'ow's'at    'ow'sat 'ow's'at      shant shan't           shed've she'd've
    she'dve she'd've    she's she's           shouldve should've     shouldnt shouldn't
    shouldnt've shouldn't've                  shouldn'tve shouldn't've
    somebody'd somebodyd                      somebodyd've somebody'd've
    somebody'dve somebody'd've                somebodyll somebody'll somebodys somebody's
    someoned someone'd  someoned've someone'd've                     someone'dve someone'd've
    someonell someone'll                      someones someone's     somethingd something'd
    somethingd've something'd've              something'dve something'd've
    somethingll something'll                  thats that's           thered there'd
    thered've there'd've                      there'dve there'd've   therere there're
    theres there's      theyd they'd          theyd've they'd've     they'dve they'd've
    theyll they'll      theyre they're        theyve they've         twas 'twas
    wasnt wasn't        wed've we'd've        we'dve we'd've         weve we've
    werent weren't      whatll what'll        whatre what're         whats what's
    whatve what've      whens when's          whered where'd         wheres where's
    whereve where've    whod who'd            whod've who'd've       who'dve who'd've
    wholl who'll        whos who's            whove who've           whyll why'll
    whyre why're        whys why's            wont won't             wouldve would've
    wouldnt wouldn't    wouldnt've wouldn't've                       wouldn'tve wouldn't've
    yall y'all          yall'll y'all'll      y'allll y'all'll       yall'd've y'all'd've
    y'alld've y'all'd've                      y'all'dve y'all'd've   youd you'd
    youd've you'd've    you'dve you'd've      youll you'll           youre you're
    youve you've
"""


def _pairs(table: str) -> dict[str, str]:
    words = table.split()
    return dict(zip(words[::2], words[1::2]))


CONTRACTIONS: dict[str, str] = _pairs(_CONTRACTION_TABLE)
NUMBER_MAP: dict[str, str] = {
    word: str(value)
    for value, word in enumerate("zero one two three four five six seven eight nine ten".split())
}
NUMBER_MAP["none"] = "0"
ARTICLES = frozenset({"a", "an", "the"})
# Order is irrelevant: no replacement creates another mark.
PUNCTUATIONS = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")

_PERIOD = re.compile(r"\.(?!\d)")
_COMMA_IN_NUMBER = re.compile(r"(?<=\d),+(?=\d)")
# The original calls `sub(repl, text, re.UNICODE)`: the flag lands in the count argument.
_MAX_PERIODS_REMOVED = int(re.UNICODE)


def _tokenize(answer: str) -> str:
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return text.replace("\n", " ").replace("\t", " ").strip()


def _strip_punctuation(text: str, period_cap: bool = True) -> str:
    # Never true after `_tokenize` (it drops every comma), kept as the original has it.
    number_with_commas = _COMMA_IN_NUMBER.search(text) is not None
    out = text
    for mark in PUNCTUATIONS:
        touches_space = f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if touches_space or number_with_commas else " ")
    return _PERIOD.sub("", out, count=_MAX_PERIODS_REMOVED if period_cap else 0)


def _canonical_words(text: str) -> str:
    words = [NUMBER_MAP.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def normalize_answer(answer: str, period_cap: bool = True) -> str:
    """The EvalAI-normalised form of `answer` (see the module docstring). `period_cap=False` removes
    every period, not only the first 32 (the corrected score of `bunny.eval.corrections`)."""
    return _canonical_words(_strip_punctuation(_tokenize(answer), period_cap))


class EvalAIAnswerProcessor:
    """Callable form of `normalize_answer`, under the name the original scripts use."""

    def __call__(self, answer: str) -> str:
        return normalize_answer(answer)


def soft_accuracy(prediction: str, gt_answers: Sequence[str], period_cap: bool = True) -> float:
    """The VQA accuracy of one prediction against its 10 human answers, all EvalAI-normalised
    (`period_cap` as in `normalize_answer`): the mean over the 10 leave-one-out subsets of
    min(1, matches / 3)."""
    if len(gt_answers) != 10:
        raise ValueError(f"{len(gt_answers)} ground-truth answers; the VQA accuracy needs exactly 10")
    answers = [normalize_answer(answer, period_cap) for answer in gt_answers]
    predicted = normalize_answer(prediction, period_cap)
    matches = answers.count(predicted)
    if matches == 0:
        return 0.0
    # Summed in subset order, as the original does, so the float result is the same.
    per_subset = [min(1, float(matches - (answer == predicted)) / 3) for answer in answers]
    return sum(per_subset) / len(per_subset)


class TextVQAAccuracyEvaluator:
    """The mean soft VQA accuracy of a list of `{"pred_answer": str, "gt_answers": [10 str]}`."""

    def eval_pred_list(self, pred_list: Sequence[dict[str, Any]]) -> float:
        """0.0 for an empty list (the original divides by zero)."""
        scores = [soft_accuracy(entry["pred_answer"], entry["gt_answers"]) for entry in pred_list]
        return sum(scores) / len(scores) if scores else 0.0
