"""Score MM-Vet answers with an LLM judge at any OpenAI-compatible chat-completions URL.

Run as:
    python -m bunny.eval.mm_vet.judge --mm-vet-json eval/mm-vet/mm-vet.json \
        --answers eval/mm-vet/answers/bunny-phi-2.jsonl --judge-url http://127.0.0.1:8000/v1 \
        --judge-model gpt-4-0613 [--api-key-env OPENAI_API_KEY] [--cache FILE] [--output FILE] \
        [--judge-prompt-file FILE] [--concurrency N]

MM-Vet grades each answer with a judge model: given the question, the ground truth (where `<AND>`
joins elements that are all needed and `<OR>` joins alternatives of which one suffices) and the
prediction, the judge replies with a correctness score from 0.0 to 1.0 in steps of 0.1. The total
score is the mean x100 over all questions of `mm-vet.json`, also given per capability (rec, ocr,
know, gen, spat, math) and per combination of capabilities.

The judge is asked at temperature 0 with a small `max_tokens`. Its reply is read as the first number
in it, which must lie in [0, 1]; an unreadable reply is asked again at a higher temperature (as
MM-Vet's own evaluator does), and after `UNREADABLE_TEMPERATURES` is exhausted the question is
listed in `failed` and scored 0. A question without an answer is listed in `missing`, scored 0 and
not asked. Every readable reply is appended to a JSON-lines cache keyed by a hash of (judge model,
full prompt) as soon as it arrives, so a rerun asks only what is not there yet.

The built-in grading prompt is this project's own wording of MM-Vet's rule. Only MM-Vet's official
prompt (`--judge-prompt-file`, a text file with `{question}`, `{answer}` and `{prediction}`) graded
by the GPT-4 model of the leaderboard gives numbers comparable to the leaderboard's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Sequence

from tqdm import tqdm

from bunny.eval.common import read_json, read_jsonl
from bunny.eval.mm_vet.convert_mmvet_for_eval import mmvet_results
from bunny.util.utils import atomic_write

logger = logging.getLogger(__name__)

CAPABILITIES = ("rec", "ocr", "know", "gen", "spat", "math")  # MM-Vet's order, used for every listing
PLACEHOLDERS = ("question", "answer", "prediction")
PLACEHOLDER_PATTERN = re.compile(r"\{(question|answer|prediction)\}")
NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+(?:\.\d+)?|\.\d+)")
JUDGE_MAX_TOKENS = 8  # room for "0.5" and a little chatter, not for an essay
UNREADABLE_TEMPERATURES = (0.0, 0.5, 1.0, 1.5, 2.0)  # one ask each until a reply holds a score
RETRY_WAITS = (1.0, 2.0, 4.0)  # seconds before each retry of a request that failed in transport or with 429/5xx
RETRY_STATUSES = {408, 409, 429, 500, 502, 503, 504}
CONNECT_TIMEOUT, READ_TIMEOUT = 10.0, 120.0
DEFAULT_CONCURRENCY = 4

GRADER_PROMPT = """\
You grade an AI assistant's answer to a question about an image. You are given the question, the \
ground truth and the assistant's prediction; give the prediction a correctness score.

How to read the ground truth:
- Elements joined by <AND> are all required. A prediction with only some of them earns partial \
credit in proportion (one of two elements: 0.5).
- Elements joined by <OR> are alternatives. A prediction with any one of them is fully right.
- A free-text ground truth describes a complete answer. Score by how much of it the prediction \
covers correctly; statements that contradict it lower the score.
- Wording, word order, units written out or abbreviated and formatting do not matter; meaning does.

The score is one of 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, where 0.0 is totally \
wrong and 1.0 is totally right. Reply with the score and nothing else.

Example 1
Question: How many mugs are on the shelf?
Ground truth: 4
Prediction: I can see four mugs.
Score: 1.0

Example 2
Question: Which two fruits are in the bowl?
Ground truth: banana <AND> pear
Prediction: There is a banana.
Score: 0.5

Example 3
Question: What does the road sign tell drivers?
Ground truth: give way <OR> yield
Prediction: Drivers must yield to crossing traffic.
Score: 1.0

Example 4
Question: What time does the watch show?
Ground truth: 7:25
Prediction: It shows a quarter past three.
Score: 0.0

Example 5
Question: Summarise what the bar chart shows.
Ground truth: Rainfall is low from May to August, peaks in November and falls again in December.
Prediction: The chart shows rainfall peaking near the end of the year.
Score: 0.4

Now grade this one.
Question: {question}
Ground truth: {answer}
Prediction: {prediction}
Score:"""


class JudgeError(OSError):
    """The judge could not be asked: unreachable, or it refused or garbled the request. An OSError, like
    the other failures of a service or file outside this program, so callers that report I/O errors
    (the `run` command) report this one too."""


# --- prompts and replies ------------------------------------------------------------------------


def check_template(template: str, where: str) -> str:
    """`template` if it holds every placeholder, else a ValueError naming `where` and what is missing."""
    missing = [f"{{{name}}}" for name in PLACEHOLDERS if f"{{{name}}}" not in template]
    if missing:
        raise ValueError(f"{where}: the grading prompt has no {', '.join(missing)} placeholder")
    return template


def load_prompt_template(path: str) -> str:
    """A user's grading prompt (e.g. MM-Vet's official one) with its `{question}`, `{answer}` and
    `{prediction}` placeholders."""
    with open(path, encoding="utf-8") as f:
        return check_template(f.read(), path)


def grading_prompt(template: str, question: str, answer: str, prediction: str) -> str:
    """`template` with the placeholders filled in one pass (so braces inside the texts stay as they
    are). The ground truth gets spaces around `<AND>` and `<OR>`, as MM-Vet's evaluator gives it."""
    values = {
        "question": question,
        "answer": answer.replace("<AND>", " <AND> ").replace("<OR>", " <OR> "),
        "prediction": prediction,
    }
    return PLACEHOLDER_PATTERN.sub(lambda match: values[match.group(1)], template)


def parse_score(reply: str | None) -> float | None:
    """The first number in the judge's reply if it lies in [0, 1], else None (unreadable)."""
    match = NUMBER.search(reply or "")
    if match is None:
        return None
    value = float(match.group())
    return value if 0.0 <= value <= 1.0 else None


def cache_key(judge_model: str, prompt: str) -> str:
    return hashlib.sha256(json.dumps([judge_model, prompt], ensure_ascii=False).encode()).hexdigest()


# --- the cache ----------------------------------------------------------------------------------


class JudgeCache:
    """Replies by cache key, kept in an append-only JSON-lines file: one `{"key", "model", "question",
    "reply"}` line per reply, written and flushed to disk as it arrives, so a crash loses nothing
    (this is why it is appended to rather than rewritten through `atomic_write`). A last line cut off
    by a crash is dropped (and cut from the file); a malformed line elsewhere is an error."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.replies: dict[str, str] = {}
        self.lock = threading.Lock()
        if os.path.exists(path):
            self._load()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def _load(self) -> None:
        with open(self.path, "rb") as f:
            data = f.read()
        complete = data.rfind(b"\n") + 1  # bytes up to the end of the last whole line
        if complete < len(data):
            logger.warning("%s: dropping a cut-off last line (%d bytes)", self.path, len(data) - complete)
            os.truncate(self.path, complete)
        for number, line in enumerate(data[:complete].decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                self.replies[entry["key"]] = entry["reply"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{self.path}, line {number}: not a judge cache entry") from None

    def get(self, key: str) -> str | None:
        return self.replies.get(key)

    def add(self, key: str, judge_model: str, question: str, reply: str) -> None:
        line = json.dumps({"key": key, "model": judge_model, "question": question, "reply": reply}) + "\n"
        with self.lock:
            with open(self.path, "a", encoding="ascii") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            self.replies[key] = reply


# --- the judge ----------------------------------------------------------------------------------


def completions_url(judge_url: str) -> str:
    """The chat-completions endpoint under an OpenAI-compatible base URL such as `http://host:port/v1`."""
    if not re.match(r"https?://", judge_url):
        raise ValueError(f"--judge-url {judge_url!r} must start with http:// or https://")
    url = judge_url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


class JudgeClient:
    """Asks one judge model for one reply at a time (thread-safe), with bounded timeouts and retries."""

    def __init__(self, judge_url: str, judge_model: str, api_key: str | None = None) -> None:
        import httpx  # here: only the judge needs it (the serve extra)

        self.httpx = httpx
        self.url = completions_url(judge_url)
        self.model = judge_model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(headers=headers, timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT))

    def close(self) -> None:
        self.client.close()

    def ask(self, prompt: str, temperature: float) -> str:
        """The judge's reply to `prompt` as the only user message."""
        payload = {
            "model": self.model, "messages": [{"role": "user", "content": prompt}],
            "temperature": temperature, "max_tokens": JUDGE_MAX_TOKENS, "stream": False,
        }
        return self._reply(self._post(payload))

    def _post(self, payload: dict[str, Any]) -> Any:
        problem = ""
        for attempt, wait in enumerate((0.0, *RETRY_WAITS)):
            time.sleep(wait)
            try:
                response = self.client.post(self.url, json=payload)
            except self.httpx.HTTPError as err:
                problem = f"could not be reached ({type(err).__name__}: {err})"
                continue
            if response.status_code in RETRY_STATUSES:
                problem = f"answered HTTP {response.status_code}: {response.text[:300]}"
                continue
            if response.status_code != 200:
                raise JudgeError(f"the judge at {self.url} answered HTTP {response.status_code}: {response.text[:300]}")
            try:
                return response.json()
            except ValueError:
                raise JudgeError(
                    f"the judge at {self.url} answered something that is not JSON: {response.text[:300]!r}"
                ) from None
        raise JudgeError(f"the judge at {self.url} {problem}, after {len(RETRY_WAITS) + 1} tries")

    def _reply(self, body: Any) -> str:
        try:
            content = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise JudgeError(
                f"the judge at {self.url} answered without choices[0].message.content: {str(body)[:300]}"
            ) from None
        return content if isinstance(content, str) else ""


@dataclass
class Grade:
    score: float  # 0 when failed
    source: str  # "cached", "judged" or "failed"
    reply: str


def grade(client: JudgeClient, cache: JudgeCache, question_key: str, prompt: str) -> Grade:
    """The cached grade of `prompt`, or the judge's, asked again at rising temperatures while its reply
    holds no score. Only readable replies are cached, so a rerun asks the failed ones again."""
    key = cache_key(client.model, prompt)
    cached = cache.get(key)
    cached_score = parse_score(cached)
    if cached is not None and cached_score is not None:
        return Grade(cached_score, "cached", cached)
    reply = ""
    for temperature in UNREADABLE_TEMPERATURES:
        reply = client.ask(prompt, temperature)
        score = parse_score(reply)
        if score is not None:
            cache.add(key, client.model, question_key, reply)
            return Grade(score, "judged", reply)
        logger.warning(
            "%s: the judge's reply %r holds no score in [0, 1] (temperature %s)", question_key, reply, temperature
        )
    return Grade(0.0, "failed", reply)


# --- scoring ------------------------------------------------------------------------------------


def capability_order(capabilities: Sequence[str]) -> list[str]:
    """MM-Vet's six capabilities in their usual order, then any others alphabetically."""
    known = [name for name in CAPABILITIES if name in capabilities]
    return known + sorted(set(capabilities) - set(CAPABILITIES))


def aggregate(questions: dict[str, dict[str, Any]], scores: dict[str, float]) -> dict[str, Any]:
    """Total, per-capability and per-combination scores (mean x100) of `scores` by question key. A
    question counts toward every capability it lists and toward the one combination of all of them
    (named by joining its capabilities with `_`, in `capability_order`)."""
    by_capability: dict[str, list[float]] = {}
    by_combination: dict[str, list[float]] = {}
    for key, question in questions.items():
        capabilities = capability_order(question["capability"])
        for name in capabilities:
            by_capability.setdefault(name, []).append(scores[key])
        by_combination.setdefault("_".join(capabilities), []).append(scores[key])

    def mean(values: list[float]) -> float:
        return math.fsum(values) / len(values) * 100

    capability_names = capability_order(list(by_capability))
    combinations = sorted(by_combination, key=lambda name: (-len(by_combination[name]), name))
    return {
        "score": mean([scores[key] for key in questions]) if questions else 0.0,
        "per_capability": {name: mean(by_capability[name]) for name in capability_names},
        "per_combination": {name: mean(by_combination[name]) for name in combinations},
        "capability_counts": {name: len(by_capability[name]) for name in capability_names},
        "combination_counts": {name: len(by_combination[name]) for name in combinations},
    }


def read_mmvet(path: str) -> dict[str, dict[str, Any]]:
    """MM-Vet's `{"v1_<n>": {"question", "answer", "capability": [...], ...}}`, checked."""
    document = read_json(path)
    if not isinstance(document, dict) or not document:
        raise ValueError(f"{path}: expected a non-empty object mapping 'v1_<n>' to questions")
    for key, entry in document.items():
        where = f"{path}, question {key!r}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected an object")
        for name in ("question", "answer"):
            if not isinstance(entry.get(name), str):
                raise ValueError(f"{where}: no text {name!r}")
        capabilities = entry.get("capability")
        if not isinstance(capabilities, list) or not capabilities or not all(isinstance(c, str) for c in capabilities):
            raise ValueError(f"{where}: 'capability' must be a non-empty list of names")
    return document


def read_answers(path: str) -> dict[str, str]:
    """Answers by MM-Vet key from an answer file (`.jsonl`, `question_id` n → `v1_<n>`) or from the
    upload JSON `{"v1_<n>": text}` that `convert_mmvet_for_eval` writes."""
    if path.endswith(".jsonl"):
        return mmvet_results(read_jsonl(path, ("question_id", "text")))
    document = read_json(path)
    if not isinstance(document, dict) or not all(isinstance(v, str) for v in document.values()):
        raise ValueError(f"{path}: expected an answers .jsonl or a JSON object mapping 'v1_<n>' to answer texts")
    return document


def _grade_all(
    client: JudgeClient, cache: JudgeCache, prompts: dict[str, str], concurrency: int, progress: bool
) -> dict[str, Grade]:
    """Every prompt graded, `concurrency` requests at a time; the first error stops what has not started
    (rather than letting every other question wait out its own retries against a dead judge)."""
    grades: dict[str, Grade] = {}
    stop = threading.Event()

    def grade_unless_stopped(key: str, prompt: str) -> Grade | None:
        if stop.is_set():
            return None
        try:
            return grade(client, cache, key, prompt)
        except BaseException:
            stop.set()
            raise

    pool = ThreadPoolExecutor(concurrency)
    try:
        futures = {pool.submit(grade_unless_stopped, key, prompt): key for key, prompt in prompts.items()}
        bar = tqdm(as_completed(futures), total=len(futures), desc="MM-Vet judge", unit="question", disable=not progress)
        for future in bar:
            outcome = future.result()
            if outcome is not None:
                grades[futures[future]] = outcome
    finally:
        stop.set()  # after an error or an interrupt, the queued questions are not asked
        pool.shutdown(wait=True, cancel_futures=True)
    return grades


def judge_scores(
    mm_vet_json: str,
    answers: dict[str, str],
    judge_url: str,
    judge_model: str,
    cache_path: str,
    api_key: str | None = None,
    prompt_template: str | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: bool = True,
) -> dict[str, Any]:
    """Grade `answers` (by `v1_<n>` key) against `mm_vet_json` with the judge and return `{"score",
    "per_capability", "per_combination", "judged", "cached", "failed", "missing", ...}`: `judged`
    questions got their grade from a request of this call, `cached` ones from the cache, `failed`
    (keys) had no readable reply and `missing` (keys) no answer; both score 0 and count in the means."""
    if concurrency < 1:
        raise ValueError(f"--concurrency {concurrency} must be at least 1")
    questions = read_mmvet(mm_vet_json)
    unknown = sorted(set(answers) - set(questions))
    if unknown:
        raise ValueError(f"answers to questions that {mm_vet_json} does not have: {', '.join(unknown[:10])}")
    template = check_template(prompt_template, "the grading prompt") if prompt_template is not None else GRADER_PROMPT
    prompts = {
        key: grading_prompt(template, entry["question"], entry["answer"], answers[key])
        for key, entry in questions.items() if key in answers
    }
    cache = JudgeCache(cache_path)
    client = JudgeClient(judge_url, judge_model, api_key)
    try:
        grades = _grade_all(client, cache, prompts, concurrency, progress)
    finally:
        client.close()
    scores = {key: grades[key].score if key in grades else 0.0 for key in questions}
    sources = [grade.source for grade in grades.values()]
    return {
        **aggregate(questions, scores),
        "judged": sources.count("judged"), "cached": sources.count("cached"),
        "failed": [key for key in questions if key in grades and grades[key].source == "failed"],
        "missing": [key for key in questions if key not in answers],
        "questions": len(questions), "scores": scores,
        "replies": {key: grades[key].reply for key in questions if key in grades},
        "judge": {
            "url": client.url, "model": judge_model, "temperature": UNREADABLE_TEMPERATURES[0],
            "max_tokens": JUDGE_MAX_TOKENS, "prompt": "builtin" if prompt_template is None else "user",
            "prompt_sha256": hashlib.sha256(template.encode()).hexdigest(), "cache": os.path.abspath(cache_path),
        },
    }


# --- the command line ---------------------------------------------------------------------------


def summary(result: dict[str, Any]) -> str:
    """A one-screen table of the scores and the counts."""
    judge = result["judge"]
    lines = [f"MM-Vet judged by {judge['model']} at {judge['url']} (prompt: {judge['prompt']})",
             f"{'total':<22}{result['score']:6.1f}  ({result['questions']} questions)"]
    for name, score in result["per_capability"].items():
        lines.append(f"{name:<22}{score:6.1f}  ({result['capability_counts'][name]})")
    for name, score in result["per_combination"].items():
        lines.append(f"{name:<22}{score:6.1f}  ({result['combination_counts'][name]})")
    lines.append(f"asked {result['judged']}, from cache {result['cached']}, "
                 f"failed {len(result['failed'])}, missing {len(result['missing'])}")
    for label in ("failed", "missing"):
        if result[label]:
            more = " ..." if len(result[label]) > 20 else ""
            lines.append(f"{label} (scored 0): {', '.join(result[label][:20])}{more}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bunny.eval.mm_vet.judge", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mm-vet-json", required=True, help="MM-Vet's mm-vet.json (questions, truths, capabilities)")
    parser.add_argument("--answers", required=True, help="an answer .jsonl, or the upload JSON {\"v1_<n>\": text}")
    parser.add_argument("--judge-url", required=True, help="an OpenAI-compatible API's base URL: http://127.0.0.1:8000/v1")
    parser.add_argument("--judge-model", required=True, help="the model name sent to the judge, e.g. gpt-4-0613")
    parser.add_argument("--api-key-env", default=None, help="name of the environment variable holding the judge's API key")
    parser.add_argument("--cache", default=None, help="the judge's reply cache (default: <answers>.judge-cache.jsonl)")
    parser.add_argument("--output", default=None, help="write the scores, counts and every grade here as JSON")
    parser.add_argument("--judge-prompt-file", default=None,
                        help="a grading prompt with {question}, {answer} and {prediction} (e.g. MM-Vet's official one)")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="requests in flight at once")
    return parser


def api_key_from(variable: str | None) -> str | None:
    if variable is None:
        return None
    if not os.environ.get(variable):
        raise ValueError(f"--api-key-env {variable}: the environment variable {variable} is not set")
    return os.environ[variable]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    cache = args.cache or os.path.splitext(args.answers)[0] + ".judge-cache.jsonl"
    try:
        template = load_prompt_template(args.judge_prompt_file) if args.judge_prompt_file else None
        result = judge_scores(
            args.mm_vet_json, read_answers(args.answers), args.judge_url, args.judge_model, cache,
            api_key=api_key_from(args.api_key_env), prompt_template=template, concurrency=args.concurrency,
        )
        if args.output:
            with atomic_write(args.output) as f:
                json.dump(result, f, indent=2, ensure_ascii=False)
    except (OSError, ValueError, JudgeError) as err:
        parser.exit(1, f"error: {err}\n")
    print(summary(result))
    return result


if __name__ == "__main__":
    main()
