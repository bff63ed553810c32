"""Start the whole web demo on this machine: controller, one model worker and the web page.

Run as (`make serve` does this, on the checkpoint `make demo` trains):
    python -m bunny.serve.launch --model-path outputs/demo/checkpoints/bunny-phi-2 --model-type phi-2 \\
        [--device cpu] [--host 127.0.0.1] [--controller-port 21001] [--worker-port 21002] [--web-port 7860] \\
        [--secret-file FILE]

The three processes start in the README's order, each once the one before answers; their output
goes to the terminal. The controller's secret (`bunny.serve.secret`: --secret-file, else
BUNNY_CONTROLLER_SECRET, else the controller's file for its port, made if missing) is handed to the
controller and the worker in their environment. The page's URL is printed when everything is up.
Ctrl-C stops all three, and if one of them exits the others are stopped too; so does SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Sequence

import requests

from bunny.serve.secret import SECRET_ENV, SecretError, keep_secret

STARTUP_TIMEOUT = 300  # seconds for a process to answer (a large model takes a while to load)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(process: subprocess.Popen, url: str, method: str = "post", timeout: float = STARTUP_TIMEOUT) -> None:
    """Wait until `url` answers; RuntimeError when `process` exits first or `timeout` passes."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"it exited with status {process.returncode} before it answered at {url}")
        try:
            requests.request(method, url, timeout=2)
            return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise RuntimeError(f"it did not answer at {url} within {timeout:g} s")


def build_parser() -> argparse.ArgumentParser:
    from bunny.model.backbones import MODEL_TYPES

    parser = argparse.ArgumentParser(prog="python -m bunny.serve.launch", description=__doc__.split("\n")[0])
    parser.add_argument("--model-path", required=True, help="checkpoint the worker serves")
    parser.add_argument("--model-base", default=None, help="base LLM, for LoRA or projector-only checkpoints")
    parser.add_argument("--model-type", required=True, choices=MODEL_TYPES, help="the LLM back-end of the checkpoint")
    parser.add_argument("--device", default="cpu", help="torch device of the worker (cuda on a GPU machine)")
    parser.add_argument("--host", default="127.0.0.1", help="address every server binds")
    parser.add_argument("--controller-port", type=int, default=21001)
    parser.add_argument("--worker-port", type=int, default=21002)
    parser.add_argument("--web-port", type=int, default=7860)
    parser.add_argument(
        "--secret-file", default=None,
        help="file holding the controller's secret (made if missing; default: controller-<port>.secret in "
        "$BUNNY_SECRET_DIR or ~/.cache/bunny, holding $BUNNY_CONTROLLER_SECRET if set)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if not os.path.exists(args.model_path):
        raise SystemExit(f"serve: no checkpoint at {args.model_path} (make demo builds the demo's)")
    try:
        secret, secret_file = keep_secret(args.controller_port, args.secret_file)
    except (SecretError, OSError) as err:
        raise SystemExit(f"serve: {err}")
    with_secret = dict(os.environ, **{SECRET_ENV: secret})  # unlike a command line, only this user can read it
    local = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    controller = f"http://{local}:{args.controller_port}"
    worker = f"http://{local}:{args.worker_port}"
    page = f"http://{local}:{args.web_port}"
    python = [sys.executable, "-m"]
    plan = [
        ("controller", [*python, "bunny.serve.controller", "--host", args.host, "--port", str(args.controller_port)]
         + (["--secret-file", args.secret_file] if args.secret_file else []),
         controller + "/list_models", "post", with_secret),
        ("model worker", [*python, "bunny.serve.model_worker", "--host", args.host, "--port", str(args.worker_port),
                          "--controller", controller, "--worker", worker, "--model-path", args.model_path,
                          "--model-type", args.model_type, "--device", args.device]
         + (["--model-base", args.model_base] if args.model_base else []),
         worker + "/worker_get_status", "post", with_secret),
        ("web server", [*python, "bunny.serve.gradio_web_server", "--host", args.host, "--port", str(args.web_port),
                        "--controller", controller],
         page + "/", "get", None),
    ]  # fmt: skip
    processes: list[subprocess.Popen] = []

    def terminated(signum: int, frame: object) -> None:  # `kill` stops the servers as Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)
    try:
        for name, command, probe, method, env in plan:
            print(f"serve: starting the {name}: {' '.join(command[1:])}", flush=True)
            processes.append(subprocess.Popen(command, env=env))
            try:
                wait_until_up(processes[-1], probe, method)
            except RuntimeError as err:
                raise SystemExit(f"serve: the {name} did not start: {err}")
        print(f"serve: workers register with the controller's secret, kept in {secret_file}", flush=True)
        print(f"\nserve: the Bunny web demo is up at {page}  (Ctrl-C stops it)\n", flush=True)
        while all(process.poll() is None for process in processes):
            time.sleep(0.5)
        stopped = next(name for (name, *_), process in zip(plan, processes) if process.poll() is not None)
        raise SystemExit(f"serve: the {stopped} exited; stopping the others")
    except KeyboardInterrupt:
        print("\nserve: stopping", flush=True)
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in reversed(processes):
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    main()
