"""The controller: registry, dispatch, heart beats, the streaming relay and its faults, the
shared secret and the checks on what workers report.

The first tests drive `Controller`, `bunny.serve.secret` and the FastAPI app in-process; the last
ones start the controller and stand-in workers (tests/fake_worker.py) as real processes on
loopback. Hostile clients are in test_serve_hostile_controller.py.
"""

from __future__ import annotations

import json
import math
import os
import signal
import stat
import subprocess
import sys
import time
from collections import Counter

import pytest
import requests

from bunny.serve.controller import Controller, check_status, check_worker_address, create_app
from bunny.serve.protocol import PayloadError, iter_chunks
from bunny.serve.secret import SECRET_ENV, SecretError, authorization, check_authorization, find_secret, keep_secret
from bunny.util.utils import server_error_msg
from servers import HERE, REPO, free_port, stream, worker_headers

SECRET = "the-test-secret"


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
    assert Controller("lottery").get_worker_address("m") == ""


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


# -- what workers report --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad, field",
    [
        ({"model_names": "m"}, "model_names"),
        ({"model_names": ["m"] * 65}, "model_names"),
        ({"model_names": ["m" * 201]}, "model_names"),
        ({"model_names": [""]}, "model_names"),
        ({"model_names": [3]}, "model_names"),
        ({"model_names": ["m"], "speed": 0}, "speed"),
        ({"model_names": ["m"], "speed": -1}, "speed"),
        ({"model_names": ["m"], "speed": 1e9}, "speed"),
        ({"model_names": ["m"], "speed": math.nan}, "speed"),
        ({"model_names": ["m"], "speed": math.inf}, "speed"),
        ({"model_names": ["m"], "speed": True}, "speed"),
        ({"model_names": ["m"], "speed": "1"}, "speed"),
        ({"model_names": ["m"], "queue_length": -1_000_000}, "queue_length"),
        ({"model_names": ["m"], "queue_length": 10**12}, "queue_length"),
        ({"model_names": ["m"], "queue_length": 1.5}, "queue_length"),
    ],
)
def test_absurd_worker_statuses_are_refused_naming_the_field(bad, field):
    with pytest.raises(PayloadError, match=f"'{field}' must be"):
        check_status(bad)
    controller = Controller()
    with pytest.raises(PayloadError):
        controller.register_worker("http://w", False, bad)
    assert controller.workers == {}


def test_a_worker_status_is_reduced_to_what_the_controller_uses():
    reported = {"model_names": ["a", "b"], "speed": 2, "queue_length": 3, "conv_mode": "bunny"}
    assert check_status(reported) == {"model_names": ["a", "b"], "speed": 2.0, "queue_length": 3}
    assert check_status({"model_names": []}) == {"model_names": [], "speed": 1.0, "queue_length": 0}


@pytest.mark.parametrize(
    "address",
    ["file:///etc/passwd", "ftp://host/x", "gopher://h", "http://", "http:///path", "localhost:21002", "//host:1",
     "http://h:99999", "http://h/" + "x" * 600, "http://h /x", "http://h\n/x", ""],
)  # fmt: skip
def test_worker_addresses_must_be_http_urls_with_a_host(address):
    with pytest.raises(PayloadError, match="'worker_name' must be the worker's URL"):
        check_worker_address(address)


@pytest.mark.parametrize("address", ["http://localhost:21002", "https://gpu-7.example.org", "http://[::1]:40000", "http://10.0.0.5:1/"])
def test_worker_addresses_that_are_http_urls_are_accepted(address):
    assert check_worker_address(address) == address


def test_heart_beats_with_absurd_queue_lengths_are_refused():
    controller = Controller()
    controller.register_worker("http://w", True, status("m"))
    for bad in (-1, 10**9, True):
        with pytest.raises(PayloadError, match="'queue_length' must be"):
            controller.receive_heart_beat("http://w", bad)
    assert controller.workers["http://w"].queue_length == 0


# -- the shared secret -----------------------------------------------------------------------------
@pytest.fixture()
def secret_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("BUNNY_SECRET_DIR", str(tmp_path / "secrets"))
    monkeypatch.delenv(SECRET_ENV, raising=False)
    return tmp_path / "secrets"


def test_the_controller_keeps_a_new_secret_in_a_private_file_and_reuses_it(secret_dir):
    secret, path = keep_secret(10000)
    assert path == secret_dir / "controller-10000.secret" and path.read_text().strip() == secret
    assert len(secret) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(secret_dir.stat().st_mode) == 0o700
    assert [p.name for p in secret_dir.iterdir()] == [path.name]  # no temporary file left behind
    assert keep_secret(10000) == (secret, path)  # a restarted controller keeps its workers
    assert keep_secret(10001)[0] != secret


def test_the_controller_takes_its_secret_from_the_environment_or_a_given_file(secret_dir, tmp_path, monkeypatch):
    keep_secret(10000)
    monkeypatch.setenv(SECRET_ENV, "from-env")
    assert keep_secret(10000) == ("from-env", secret_dir / "controller-10000.secret")
    assert (secret_dir / "controller-10000.secret").read_text().strip() == "from-env"
    given = tmp_path / "mine" / "secret"
    assert keep_secret(10000, str(given)) == ("from-env", given)  # made when missing
    given.write_text("from-file\n")
    assert keep_secret(10000, str(given)) == ("from-file", given)  # an existing file wins
    given.chmod(0o644)
    with pytest.raises(SecretError, match="only you can read"):
        keep_secret(10000, str(given))


def test_the_controller_refuses_a_secret_directory_others_may_write_to(secret_dir):
    secret_dir.mkdir(mode=0o777)
    secret_dir.chmod(0o777)
    with pytest.raises(SecretError, match="writable only by you.*BUNNY_SECRET_DIR"):
        keep_secret(10000)


def test_workers_find_the_secret_of_a_controller_on_this_machine_by_its_port(secret_dir, tmp_path, monkeypatch):
    secret, _ = keep_secret(10000)
    for address in ("http://localhost:10000", "http://127.0.0.1:10000", "http://[::1]:10000", "http://0.0.0.0:10000/"):
        assert find_secret(address)[0] == secret, address
    assert find_secret("http://localhost:10001")[0] is None
    remote, where = find_secret("http://gpu-7.example.org:10000")
    assert remote is None and "not on this machine" in where  # never sent to another host unasked
    given = tmp_path / "copied.secret"
    given.write_text("copied\n")
    monkeypatch.setenv(SECRET_ENV, "from-env")
    assert find_secret("http://gpu-7.example.org:10000") == ("from-env", SECRET_ENV)
    assert find_secret("http://localhost:10000", str(given))[0] == "copied"  # the flag wins
    with pytest.raises(SecretError, match="cannot read"):
        find_secret("http://localhost:10000", str(tmp_path / "missing"))


def test_the_authorization_check_says_what_is_missing_without_echoing_the_secret():
    assert check_authorization(f"Bearer {SECRET}", SECRET) is None
    assert check_authorization(f"bearer  {SECRET} ", SECRET) is None
    for header in (None, "", "Bearer", "Basic abc", SECRET):
        code, why = check_authorization(header, SECRET)
        assert code == 401 and "Authorization: Bearer <secret>" in why
        assert "--secret-file" in why and SECRET_ENV in why and SECRET not in why
    for header in ("Bearer wrong", "Bearer " + SECRET + "x", "Bearer " + "é" * 5):
        code, why = check_authorization(header, SECRET)
        assert code == 403 and "not this controller's" in why and SECRET not in why


# -- the HTTP surface, in-process ------------------------------------------------------------------
@pytest.fixture()
def client():
    from fastapi.testclient import TestClient

    controller = Controller("shortest_queue")
    with TestClient(create_app(controller, SECRET), headers=authorization(SECRET)) as http:
        yield controller, http


def test_endpoints_speak_the_original_payloads(client):
    controller, http = client
    registration = {"worker_name": "http://w", "check_heart_beat": True, "worker_status": status("bunny")}
    assert http.post("/register_worker", json=registration).status_code == 200
    assert http.post("/list_models").json() == {"models": ["bunny"]}
    assert http.post("/get_worker_address", json={"model": "bunny"}).json() == {"address": "http://w"}
    assert http.post("/get_worker_address", json={"model": "nope"}).json() == {"address": ""}
    assert http.post("/receive_heart_beat", json={"worker_name": "http://w", "queue_length": 0}).json() == {"exist": True}
    assert http.post("/receive_heart_beat", json={"worker_name": "http://x", "queue_length": 0}).json() == {"exist": False}


def test_only_registering_and_heart_beats_need_the_secret():
    from fastapi.testclient import TestClient

    controller = Controller("shortest_queue")
    controller.register_worker("http://w", True, status("bunny"))
    with TestClient(create_app(controller, SECRET)) as anonymous:
        registration = {"worker_name": "http://evil", "check_heart_beat": False, "worker_status": status("bunny", speed=100)}
        for headers, code in (({}, 401), (authorization("wrong"), 403)):
            refused = anonymous.post("/register_worker", json=registration, headers=headers)
            assert refused.status_code == code and SECRET_ENV in refused.json()["error"]
            assert "/register_worker" in refused.json()["error"] and SECRET not in refused.text
            beat = anonymous.post("/receive_heart_beat", json={"worker_name": "http://w", "queue_length": 0}, headers=headers)
            assert beat.status_code == code
        assert anonymous.post("/register_worker", content=b"not json").status_code == 401  # before the body is read
        assert anonymous.post("/list_models").json() == {"models": ["bunny"]}
        assert anonymous.post("/get_worker_address", json={"model": "bunny"}).json() == {"address": "http://w"}
    assert list(controller.workers) == ["http://w"]


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
        ("/receive_heart_beat", json.dumps({"worker_name": "http://w", "queue_length": -5}).encode(), "'queue_length' must be"),
        ("/register_worker", json.dumps({"worker_name": "file:///etc/passwd"}).encode(), "'worker_name' must be"),
        ("/register_worker", json.dumps({"worker_name": "http://w", "worker_status": status("m", speed=1e30)}).encode(), "'speed'"),
        ("/register_worker", b'{"worker_name": "http://w", "worker_status": {"model_names": ["m"], "speed": NaN}}', "'speed'"),
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
    together = {"model_names": ["doomed", "steady"], "speed": 2.0, "queue_length": 0}
    assert requests.post(controller + "/worker_get_status", timeout=10).json() == together  # as a worker of another controller

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
    launch, _, env = processes
    controller = launch(["-m", "bunny.serve.controller", "--heart-beat-expiration", "1"], "/list_models")
    worker = launch([os.path.join(HERE, "fake_worker.py"), "--model", "quiet"], "/worker_get_status")
    requests.post(
        controller + "/register_worker", json={"worker_name": worker, "check_heart_beat": True},
        headers=worker_headers(controller, env), timeout=10,
    ).raise_for_status()
    assert requests.post(controller + "/list_models").json() == {"models": ["quiet"]}
    deadline = time.time() + 10
    while requests.post(controller + "/list_models").json()["models"] and time.time() < deadline:
        time.sleep(0.2)
    assert requests.post(controller + "/list_models").json() == {"models": []}
    assert stream(controller, {"model": "quiet", "prompt": "p"}) == [{"text": server_error_msg, "error_code": 2}]
