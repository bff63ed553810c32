"""Starting the serving processes on loopback for tests: free ports, waiting until they listen, cleanup."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest
import requests

from bunny.serve.launch import free_port, wait_until_up
from bunny.serve.protocol import iter_chunks
from bunny.serve.secret import SECRET_DIR_ENV, SECRET_ENV, authorization

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def start(
    argv: list[str], url: str, env: dict, probe: str, cwd: str = REPO, method: str = "post", log: str = os.devnull
) -> subprocess.Popen:
    """Start `python argv...` (output to `log`) and wait until `url + probe` answers (up to 120 s)."""
    with open(log, "ab") as output:
        process = subprocess.Popen([sys.executable, *argv], cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_until_up(process, url + probe, method, timeout=120)
    except RuntimeError as err:
        process.kill()
        tail = open(log, errors="replace").read()[-3000:] if log != os.devnull else ""
        raise RuntimeError(f"{argv}: {err}\n{tail}") from None
    return process


@pytest.fixture()
def processes(tmp_path) -> Iterator:
    """`launch(argv, probe, cwd=REPO)` starts a server on a free port and returns its URL; "{port}"
    and "{url}" in argv are filled in and "--port" is added unless argv has it. All are killed at the end.
    Controllers keep their secrets in tmp_path/"secrets", where workers started here find them."""
    env = dict(os.environ, BUNNY_LOGDIR=str(tmp_path / "logs"), PYTHONPATH=REPO, TOKENIZERS_PARALLELISM="false")
    env[SECRET_DIR_ENV] = str(tmp_path / "secrets")
    env.pop(SECRET_ENV, None)
    started: list[subprocess.Popen] = []

    def launch(argv: list[str], probe: str, cwd: str = REPO, method: str = "post") -> str:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        argv = [a.format(port=port, url=url) for a in argv]
        if "--port" not in argv:
            argv += ["--port", str(port)]
        log = str(tmp_path / f"server-{len(started)}.log")
        started.append(start(argv, url, env, probe, cwd, method, log))
        return url

    yield launch, started, env
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def secret_file(controller: str, env: dict) -> Path:
    """Where the controller at `controller`, started with `env` (the `processes` fixture's), keeps its secret."""
    return Path(env[SECRET_DIR_ENV]) / f"controller-{urlsplit(controller).port}.secret"


def worker_headers(controller: str, env: dict) -> dict:
    """The headers that register workers with (and send heart beats to) that controller."""
    return authorization(secret_file(controller, env).read_text().strip())


def stream(url: str, payload: dict, timeout: float = 60) -> list[dict]:
    """The chunks of a /worker_generate_stream answer (any HTTP status)."""
    with requests.post(url + "/worker_generate_stream", json=payload, stream=True, timeout=timeout) as response:
        return list(iter_chunks(response.iter_lines(delimiter=b"\0")))
