"""Register a running model worker with a controller by hand (the controller asks it for its status).

Run as:
    python -m bunny.serve.register_worker --controller-address http://localhost:21001 \\
        --worker-name http://localhost:21002 [--check-heart-beat]
"""

from __future__ import annotations

import argparse
from typing import Sequence

import requests

from bunny.serve.protocol import WORKER_REQUEST_TIMEOUT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bunny.serve.register_worker", description=__doc__.split("\n")[0])
    parser.add_argument("--controller-address", default="http://localhost:21001", help="URL of the controller")
    parser.add_argument("--worker-name", required=True, help="URL of the worker, as the controller will reach it")
    parser.add_argument(
        "--check-heart-beat", action="store_true", help="remove the worker when its heart beats stop"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    payload = {"worker_name": args.worker_name, "check_heart_beat": args.check_heart_beat, "worker_status": None}
    try:
        response = requests.post(
            args.controller_address.rstrip("/") + "/register_worker", json=payload, timeout=2 * WORKER_REQUEST_TIMEOUT
        )
    except requests.RequestException as err:
        raise SystemExit(f"register_worker: cannot reach the controller at {args.controller_address}: {err}")
    if response.status_code != 200:
        raise SystemExit(f"register_worker: the controller refused {args.worker_name}: {response.text}")
    print(f"registered {args.worker_name} with {args.controller_address}")


if __name__ == "__main__":
    main()
