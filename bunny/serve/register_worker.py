"""Register a running model worker with a controller by hand (the controller asks it for its status).

Run as:
    python -m bunny.serve.register_worker --controller-address http://localhost:21001 \\
        --worker-name http://localhost:21002 [--check-heart-beat] [--secret-file FILE]

It presents the controller's secret as a model worker does: from --secret-file, else
BUNNY_CONTROLLER_SECRET, else the controller's own file when it runs on this machine
(`bunny.serve.secret`).
"""

from __future__ import annotations

import argparse
from typing import Sequence

import requests

from bunny.serve.protocol import WORKER_REQUEST_TIMEOUT
from bunny.serve.secret import SECRET_ENV, SecretError, authorization, find_secret


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bunny.serve.register_worker", description=__doc__.split("\n")[0])
    parser.add_argument("--controller-address", default="http://localhost:21001", help="URL of the controller")
    parser.add_argument("--worker-name", required=True, help="URL of the worker, as the controller will reach it")
    parser.add_argument(
        "--check-heart-beat", action="store_true", help="remove the worker when its heart beats stop"
    )
    parser.add_argument(
        "--secret-file", default=None,
        help="file holding the controller's secret (default: $BUNNY_CONTROLLER_SECRET, else the controller's own "
        "file when it runs on this machine: controller-<port>.secret in $BUNNY_SECRET_DIR or ~/.cache/bunny)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    payload = {"worker_name": args.worker_name, "check_heart_beat": args.check_heart_beat, "worker_status": None}
    try:
        secret, source = find_secret(args.controller_address, args.secret_file)
    except SecretError as err:
        raise SystemExit(f"register_worker: {err}")
    try:
        response = requests.post(
            args.controller_address.rstrip("/") + "/register_worker", json=payload, headers=authorization(secret),
            timeout=2 * WORKER_REQUEST_TIMEOUT,
        )
    except requests.RequestException as err:
        raise SystemExit(f"register_worker: cannot reach the controller at {args.controller_address}: {err}")
    if response.status_code in (401, 403):
        sent = f"the secret from {source}" if secret else f"no secret ({source})"
        raise SystemExit(
            f"register_worker: the controller at {args.controller_address} refused (HTTP {response.status_code}): "
            f"this sent {sent}. Give the controller's secret with --secret-file FILE or {SECRET_ENV}."
        )
    if response.status_code != 200:
        raise SystemExit(f"register_worker: the controller refused {args.worker_name}: {response.text}")
    print(f"registered {args.worker_name} with {args.controller_address}")


if __name__ == "__main__":
    main()
