"""MM-Vet's LLM judge: the request it sends, the cache, the arithmetic, unreadable replies and errors.

A fake OpenAI-compatible server on loopback (http.server in a thread) records every request and
answers with a score chosen from the prediction in the prompt; the last test grades through our own
model worker's OpenAI API, started as a real process.
"""

from __future__ import annotations

import http.server
import json
import re
import socket
import threading
from pathlib import Path
from typing import Callable, Iterator

import pytest

from bunny.eval.mm_vet import judge
from tiny import FIXTURES

# Four questions whose predictions name the score the fake judge gives them.
MMVET = {
    "v1_0": {"imagename": "v1_0.png", "question": "What fruit is this?", "answer": "apple", "capability": ["rec"]},
    "v1_1": {"imagename": "v1_1.png", "question": "What does the label say?", "answer": "fresh<OR>new",
             "capability": ["ocr", "rec"]},
    "v1_2": {"imagename": "v1_2.png", "question": "Read the price.", "answer": "$3<AND>$4", "capability": ["ocr"]},
    "v1_3": {"imagename": "v1_3.png", "question": "Why is it funny?", "answer": "The cat wears a hat.",
             "capability": ["rec", "know", "gen"]},
}
ANSWERS = {"v1_0": "it is an apple [1.0]", "v1_1": "it says new [0.5]", "v1_2": "it costs $5 [0.0]",
           "v1_3": "a cat {prediction} [0.2]"}


class FakeJudge(http.server.ThreadingHTTPServer):
    """Answers POST /v1/chat/completions with `reply(payload)`: a (status, text) pair."""

    def __init__(self, reply: Callable[[dict], tuple[int, str]]) -> None:
        super().__init__(("127.0.0.1", 0), JudgeHandler)
        self.reply = reply
        self.requests: list[dict] = []
        self.headers_seen: list[dict] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class JudgeHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append({"path": self.path, **payload})
            self.server.headers_seen.append(dict(self.headers))
        status, text = self.server.reply(payload)
        body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]} if status == 200 else {"error": {"message": text}}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def bracketed_score(payload: dict) -> tuple[int, str]:
    """The number in [brackets] on the prompt's Prediction line (the built-in prompt's layout)."""
    prompt = payload["messages"][0]["content"]
    return 200, re.findall(r"\[([^\]]*)\]", prompt.rsplit("Prediction:", 1)[1])[0]


@pytest.fixture()
def fake_judge() -> Iterator[Callable[[Callable], FakeJudge]]:
    servers: list[FakeJudge] = []

    def start(reply: Callable[[dict], tuple[int, str]] = bracketed_score) -> FakeJudge:
        server = FakeJudge(reply)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def mmvet_json(tmp_path) -> str:
    path = tmp_path / "mm-vet.json"
    path.write_text(json.dumps(MMVET))
    return str(path)


@pytest.fixture(autouse=True)
def no_retry_waits(monkeypatch):
    monkeypatch.setattr(judge, "RETRY_WAITS", (0.0, 0.0))


def run(mmvet_json: str, server: FakeJudge, cache: Path, answers: dict = ANSWERS, **kwargs) -> dict:
    return judge.judge_scores(mmvet_json, answers, server.url, "grader-1", str(cache), progress=False, **kwargs)


def test_the_request_is_one_user_message_at_temperature_0_holding_question_truth_and_prediction(
    fake_judge, mmvet_json, tmp_path, monkeypatch, capsys
):
    server = fake_judge()
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps(ANSWERS))
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    result = judge.main(["--mm-vet-json", mmvet_json, "--answers", str(answers), "--judge-url", server.url,
                         "--judge-model", "grader-1", "--api-key-env", "JUDGE_KEY", "--concurrency", "1"])
    assert len(server.requests) == 4
    request = next(r for r in server.requests if "Read the price." in r["messages"][0]["content"])
    assert request["path"] == "/v1/chat/completions"
    assert request["model"] == "grader-1" and request["temperature"] == 0.0
    assert 0 < request["max_tokens"] <= 16 and len(request["messages"]) == 1 and request["messages"][0]["role"] == "user"
    prompt = request["messages"][0]["content"]
    # the built-in prompt states the rule, and the ground truth is spaced around <AND> as MM-Vet gives it
    assert "<AND>" in prompt and "<OR>" in prompt and "0.0" in prompt and "1.0" in prompt
    assert prompt.endswith("Question: Read the price.\nGround truth: $3 <AND> $4\nPrediction: it costs $5 [0.0]\nScore:")
    assert all(h["Authorization"] == "Bearer sk-test" for h in server.headers_seen)
    # braces in a prediction are kept as they are, not taken for placeholders
    assert any("Prediction: a cat {prediction} [0.2]" in r["messages"][0]["content"] for r in server.requests)
    assert result["score"] == pytest.approx(42.5)
    printed = capsys.readouterr().out
    assert "total" in printed and "42.5" in printed and "sk-test" not in printed
    assert "sk-test" not in (tmp_path / "answers.judge-cache.jsonl").read_text()


def test_per_capability_and_per_combination_scores_match_the_arithmetic_by_hand(fake_judge, mmvet_json, tmp_path):
    result = run(mmvet_json, fake_judge(), tmp_path / "cache.jsonl")
    assert result["scores"] == {"v1_0": 1.0, "v1_1": 0.5, "v1_2": 0.0, "v1_3": 0.2}
    assert result["score"] == pytest.approx((1.0 + 0.5 + 0.0 + 0.2) / 4 * 100)
    assert list(result["per_capability"]) == ["rec", "ocr", "know", "gen"]  # MM-Vet's order
    assert result["per_capability"] == pytest.approx({
        "rec": (1.0 + 0.5 + 0.2) / 3 * 100, "ocr": (0.5 + 0.0) / 2 * 100, "know": 20.0, "gen": 20.0})
    assert result["capability_counts"] == {"rec": 3, "ocr": 2, "know": 1, "gen": 1}
    # ["ocr", "rec"] is named rec_ocr: capabilities in MM-Vet's order, whatever order the file lists them in
    assert result["per_combination"] == pytest.approx({"ocr": 0.0, "rec": 100.0, "rec_know_gen": 20.0, "rec_ocr": 50.0})
    assert result["judged"] == 4 and result["cached"] == 0 and result["failed"] == [] and result["missing"] == []


def test_a_rerun_asks_nothing_already_cached_and_gives_the_same_scores(fake_judge, mmvet_json, tmp_path):
    server = fake_judge()
    cache = tmp_path / "cache.jsonl"
    first = run(mmvet_json, server, cache)
    assert len(server.requests) == 4 and len(cache.read_text().splitlines()) == 4
    second = run(mmvet_json, server, cache)
    assert len(server.requests) == 4  # not one more request
    assert second["cached"] == 4 and second["judged"] == 0
    assert {k: second[k] for k in ("score", "per_capability", "per_combination", "scores")} == \
        {k: first[k] for k in ("score", "per_capability", "per_combination", "scores")}
    # another judge model or another prediction is another prompt: asked again
    changed = run(mmvet_json, server, cache, answers={**ANSWERS, "v1_0": "a pear [0.1]"})
    assert len(server.requests) == 5 and changed["judged"] == 1 and changed["cached"] == 3
    judge.judge_scores(mmvet_json, ANSWERS, server.url, "grader-2", str(cache), progress=False)
    assert len(server.requests) == 9


def test_a_cut_off_last_cache_line_is_dropped_and_asked_again_a_bad_middle_line_is_an_error(fake_judge, mmvet_json, tmp_path):
    server = fake_judge()
    cache = tmp_path / "cache.jsonl"
    run(mmvet_json, server, cache, concurrency=1)
    lines = cache.read_bytes().splitlines(keepends=True)
    cache.write_bytes(b"".join(lines[:3]) + lines[3][:20])  # a crash in the middle of the fourth line
    result = run(mmvet_json, server, cache)
    assert result["cached"] == 3 and result["judged"] == 1 and len(server.requests) == 5
    assert all(json.loads(line) for line in cache.read_text().splitlines()) and len(cache.read_text().splitlines()) == 4

    cache.write_bytes(b"".join(lines[:1]) + b"{not json\n" + b"".join(lines[1:]))
    with pytest.raises(ValueError, match=r"cache.jsonl, line 2: not a judge cache entry"):
        run(mmvet_json, server, cache)


def test_an_unreadable_reply_is_asked_again_warmer_then_failed_scored_0_and_not_cached(fake_judge, mmvet_json, tmp_path):
    asked: dict[str, int] = {}

    def reply(payload: dict) -> tuple[int, str]:
        prompt = payload["messages"][0]["content"]
        question = re.findall(r"Question: (.*)", prompt)[-1]
        asked[question] = asked.get(question, 0) + 1
        if question == "What fruit is this?":
            return 200, "I cannot tell."  # never a score
        if question == "What does the label say?":
            return 200, "1.5" if asked[question] == 1 else "Score: 0.7 out of 1"  # out of range, then readable
        if question == "Read the price.":
            return 200, "-0.3"  # the first number is out of range: unreadable
        return 200, ".5"

    server = fake_judge(reply)
    cache = tmp_path / "cache.jsonl"
    result = run(mmvet_json, server, cache)
    temperatures = [r["temperature"] for r in server.requests if "What fruit is this?" in r["messages"][0]["content"]]
    assert temperatures == list(judge.UNREADABLE_TEMPERATURES) and temperatures[0] == 0.0
    assert asked["What does the label say?"] == 2
    assert result["failed"] == ["v1_0", "v1_2"]
    assert result["scores"] == {"v1_0": 0.0, "v1_1": 0.7, "v1_2": 0.0, "v1_3": 0.5}
    assert result["judged"] == 2 and result["score"] == pytest.approx((0.7 + 0.5) / 4 * 100)
    assert len(cache.read_text().splitlines()) == 2  # only the readable replies
    before = len(server.requests)
    again = run(mmvet_json, server, cache)
    assert len(server.requests) - before == 2 * len(judge.UNREADABLE_TEMPERATURES)  # only the failed ones again
    assert again["cached"] == 2 and again["failed"] == ["v1_0", "v1_2"]


@pytest.mark.parametrize("reply, score", [
    ("0.5", 0.5), ("1", 1.0), ("1.0 (totally right)", 1.0), ("Score: 0.3.", 0.3), (".7", 0.7), ("0", 0.0),
    ("10", None), ("-0.2", None), ("", None), (None, None), ("no idea", None), ("1.1", None), ("50%", None),
])
def test_the_reply_is_read_as_its_first_number_if_it_lies_in_0_to_1(reply, score):
    assert judge.parse_score(reply) == score


def test_missing_answers_are_listed_and_scored_0_without_asking_and_unknown_ones_are_refused(fake_judge, mmvet_json, tmp_path):
    server = fake_judge()
    answers = {k: v for k, v in ANSWERS.items() if k != "v1_0"}
    result = run(mmvet_json, server, tmp_path / "cache.jsonl", answers=answers)
    assert result["missing"] == ["v1_0"] and len(server.requests) == 3
    assert result["score"] == pytest.approx((0.5 + 0.0 + 0.2) / 4 * 100) and result["per_combination"]["rec"] == 0.0
    with pytest.raises(ValueError, match="does not have: v1_9"):
        run(mmvet_json, server, tmp_path / "cache.jsonl", answers={**ANSWERS, "v1_9": "x"})


def test_a_user_prompt_file_is_filled_in_exactly_and_one_without_placeholders_is_refused(
    fake_judge, mmvet_json, tmp_path, capsys
):
    server = fake_judge(lambda payload: (200, "0.9"))
    template = tmp_path / "official.txt"
    template.write_text("Grade it. {curly} stays.\n{question} | {answer} | {prediction} | ")
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": int(k[3:]), "text": v}) + "\n" for k, v in ANSWERS.items()))
    output = tmp_path / "out" / "judged.json"
    judge.main(["--mm-vet-json", mmvet_json, "--answers", str(answers), "--judge-url", server.url, "--judge-model", "g",
                "--judge-prompt-file", str(template), "--output", str(output), "--cache", str(tmp_path / "c.jsonl")])
    prompts = {r["messages"][0]["content"] for r in server.requests}
    assert "Grade it. {curly} stays.\nRead the price. | $3 <AND> $4 | it costs $5 [0.0] | " in prompts
    written = json.loads(output.read_text())
    assert written["score"] == pytest.approx(90.0) and written["judge"]["prompt"] == "user"

    template.write_text("Grade {question} against {answer}.")
    with pytest.raises(SystemExit) as exit_info:
        judge.main(["--mm-vet-json", mmvet_json, "--answers", str(answers), "--judge-url", server.url,
                    "--judge-model", "g", "--judge-prompt-file", str(template)])
    assert exit_info.value.code == 1
    assert f"{template}: the grading prompt has no {{prediction}} placeholder" in capsys.readouterr().err


def test_the_jsonl_answers_and_the_upload_json_read_the_same(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"question_id": 0, "text": "x"}\n{"question_id": 3, "text": "y"}\n')
    upload = tmp_path / "a.json"
    upload.write_text(json.dumps({"v1_0": "x", "v1_3": "y"}))
    assert judge.read_answers(str(jsonl)) == judge.read_answers(str(upload)) == {"v1_0": "x", "v1_3": "y"}
    upload.write_text(json.dumps(["x"]))
    with pytest.raises(ValueError, match="a.json: expected an answers .jsonl or a JSON object"):
        judge.read_answers(str(upload))


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_judge_is_an_error_naming_its_url(mmvet_json, tmp_path, capsys):
    url = f"http://127.0.0.1:{unused_port()}/v1"
    with pytest.raises(SystemExit) as exit_info:
        judge.main(["--mm-vet-json", mmvet_json, "--answers", str(write_upload(tmp_path)), "--judge-url", url,
                    "--judge-model", "g", "--cache", str(tmp_path / "c.jsonl")])
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert f"{url}/chat/completions could not be reached" in error and "after 3 tries" in error


def write_upload(tmp_path: Path) -> Path:
    path = tmp_path / "upload.json"
    path.write_text(json.dumps(ANSWERS))
    return path


def test_server_errors_are_retried_and_a_refusal_stops_at_once_naming_the_url(fake_judge, mmvet_json, tmp_path):
    calls = {"n": 0}

    def flaky(payload: dict) -> tuple[int, str]:
        calls["n"] += 1
        return (503, "busy") if calls["n"] % 2 else bracketed_score(payload)

    result = run(mmvet_json, fake_judge(flaky), tmp_path / "a.jsonl", concurrency=1)
    assert result["score"] == pytest.approx(42.5) and calls["n"] == 8

    refusing = fake_judge(lambda payload: (404, "The model `grader-1` does not exist"))
    with pytest.raises(judge.JudgeError, match=r"judge at http://127.0.0.1:\d+/v1/chat/completions answered HTTP 404.*does not exist"):
        run(mmvet_json, refusing, tmp_path / "b.jsonl", concurrency=1)
    assert len(refusing.requests) == 1


def test_missing_api_key_variable_and_bad_url_are_errors_naming_them(mmvet_json, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    base = ["--mm-vet-json", mmvet_json, "--answers", str(write_upload(tmp_path)), "--judge-model", "g"]
    with pytest.raises(SystemExit):
        judge.main(base + ["--judge-url", "http://127.0.0.1:1/v1", "--api-key-env", "NO_SUCH_KEY"])
    assert "environment variable NO_SUCH_KEY is not set" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        judge.main(base + ["--judge-url", "localhost:8000/v1"])
    assert "must start with http:// or https://" in capsys.readouterr().err


def test_concurrent_grading_gives_the_sequential_result(fake_judge, mmvet_json, tmp_path):
    one = run(mmvet_json, fake_judge(), tmp_path / "one.jsonl", concurrency=1)
    four = run(mmvet_json, fake_judge(), tmp_path / "four.jsonl", concurrency=4)
    assert {k: v for k, v in one.items() if k != "judge"} == {k: v for k, v in four.items() if k != "judge"}


def test_our_own_workers_openai_api_serves_as_judge(processes, mmvet_json, tmp_path):
    launch, _, _ = processes
    controller = launch(["-m", "bunny.serve.controller"], "/list_models")
    worker = launch(
        ["-m", "bunny.serve.model_worker", "--controller", controller, "--worker", "{url}", "--model-path",
         "checkpoints/bunny-phi-2-siglip-full", "--model-name", "bunny-phi-2", "--model-type", "phi-2", "--device", "cpu"],
        "/worker_get_status", cwd=str(FIXTURES),
    )
    one = {"v1_0": ANSWERS["v1_0"]}
    result = judge.judge_scores(mmvet_json, one, worker + "/v1", "bunny-phi-2", str(tmp_path / "c.jsonl"), progress=False)
    # a tiny random model: whatever it says is graded or counted as failed, never an error
    assert result["judged"] + len(result["failed"]) == 1 and result["missing"] == ["v1_1", "v1_2", "v1_3"]
    assert isinstance(result["replies"]["v1_0"], str)
    with pytest.raises(judge.JudgeError, match="answered HTTP 404"):
        judge.judge_scores(mmvet_json, one, worker + "/v1", "nobody", str(tmp_path / "d.jsonl"), progress=False)
