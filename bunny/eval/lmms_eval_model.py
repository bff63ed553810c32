"""Bunny checkpoints as an lmms-eval model, so lmms-eval's task zoo runs on them.

Run as:
    pip install -e '.[lmms-eval]'
    lmms-eval --model bunny --tasks pope --batch_size 8 \\
        --model_args pretrained=PATH,model_type=phi-2[,model_base=BASE,conv_mode=bunny,device=cpu]

lmms-eval 0.7 finds models outside its own tree through the Python entry-point group
`lmms_eval.models`; bunny declares `bunny = "bunny.eval.lmms_eval_entry:manifest"` there, so
installing bunny beside lmms-eval is all it takes (nothing in lmms-eval is edited).

Answers come from the same path as the project's own generators (`bunny.eval.answering`): each
request's text becomes the user turn of a single-turn chat in the model type's template, with the
picture first (the model's aspect-ratio mode), and greedy answers do not depend on `--batch_size`.
A task's `until` strings cut the (stripped) answer where the first of them begins, after
generation, so greedy answers are what stopping there would give; the template's own stop string
always ends it. `loglikelihood` scores a continuation after the chat prompt with one forward pass.

Bunny reads one picture per question: a request with several answers about the first and logs a
warning naming the task and document; visuals that are not pictures (video, audio) are a TypeError.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
from PIL import Image
from tqdm import tqdm

from bunny.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from bunny.eval.answering import LoadedModel, Prompt, Settings, answer_prompts, pixel_values
from bunny.inference.generate import to_model_inputs
from bunny.inference.prompts import chat_prompt, resolve_conv_mode
from bunny.inference.stops import clean_reply
from bunny.util.tokens import tokenizer_image_token

try:
    from lmms_eval.api.model import lmms as LmmsInterface
except ImportError:  # lmms-eval not installed: the class still works when driven directly (the tests do)
    LmmsInterface = object

logger = logging.getLogger(__name__)

# generation_kwargs keys a task may set that mean something here; others are reported, not used
GENERATION_KEYS = ("until", "max_new_tokens", "temperature", "do_sample", "top_p", "num_beams")


@dataclass(frozen=True)
class Request:
    """What one lmms-eval request asks, read from its `args` and its document."""

    task: str
    doc_id: Any
    text: str  # the task's context, without an image marker
    image: Image.Image | None


def generation_settings(
    gen_kwargs: dict[str, Any], conv_mode: str, default_max_new_tokens: int
) -> tuple[Settings, tuple[str, ...]]:
    """A task's `generation_kwargs` -> Bunny's `Settings` and the `until` strings.

    Greedy unless sampling is asked for (`do_sample`, or a temperature above 0 when `do_sample` is
    not given); `do_sample: false` is greedy whatever the temperature, as in transformers.
    """
    until = gen_kwargs.get("until") or ()
    if isinstance(until, str):
        until = (until,)
    elif not isinstance(until, (list, tuple)):
        raise TypeError(f"generation_kwargs 'until' must be a string or a list of strings, not {until!r}")
    temperature = float(gen_kwargs.get("temperature") or 0.0)
    do_sample = gen_kwargs.get("do_sample", temperature > 0)
    if do_sample and temperature == 0:
        temperature = 1.0  # transformers' default when sampling is asked for without a temperature
    settings = Settings(
        conv_mode=conv_mode,
        max_new_tokens=int(gen_kwargs.get("max_new_tokens") or default_max_new_tokens),
        temperature=temperature if do_sample else 0.0,
        top_p=gen_kwargs.get("top_p") if do_sample else None,
        num_beams=int(gen_kwargs.get("num_beams") or 1),
    )
    return settings, tuple(stop for stop in until if stop)


def single_image(visuals: Any, task: str, doc_id: Any) -> Image.Image | None:
    """The picture a request is about: None for no visuals, the first of several (with a warning)."""
    if visuals is None:
        return None
    visuals = list(visuals) if isinstance(visuals, (list, tuple)) else [visuals]
    for visual in visuals:
        if not isinstance(visual, Image.Image):
            raise TypeError(
                f"task {task!r}, doc {doc_id}: Bunny reads pictures only, but doc_to_visual gave a "
                f"{type(visual).__name__} ({str(visual)[:80]!r})"
            )
    if len(visuals) > 1:
        logger.warning(
            "task %r, doc %s: %d pictures, but Bunny reads one per question; answering about the first",
            task, doc_id, len(visuals),
        )
    return visuals[0] if visuals else None


def without_image_marker(text: str, task: str, doc_id: Any) -> str:
    """The task's text with any `<image>` marker removed: the chat template puts the picture first,
    as Bunny was trained (a marker left in would ask for a second picture)."""
    if DEFAULT_IMAGE_TOKEN not in text:
        return text
    logger.warning(
        "task %r, doc %s: %s removed from the text; a picture goes first, as Bunny was trained",
        task, doc_id, DEFAULT_IMAGE_TOKEN,
    )
    return text.replace(DEFAULT_IMAGE_TOKEN + "\n", "").replace(DEFAULT_IMAGE_TOKEN, "")


def ignored_keys(gen_kwargs: Iterable[dict[str, Any]]) -> list[str]:
    """Generation keys of a task that this model does not use."""
    return sorted({key for kwargs in gen_kwargs for key in kwargs if key not in GENERATION_KEYS})


def batch_size_of(value: int | str) -> int:
    """`--batch_size` (or `batch_size=` in `--model_args`) as an integer of at least 1."""
    if not str(value).isdigit() or int(value) < 1:
        raise ValueError(f"the bunny model takes a whole batch size of at least 1, not {value!r} ('auto' is not supported)")
    return int(value)


def continuation_ids(tokenizer: Any, prompt: str, continuation: str) -> tuple[list[int], list[int]]:
    """`(context ids, continuation ids)` for scoring `continuation` after `prompt`: the whole text is
    tokenised and split where the context's own ids end, so a word is scored as the model would
    write it; spaces ending the context move to the continuation first."""
    stripped = prompt.rstrip(" ")
    continuation = prompt[len(stripped):] + continuation
    context = tokenizer_image_token(stripped, tokenizer, IMAGE_TOKEN_INDEX)
    whole = tokenizer_image_token(stripped + continuation, tokenizer, IMAGE_TOKEN_INDEX)
    return whole[: len(context)], whole[len(context):]


class Bunny(LmmsInterface):
    """lmms-eval's `lmms` interface on a Bunny checkpoint (`--model bunny`)."""

    is_simple = True  # takes the task's text and visuals, not chat messages

    def __init__(
        self,
        pretrained: str,
        model_type: str,
        model_base: str | None = None,
        conv_mode: str | None = None,
        device: str | None = None,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        max_new_tokens: int = 1024,
    ) -> None:
        super().__init__()
        self.task_dict: dict[str, Any] = {}  # lmms-eval fills it: task -> split -> documents
        self._rank, self._world_size = 0, 1  # the evaluator sets them when it runs several processes
        if max_batch_size is not None:
            logger.warning("max_batch_size=%s is for --batch_size auto, which bunny does not support; ignored", max_batch_size)
        self.batch_size_per_gpu = batch_size_of(batch_size)
        self.max_new_tokens = max_new_tokens
        self.conv_mode = resolve_conv_mode(model_type, conv_mode)
        self._device = torch.device(resolve_device(device))
        self.loaded = load(pretrained, model_base, model_type, str(self._device))

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    def read_request(self, context: str, doc_to_visual: Callable | None, doc_id: Any, task: str, split: str) -> Request:
        """The text and picture of one request; its document is `task_dict[task][split][doc_id]`."""
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else None
        image = single_image(visuals, task, doc_id)
        if image is not None and self.loaded.image_processor is None:
            raise ValueError(f"task {task!r}, doc {doc_id}: the checkpoint has no vision tower to read the picture with")
        return Request(task, doc_id, without_image_marker(context, task, doc_id), image)

    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        """One answer per request, in order; each request's `args` are `(context, generation_kwargs,
        doc_to_visual, doc_id, task, split)`."""
        asked, plans = [], []
        for context, gen_kwargs, doc_to_visual, doc_id, task, split in (req.args for req in requests):
            asked.append(self.read_request(context, doc_to_visual, doc_id, task, split))
            plans.append(generation_settings(gen_kwargs or {}, self.conv_mode, self.max_new_tokens))
        unused = ignored_keys(req.args[1] or {} for req in requests)
        if unused:
            logger.warning("generation_kwargs %s mean nothing to the bunny model and are not used", unused)
        answers: list[str | None] = [None] * len(requests)
        for settings, rows in group_rows([settings for settings, _ in plans], asked).items():
            prompts = [Prompt(asked[row].text, image_loader(asked[row].image)) for row in rows]
            replies = answer_prompts(prompts, self.loaded, settings, self.batch_size, progress=self.rank == 0)
            for row, reply in zip(rows, replies):
                answers[row] = clean_reply(reply, plans[row][1])
        return answers

    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        """`(log-probability of the continuation, whether greedy decoding would write it)` per request;
        `args` are `(context, continuation or doc_to_target, doc_to_visual, doc_id, task, split)`, or
        `(context, continuation)` for text alone."""
        results = []
        for req in tqdm(requests, desc="scoring", unit="continuation", disable=self.rank != 0):
            context, target, *where = req.args
            if where:
                doc_to_visual, doc_id, task, split = where
                continuation = target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])
                asked = self.read_request(context, doc_to_visual, doc_id, task, split)
            else:
                continuation, asked = target, Request("", None, context, None)
            results.append(self.score(asked, str(continuation)))
        return results

    def score(self, asked: Request, continuation: str) -> tuple[float, bool]:
        """Log-probability of `continuation` after the chat prompt of `asked`, from one forward pass."""
        prompt = chat_prompt(self.conv_mode, asked.text, image=asked.image is not None)
        context, tail = continuation_ids(self.loaded.tokenizer, prompt, continuation)
        if not tail:
            return 0.0, True
        model = self.loaded.model
        input_ids = torch.tensor([context + tail], device=self.device)
        images = pixel_values([asked.image], self.loaded, pad=True) if asked.image is not None else None
        with torch.inference_mode():
            logits = model(input_ids=input_ids, images=to_model_inputs(images, model), use_cache=False).logits
        # each image placeholder becomes image_token_count positions; the continuation ends the sequence
        expected = input_ids.shape[1] + (model.image_token_count - 1 if images is not None else 0)
        if logits.shape[1] != expected:
            raise ValueError(
                f"task {asked.task!r}, doc {asked.doc_id}: {expected} positions do not fit the model "
                f"(it kept {logits.shape[1]}; tokenizer_model_max_length is the limit)"
            )
        predicted = torch.log_softmax(logits[0, -len(tail) - 1 : -1].float(), dim=-1)  # [len(tail), vocab]
        targets = torch.tensor(tail, device=predicted.device)
        logprob = predicted.gather(1, targets[:, None]).sum().item()
        return logprob, bool((predicted.argmax(dim=-1) == targets).all())

    def generate_until_multi_round(self, requests: Sequence[Any]) -> list[str]:
        tasks = sorted({req.args[-2] for req in requests})
        raise NotImplementedError(f"the bunny model answers single-turn questions; multi-round tasks {tasks} are not supported")

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict[str, Any] | None = None) -> Bunny:
        """`--model_args` plus lmms-eval's `--batch_size`/`--device`; a key in both is taken from
        `--model_args` (lmms-eval always passes `--batch_size`, 1 by default)."""
        from lmms_eval.utils import simple_parse_args_string

        args = simple_parse_args_string(arg_string)
        for key, value in (additional_config or {}).items():
            if value is None:
                continue
            if key in args and str(args[key]) != str(value):
                logger.warning("%s=%s in --model_args is used, not --%s %s", key, args[key], key, value)
            args.setdefault(key, value)
        return cls(**args)


def resolve_device(device: str | None) -> str:
    """`device`, by default CUDA when available; plain `cuda` under torchrun is this process's GPU."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return device


def load(pretrained: str, model_base: str | None, model_type: str, device: str) -> LoadedModel:
    """The checkpoint, loaded as the project's generators load it."""
    from bunny.model.builder import load_pretrained_model
    from bunny.util.utils import torch_init_skipped

    with torch_init_skipped():
        tokenizer, model, image_processor, _ = load_pretrained_model(pretrained, model_base, None, model_type, device=device)
    return LoadedModel(tokenizer, model, image_processor)


def image_loader(image: Image.Image | None) -> Callable[[], Image.Image] | None:
    """The picture as `Prompt.image` takes it (a loader), or None."""
    return None if image is None else (lambda: image)


def group_rows(settings: Sequence[Settings], asked: Sequence[Request]) -> dict[Settings, list[int]]:
    """Rows that share generation settings, each group with pictures first and longer texts first
    (fewer batches and less padding; answers do not depend on the batch)."""
    groups: dict[Settings, list[int]] = {}
    for row, setting in enumerate(settings):
        groups.setdefault(setting, []).append(row)
    for rows in groups.values():
        rows.sort(key=lambda row: (asked[row].image is None, -len(asked[row].text)))
    return groups
