"""Stop strings: where a reply ends. The one implementation behind `generate`'s stopping criterion,
the terminal's streamer, the continuous-batching engine and the cleaning of finished replies.

A template's stop string is `Conversation.stop_str` (its end-of-turn string); requests may add
their own. Text is cut before the first stop string found; while a reply streams, its end is held
back as long as it could still grow into a stop string, so a client never sees part of one.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from transformers import StoppingCriteria, TextStreamer


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest of `stops` begins in `text`, or None."""
    hits = [text.index(stop) for stop in stops if stop and stop in text]
    return min(hits) if hits else None


def stop_prefix_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that could still grow into one of `stops`."""
    longest = 0
    for stop in stops:
        for size in range(min(len(text), len(stop) - 1), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


def visible_text(text: str, stops: Sequence[str], final: bool = False) -> tuple[str, bool]:
    """What of a reply may be shown, and whether a stop string ended it: the text before the first
    stop string; else, while it streams (not `final`), all but an incomplete character at its end
    and an end that may still grow into a stop string."""
    cut = first_stop(text, stops)
    if cut is not None:
        return text[:cut], True
    if final:
        return text, False
    shown = text.rstrip("\ufffd")
    return shown[: len(shown) - stop_prefix_len(shown, stops)], False


def clean_reply(text: str, stop_str: str | Sequence[str] | None) -> str:
    """Generated text -> the reply to show and keep: cut at the stop string, surrounding whitespace stripped.

    `text` should be decoded with `skip_special_tokens=True`; the stop string is cut here as well
    because it is not a special token for every template/tokenizer pair.
    """
    stops = [stop_str] if isinstance(stop_str, str) else list(stop_str or ())
    cut = first_stop(text, stops)
    return (text if cut is None else text[:cut]).strip()


class KeywordsStoppingCriteria(StoppingCriteria):
    """Stops each sequence of a batch on its own once it ends with one of `keywords`.

    The original stopped the batch only when every sequence matched, so finished rows kept
    generating; here finished rows stop and are padded by `generate`.
    """

    def __init__(self, keywords: Sequence[str], tokenizer: Any, input_ids: torch.Tensor) -> None:
        self.keywords = list(keywords)
        self.tokenizer = tokenizer
        self.keyword_ids = []
        for keyword in self.keywords:
            ids = tokenizer(keyword).input_ids
            if ids and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id and len(ids) > 1:
                ids = ids[1:]
            self.keyword_ids.append(torch.tensor(ids, dtype=torch.long))
        self.max_keyword_len = max(len(ids) for ids in self.keyword_ids)
        self.start_len = input_ids.shape[1]

    def _sequence_done(self, output_ids: torch.Tensor) -> bool:
        for ids in self.keyword_ids:
            if len(ids) and output_ids.shape[0] >= len(ids) and torch.equal(output_ids[-len(ids) :].cpu(), ids):
                return True
        offset = min(output_ids.shape[0] - self.start_len, self.max_keyword_len)
        if offset <= 0:
            return False
        text = self.tokenizer.decode(output_ids[-offset:], skip_special_tokens=True)
        return first_stop(text, self.keywords) is not None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor | None = None, **kwargs) -> torch.BoolTensor:
        done = [self._sequence_done(row) for row in input_ids]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class StopStringStreamer(TextStreamer):
    """`TextStreamer(skip_prompt=True, skip_special_tokens=True)` that prints nothing from the stop string on.

    Text that might be the start of the stop string is held back until the next piece decides it.
    """

    def __init__(self, tokenizer: Any, stop_str: str | None) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.stops = [stop_str] if stop_str else []
        self.held = ""
        self.stopped = False

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if not self.stopped:
            text = self.held + text
            shown, self.stopped = visible_text(text, self.stops, final=stream_end)
            self.held = "" if self.stopped else text[len(shown) :]
            print(shown, end="", flush=True)
        if stream_end:
            print(flush=True)
            self.held = ""
            self.stopped = False
