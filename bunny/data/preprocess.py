"""Training conversations -> token ids and labels, exactly as the original trained on them.

The prompt is rendered as a list of segments, each either supervised (an assistant reply and the
end string after it) or not (system prompt, user turns, role names, the image placeholder). The
whole prompt is tokenised once, with character offsets, and every token takes the label of the
segment it starts in: ids and labels come out of the same pass and cannot disagree.

The original computed its masks differently (token counts of re-tokenised pieces, with fixed
offsets) and, when those counts did not add up, printed "tokenization mismatch" and silently
masked the whole sample, which then trained at loss 0. Its arithmetic is kept here as a check
(`reference_labels`): when it agrees with the segments, the labels are the original's; when it
does not, the template does not fit the tokenizer and we stop with an error naming the sample,
the template and the likely fix, unless `mismatch="mask"` asks for the original's behaviour.
"""

from __future__ import annotations

import bisect
import copy
import logging
from dataclasses import dataclass
from typing import Any, Sequence

from bunny.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from bunny.conversation import Conversation, Segment, SeparatorStyle, conv_templates, get_conv_template
from bunny.model.backbones import templates_by_model_type
from bunny.util.tokens import tokenizer_image_token

logger = logging.getLogger(__name__)

MISMATCH_MODES = ("error", "mask")
ROLE_NAMES = ("human", "gpt")


class TokenizationMismatchError(ValueError):
    """The conversation template does not fit the tokenizer: the labels would be wrong or empty."""


class DataFormatError(ValueError):
    """A training sample that does not follow the LLaVA conversation format."""


@dataclass
class TokenizedSample:
    prompt: str
    input_ids: list[int]
    labels: list[int]
    # Why every label is IGNORE_INDEX, when it is (only in mismatch="mask" mode).
    fully_masked: str | None = None

    @property
    def num_supervised(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


# -- conversations -------------------------------------------------------------------------------
def move_image_to_front(conversations: list[dict[str, str]]) -> list[dict[str, str]]:
    """A copy where every turn mentioning `<image>` starts with `"<image>\\n"` and has no other marker."""
    turns = copy.deepcopy(conversations)
    for turn in turns:
        if DEFAULT_IMAGE_TOKEN in turn["value"]:
            text = turn["value"].replace(DEFAULT_IMAGE_TOKEN, "").strip()
            turn["value"] = (DEFAULT_IMAGE_TOKEN + "\n" + text).strip()
    return turns


def check_conversations(sample: Any, where: str) -> None:
    """Raise `DataFormatError` naming `where` unless `sample` is a LLaVA-format training sample."""
    if not isinstance(sample, dict):
        raise DataFormatError(f"{where}: expected an object with 'conversations', got {type(sample).__name__}")
    turns = sample.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise DataFormatError(f"{where}: 'conversations' must be a non-empty list of turns")
    for j, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise DataFormatError(f"{where}, turn {j}: expected {{'from': ..., 'value': <string>}}, got {turn!r:.80}")
        if turn.get("from") not in ROLE_NAMES:
            raise DataFormatError(f"{where}, turn {j}: 'from' is {turn.get('from')!r}, expected 'human' or 'gpt'")
    check_turns(turns, where)
    if "image" in sample:
        if not isinstance(sample["image"], str):
            raise DataFormatError(f"{where}: 'image' must be a path string, got {sample['image']!r:.80}")
        marked = [j for j, turn in enumerate(turns) if DEFAULT_IMAGE_TOKEN in turn["value"]]
        if len(marked) > 1:  # one placeholder per marked turn, one image: the splice can't match them
            raise DataFormatError(
                f"{where}: turns {marked} each mention {DEFAULT_IMAGE_TOKEN}, but the sample has one image; "
                "mark it in one turn only"
            )


def check_turns(turns: list[dict[str, str]], where: str) -> None:
    """Human and gpt turns that alternate (a leading gpt turn is dropped, as in the original, which
    crashed on turns out of order)."""
    first = 1 if turns[0]["from"] != "human" else 0
    if first == len(turns):
        raise DataFormatError(f"{where}: only a gpt turn, which is dropped; a sample needs a human turn and its reply")
    for j, turn in enumerate(turns[first:], start=first):
        if turn["from"] != ROLE_NAMES[(j - first) % 2]:
            raise DataFormatError(f"{where}: turn {j} is from {turn['from']!r}; turns must alternate human/gpt")


def content_problem(turns: list[dict[str, str]], has_image: bool) -> str | None:
    """What is wrong with a well-formed sample that the original trained on without a word (or
    blamed on "tokenization mismatch"): an unanswered question, an empty turn, an unused image."""
    first = 1 if turns[0]["from"] != "human" else 0  # dropped
    for j, turn in enumerate(turns[first:], start=first):
        if not turn["value"].strip():
            what = "question (human)" if turn["from"] == "human" else "reply (gpt)"
            return f"turn {j}: the {what} is empty; fill it or drop the turn pair"
    if turns[-1]["from"] == "human":
        return (
            f"the last turn (turn {len(turns) - 1}) is a question from 'human' with no reply; "
            "every human turn needs a gpt reply after it"
        )
    if has_image and not any(DEFAULT_IMAGE_TOKEN in turn["value"] for turn in turns[first:]):
        return (
            f"it has an image but no {DEFAULT_IMAGE_TOKEN} marker in its turns, so the image is unused; "
            f"put {DEFAULT_IMAGE_TOKEN!r} at the start of the first human turn"
        )
    return None


def training_template(version: str | None) -> Conversation:
    """The template `--version` names; as in the original, an unknown or missing one means `default`."""
    if version not in conv_templates:
        logger.warning("conversation template %r is unknown; using 'default' (known: %s)", version, sorted(conv_templates))
        version = "default"
    return get_conv_template(version)


def template_variant(template: Conversation, tokenizer: Any) -> str:
    """Which of the original's routines a template uses: `plain`, `no_bos` or `bos`."""
    if template.sep_style == SeparatorStyle.PLAIN:
        return "plain"
    if template.version == "bunny":
        return "no_bos"
    if template.version in ("minicpm", "llama"):
        return "bos"
    if template.version == "phi3":
        # Phi-3's tokenizer stopped adding BOS in June 2024; the template follows the tokenizer.
        return "no_bos" if len(tokenizer("").input_ids) == 0 else "bos"
    raise ValueError(f"no training preprocessing for conversation template version {template.version!r}")


def render_segments(conversations: list[dict[str, str]], template: Conversation, where: str) -> list[Segment]:
    """The prompt the template renders for these turns, cut into supervised and unsupervised pieces.

    `"".join(s.text for s in segments)` is exactly the template's prompt (`Conversation.get_prompt`).
    """
    if template.sep_style == SeparatorStyle.PLAIN:
        if len(conversations) != 2 or DEFAULT_IMAGE_TOKEN not in conversations[0]["value"]:
            raise DataFormatError(
                f"{where}: pretraining samples (template 'plain') need exactly two turns, the first with <image>"
            )
        # The instruction is dropped: the caption follows the image directly.
        return [Segment(DEFAULT_IMAGE_TOKEN, False), Segment(conversations[1]["value"] + template.sep, True)]

    check_turns(conversations, where)
    turns = conversations[1:] if conversations[0]["from"] != "human" else conversations
    conv = template.copy()
    conv.messages = []
    for j, turn in enumerate(turns):
        conv.append_message(conv.roles[j % 2], turn["value"])
    return conv.segments()


# -- tokenisation --------------------------------------------------------------------------------
def encode_with_offsets(
    text: str, tokenizer: Any, has_image: bool, max_length: int | None = None
) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of `text` and each id's character span.

    With an image, `<image>` becomes `IMAGE_TOKEN_INDEX` and the ids are those of
    `tokenizer_image_token`; without, those of `tokenizer(text, truncation=True, max_length=...)`.
    """
    if not has_image:
        encoded = tokenizer(text, truncation=max_length is not None, max_length=max_length, return_offsets_mapping=True)
        return list(encoded["input_ids"]), [tuple(span) for span in encoded["offset_mapping"]]
    ids: list[int] = []
    spans: list[tuple[int, int]] = []
    bos = tokenizer.bos_token_id
    start = 0
    drop_first = False
    for i, chunk in enumerate(text.split(DEFAULT_IMAGE_TOKEN)):
        if i > 0:
            ids.append(IMAGE_TOKEN_INDEX)
            spans.append((start - len(DEFAULT_IMAGE_TOKEN), start))
        encoded = tokenizer(chunk, return_offsets_mapping=True)
        chunk_ids = list(encoded["input_ids"])
        chunk_spans = [(start + s, start + e) for s, e in encoded["offset_mapping"]]
        if i == 0 and chunk_ids and bos is not None and chunk_ids[0] == bos:
            # One BOS for the whole prompt; every chunk's own leading BOS is dropped.
            ids.append(bos)
            spans.append((0, 0))
            drop_first = True
        if drop_first:
            chunk_ids, chunk_spans = chunk_ids[1:], chunk_spans[1:]
        ids += chunk_ids
        spans += chunk_spans
        start += len(chunk) + len(DEFAULT_IMAGE_TOKEN)
    return ids, spans


def segment_labels(
    ids: Sequence[int], spans: Sequence[tuple[int, int]], segments: Sequence[Segment]
) -> tuple[list[int], list[str]]:
    """Labels from the segment each token starts in, and the tokens that straddle two segments."""
    starts = []
    position = 0
    for segment in segments:
        starts.append(position)
        position += len(segment.text)
    labels: list[int] = []
    straddling: list[str] = []
    for token, (start, end) in zip(ids, spans):
        k = bisect.bisect_right(starts, start) - 1
        labels.append(token if segments[k].supervised else IGNORE_INDEX)
        if k + 1 < len(starts) and end > starts[k + 1]:
            straddling.append(f"token {token} spans characters {start}..{end} across a supervised/unsupervised boundary")
    return labels, straddling


def reference_labels(
    prompt: str, input_ids: Sequence[int], tokenizer: Any, template: Conversation, variant: str, has_image: bool
) -> tuple[list[int], bool]:
    """The original's labels for `input_ids` by its own arithmetic, and whether its round lengths add
    up to the tokenised prompt (when they don't, the template does not fit the tokenizer).

    Kept as the check on `segment_labels`: it re-tokenises each round and instruction and counts.
    Given the whole (untruncated) sample, the check covers every round; the original checked only
    while its running length was below `model_max_length`, so a long sample escaped it.
    """
    def count(text: str) -> int:
        return len(tokenizer_image_token(text, tokenizer)) if has_image else len(tokenizer(text).input_ids)

    labels = list(input_ids)
    n = len(labels)

    def ignore(begin: int, end: int) -> None:
        for p in range(max(begin, 0), min(end, n)):
            labels[p] = IGNORE_INDEX

    if variant == "plain":
        ignore(0, count(DEFAULT_IMAGE_TOKEN))
        return labels, True

    total = sum(token != tokenizer.pad_token_id for token in input_ids)
    separator = template.sep + template.roles[1] + ": "
    position = 1 if variant == "bos" else 0
    ignore(0, position)
    rounds = 0
    for piece in prompt.split(template.sep2):
        if piece == "":
            break
        parts = piece.split(separator)
        if len(parts) != 2:
            break
        instruction = parts[0] + separator
        if variant == "bos":
            round_len, instruction_len = count(piece), count(instruction) - 2
        else:
            round_len, instruction_len = count(piece) + 1, count(instruction) - 1
        ignore(position, position + instruction_len)
        position += round_len
        rounds += 1
    ignore(position, n)
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        position -= rounds  # the end tokens were not counted in `total`
    return labels, position == total


def _likely_fix(template: Conversation, tokenizer: Any, variant: str) -> str:
    adds_bos = tokenizer.bos_token_id is not None and tokenizer("a").input_ids[:1] == [tokenizer.bos_token_id]
    if variant == "no_bos" and adds_bos:
        return "this tokenizer adds a BOS token, which template %r does not expect" % template.version
    if variant == "bos" and not adds_bos:
        return "this tokenizer adds no BOS token, which template %r expects" % template.version
    end = template.sep2
    if end is not None and len(tokenizer(end, add_special_tokens=False).input_ids) != 1:
        return f"the template's end string {end!r} is not a single token of this tokenizer"
    return "the tokenizer splits the template's text differently from what the template expects"


def tokenize_sample(
    conversations: list[dict[str, str]],
    tokenizer: Any,
    template: Conversation,
    has_image: bool,
    mismatch: str = "error",
    where: str = "sample",
    image_tokens: int | None = None,
) -> TokenizedSample:
    """Ids and labels for one training sample (its conversations after `move_image_to_front`).

    Text-only samples are truncated to `tokenizer.model_max_length`, as the original's tokenizer
    call did (the first ids of the whole prompt: Bunny's tokenizers add nothing at the end);
    samples with an image are not (the model truncates after splicing in `image_tokens` features
    per image, when given, and that truncation is taken into account). The template is checked
    against the tokenizer on the whole sample, before any truncation. `where` names the sample in
    errors.
    """
    if mismatch not in MISMATCH_MODES:
        raise ValueError(f"tokenization_mismatch must be one of {MISMATCH_MODES}, got {mismatch!r}")
    problem = content_problem(conversations, has_image)
    if problem is not None:
        if mismatch == "error":
            raise DataFormatError(f"{where}: {problem}")
        logger.warning("%s: %s; trained on as the original did", where, problem)
    variant = template_variant(template, tokenizer)
    segments = render_segments(conversations, template, where)
    prompt = "".join(segment.text for segment in segments)
    image_mode = has_image or variant == "plain"
    ids, spans = encode_with_offsets(prompt, tokenizer, image_mode)
    labels, straddling = segment_labels(ids, spans, segments)
    original, aligned = reference_labels(prompt, ids, tokenizer, template, variant, image_mode)
    limit = None if image_mode else tokenizer.model_max_length
    if aligned and not straddling and labels == original:
        return _check_supervised(_truncated(prompt, ids, labels, limit), tokenizer, mismatch, where, image_tokens)

    reason = _likely_fix(template, tokenizer, variant)
    if mismatch == "error":
        detail = straddling[0] if straddling else "the original's round lengths do not add up to the tokenised prompt"
        raise TokenizationMismatchError(
            f"tokenization mismatch in {where} with conversation template {template.version!r}: {reason} "
            f"({detail}). Likely fix: pass the --version that matches --model_type ({templates_by_model_type()}) and the "
            f"tokenizer of that LLM; check a data file with `python -m bunny.data.inspect`. "
            f"--tokenization_mismatch mask trains on as the original did (this sample then gives no loss)."
        )
    if not aligned:
        # The original masked such a sample whole, unless it was longer than model_max_length: then
        # it trained on labels shifted off their tokens. Masked whole here, whatever its length.
        logger.warning("tokenization mismatch in %s with template %r: %s; it contributes no loss", where, template.version, reason)
        sample = _truncated(prompt, ids, [IGNORE_INDEX] * len(ids), limit)
        return TokenizedSample(sample.prompt, sample.input_ids, sample.labels, fully_masked=problem or "tokenization mismatch")
    logger.warning("tokenization mismatch in %s with template %r: %s; its labels follow the original", where, template.version, reason)
    return _check_supervised(_truncated(prompt, ids, original, limit), tokenizer, mismatch, where, image_tokens)


def _truncated(prompt: str, ids: list[int], labels: list[int], limit: int | None) -> TokenizedSample:
    return TokenizedSample(prompt, ids[:limit], labels[:limit])


def supervised_within(labels: Sequence[int], input_ids: Sequence[int], max_length: int, image_tokens: int | None) -> int:
    """How many supervised labels survive truncation to `max_length` positions after the splice."""
    position = 0
    kept = 0
    for token, label in zip(input_ids, labels):
        if position >= max_length:
            break
        kept += label != IGNORE_INDEX
        position += image_tokens if token == IMAGE_TOKEN_INDEX and image_tokens else 1
    return kept


def _check_supervised(
    sample: TokenizedSample, tokenizer: Any, mismatch: str, where: str, image_tokens: int | None
) -> TokenizedSample:
    """A sample with nothing left to learn from is an error (or, in `mask` mode, reported as such)."""
    max_length = tokenizer.model_max_length
    if supervised_within(sample.labels, sample.input_ids, max_length, image_tokens):
        return sample
    if sample.num_supervised:
        reason = f"no supervised token within model_max_length {max_length} (after splicing in the image)"
    else:
        reason = f"no supervised token (truncated to model_max_length {max_length}, or empty replies)"
    if mismatch == "error":
        raise TokenizationMismatchError(
            f"{where}: {reason}; raise --model_max_length, shorten or drop the sample, or pass "
            f"--tokenization_mismatch mask to keep it with no loss as the original did"
        )
    logger.warning("%s: %s; it contributes no loss", where, reason)
    return TokenizedSample(sample.prompt, sample.input_ids, sample.labels, fully_masked=reason)
