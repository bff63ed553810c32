"""The controller: registry, dispatch, heart beats, the streaming relay and its faults.

The first tests drive `Controller` and its FastAPI app in-process; the last ones start the
controller and stand-in workers (tests/fake_worker.py) as real processes on loopback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import requests

from bunny.serve.controller import Controller, create_app
from bunny.serve.protocol import iter_chunks
from bunny.util.utils import server_error_msg
from servers import HERE, REPO, free_port, stream


@pytest.fixture(autouse=True)
def log_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("BUNNY_LOGDIR", str(tmp_path / "logs"))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def status(*models: str, speed: float = 1, queue_length: int = 0) -> dict:
    return {"model_names": list(models), "speed": speed, "queue_length": queue_length}


# -- the registry and dispatch, in-process ---------------------------------------------------------
def test_shortest_queue_sends_to_the_least_busy_worker_per_unit_of_speed_and_counts_each_request():
    controller = Controller("shortest_queue")
    controller.register_worker("http://a", False, status("m", speed=1, queue_length=2))
    controller.register_worker("http://b", False, status("m", speed=2, queue_length=2))
    controller.register_worker("http://c", False, status("other"))
    # b: 2/2 = 1 < a: 2/1; after two requests b is at 4/2 = 2 and ties with a, which comes first
    assert [controller.get_worker_address("m") for _ in range(3)] == ["http://b", "http://b", "http://a"]
    assert controller.get_worker_address("missing") == ""
    assert controller.list_models() == ["m", "other"]


def test_lottery_draws_workers_in_proportion_to_their_speed():
    import random

    controller = Controller("lottery", rng=random.Random(0))
    controller.register_worker("http://fast", False, status("m", speed=3))
    controller.register_worker("http://slow", False, status("m", speed=1))
    draws = Counter(controller.get_worker_address("m") for _ in range(4000))
    assert abs(draws["http://fast"] / 4000 - 0.75) < 0.03
    stalled = Controller("lottery")
    stalled.register_worker("http://idle", False, status("m", speed=0))
    assert stalled.get_worker_address("m") == ""


def test_an_unknown_dispatch_method_is_an_error_that_lists_the_choices():
    with pytest.raises(ValueError, match="Invalid dispatch method 'fastest'.*lottery, shortest_queue"):
        Controller("fastest")


def test_workers_that_stop_sending_heart_beats_are_removed_after_the_expiration():
    clock = Clock()
    controller = Controller(heart_beat_expiration=30, clock=clock)
    controller.register_worker("http://beating", True, status("m"))
    controller.register_worker("http://silent", True, status("m"))
    controller.register_worker("http://unchecked", False, status("m"))
    clock.now += 20
    assert controller.receive_heart_beat("http://beating", 3)
    clock.now += 15  # silent: 35 s without a heart beat; beating: 15 s
    assert controller.remove_stale_workers() == ["http://silent"]
    assert set(controller.workers) == {"http://beating", "http://unchecked"}
    assert controller.workers["http://beating"].queue_length == 3
    assert not controller.receive_heart_beat("http://silent", 0)  # told to register again


# -- the HTTP surface, in-process ------------------------------------------------------------------
@pytest.fixture()
def client():
    from fastapi.testclient import TestClient

    controller = Controller("shortest_queue")
    return controller, TestClient(create_app(controller))


def test_endpoints_speak_the_original_payloads(client):
    controller, http = client
    registration = {"worker_name": "http://w", "check_heart_beat": True, "worker_status": status("bunny")}
    assert http.post("/register_worker", json=registration).status_code == 200
    assert http.post("/list_models").json() == {"models": ["bunny"]}
    assert http.post("/get_worker_address", json={"model": "bunny"}).json() == {"address": "http://w"}
    assert http.post("/get_worker_address", json={"model": "nope"}).json() == {"address": ""}
    assert http.post("/receive_heart_beat", json={"worker_name": "http://w", "queue_length": 0}).json() == {"exist": True}
    assert http.post("/receive_heart_beat", json={"worker_name": "http://x", "queue_length": 0}).json() == {"exist": False}


def test_a_model_without_a_worker_gets_exactly_one_error_chunk(client):
    _, http = client
    response = http.post("/worker_generate_stream", json={"model": "nope", "prompt": "hi"})
    assert response.status_code == 200
    pieces = response.content.split(b"\0")
    assert pieces[-1] == b"" and len(pieces) == 2
    assert json.loads(pieces[0]) == {"text": server_error_msg, "error_code": 2}


@pytest.mark.parametrize(
    "path, body, message",
    [
        ("/register_worker", b"not json", "not JSON"),
        ("/register_worker", b"[1, 2]", "must be a JSON object"),
        ("/register_worker", json.dumps({"check_heart_beat": True}).encode(), "no 'worker_name'"),
        ("/register_worker", json.dumps({"worker_name": "http://w", "worker_status": {"speed": 1}}).encode(), "'model_names'"),
        ("/get_worker_address", json.dumps({"model": 3}).encode(), "'model' must be str"),
        ("/receive_heart_beat", json.dumps({"worker_name": "http://w", "queue_length": "x"}).encode(), "'queue_length' must be int"),
        ("/worker_generate_stream", json.dumps({"prompt": "hi"}).encode(), "no 'model'"),
    ],
)
def test_bad_payloads_get_http_400_naming_the_problem(client, path, body, message):
    _, http = client
    response = http.post(path, content=body)
    assert response.status_code == 400
    assert message in response.json()["error"] and path in response.json()["error"]


def test_registering_an_unreachable_worker_is_refused_with_its_name(client):
    controller, http = client
    port = free_port()
    response = http.post("/register_worker", json={"worker_name": f"http://127.0.0.1:{port}", "check_heart_beat": False})
    assert response.status_code == 502
    assert f"127.0.0.1:{port}" in response.json()["error"]
    assert controller.workers == {}


# -- real processes on loopback --------------------------------------------------------------------
def test_controller_relays_worker_streams_and_survives_a_worker_killed_mid_stream(processes):
    launch, started, env = processes
    controller = launch(["-m", "bunny.serve.controller", "--heart-beat-expiration", "60"], "/list_models")
    steady = launch([os.path.join(HERE, "fake_worker.py"), "--model", "steady"], "/worker_get_status")
    doomed = launch([os.path.join(HERE, "fake_worker.py"), "--model", "doomed", "--delay", "0.5", "--chunks", "10"], "/worker_get_status")
    for worker in (steady, doomed):  # through the script users run; the controller fetches the status itself
        subprocess.run(
            [sys.executable, "-m", "bunny.serve.register_worker", "--controller-address", controller, "--worker-name", worker],
            cwd=REPO, env=env, check=True, capture_output=True,
        )
    assert requests.post(controller + "/list_models").json() == {"models": ["doomed", "steady"]}

    chunks = stream(controller, {"model": "steady", "prompt": "USER: hi ASSISTANT:"})
    assert [c["text"] for c in chunks] == ["USER: hi ASSISTANT: one", "USER: hi ASSISTANT: one two", "USER: hi ASSISTANT: one two three"]

    with requests.post(controller + "/worker_generate_stream", json={"model": "doomed", "prompt": "p"}, stream=True, timeout=30) as response:
        lines = response.iter_lines(delimiter=b"\0")
        first = json.loads(next(lines))
        started[2].send_signal(signal.SIGKILL)
        rest = list(iter_chunks(lines))
    assert first == {"text": "p one", "error_code": 0}
    assert rest[-1] == {"text": server_error_msg, "error_code": 3}
    assert all(c["error_code"] == 0 for c in rest[:-1])

    # the controller keeps serving, and a request to the dead worker fails cleanly
    assert stream(controller, {"model": "steady", "prompt": "again"})[-1]["text"] == "again one two three"
    assert stream(controller, {"model": "doomed", "prompt": "p"}) == [{"text": server_error_msg, "error_code": 3}]


def test_a_registered_worker_without_heart_beats_disappears_after_the_expiration(processes):
    launch, _, _ = processes
    controller = launch(["-m", "bunny.serve.controller", "--heart-beat-expiration", "1"], "/list_models")
    worker = launch([os.path.join(HERE, "fake_worker.py"), "--model", "quiet"], "/worker_get_status")
    requests.post(controller + "/register_worker", json={"worker_name": worker, "check_heart_beat": True}).raise_for_status()
    assert requests.post(controller + "/list_models").json() == {"models": ["quiet"]}
    deadline = time.time() + 10
    while requests.post(controller + "/list_models").json()["models"] and time.time() < deadline:
        time.sleep(0.2)
    assert requests.post(controller + "/list_models").json() == {"models": []}
    assert stream(controller, {"model": "quiet", "prompt": "p"}) == [{"text": server_error_msg, "error_code": 2}]
