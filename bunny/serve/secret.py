"""The controller's shared secret: where it is kept, how workers find it, how they present it.

Only a client that knows the secret may register a worker with the controller or send it heart
beats (`Authorization: Bearer <secret>`); everything else the web page and clients use stays open.

Where the secret comes from, first match wins:
- controller: the file given with `--secret-file` if it exists; else the `BUNNY_CONTROLLER_SECRET`
  environment variable; else the file `controller-<port>.secret` in the secret directory if it
  exists; else a new random one. It is then kept in that file (`--secret-file`, or
  `controller-<port>.secret`), created with mode 0600 in a directory of mode 0700, so that it
  survives a restart of the controller and workers keep working;
- model worker and `python -m bunny.serve.register_worker`: the file given with `--secret-file`;
  else `BUNNY_CONTROLLER_SECRET`; else, when the controller address names this machine
  (localhost, 127.x.x.x, ::1, 0.0.0.0 or this machine's host name), `controller-<port>.secret`
  for the port of the address. So workers started by the controller's user on its machine need
  nothing; a worker on another machine is given the file's content by either route.

The secret directory is `$BUNNY_SECRET_DIR`, else `$XDG_CACHE_HOME/bunny`, else `~/.cache/bunny`.
Delete the file (and restart the controller and its workers) to change the secret.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import socket
import stat
from pathlib import Path
from urllib.parse import urlsplit

from bunny.util.utils import atomic_write

SECRET_ENV = "BUNNY_CONTROLLER_SECRET"
SECRET_DIR_ENV = "BUNNY_SECRET_DIR"
HOW_TO_PROVIDE = (
    f"workers and register_worker run by the controller's user on its machine read it from the controller's "
    f"secret file; elsewhere give it with --secret-file FILE or the {SECRET_ENV} environment variable"
)


class SecretError(RuntimeError):
    """The secret can't be read or kept safely; the message says which file and why."""


def secret_directory() -> Path:
    if os.environ.get(SECRET_DIR_ENV):
        return Path(os.environ[SECRET_DIR_ENV])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "bunny"


def default_secret_file(port: int) -> Path:
    """The file the controller listening on `port` keeps its secret in, unless told another."""
    return secret_directory() / f"controller-{port}.secret"


def is_this_machine(host: str) -> bool:
    if host in ("localhost", socket.gethostname()):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def secret_file_for(controller_address: str) -> Path | None:
    """The controller's default secret file, when `controller_address` names this machine."""
    parts = urlsplit(controller_address)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    return default_secret_file(port) if parts.hostname and is_this_machine(parts.hostname) else None


def read_secret(path: Path) -> str:
    try:
        secret = path.read_text().strip()
    except OSError as err:
        raise SecretError(f"cannot read the controller's secret from {path}: {err.strerror}") from None
    if not secret:
        raise SecretError(f"the controller's secret file {path} is empty")
    return secret


def find_secret(controller_address: str, secret_file: str | None = None) -> tuple[str | None, str]:
    """The secret a worker presents to `controller_address`, and where it came from (for messages);
    no secret when none is given and this machine has no file for that controller."""
    if secret_file:
        return read_secret(Path(secret_file)), f"--secret-file {secret_file}"
    if os.environ.get(SECRET_ENV):
        return os.environ[SECRET_ENV].strip(), SECRET_ENV
    path = secret_file_for(controller_address)
    if path is None:
        return None, f"no --secret-file, no {SECRET_ENV}, and {controller_address} is not on this machine"
    if not path.exists():
        return None, f"no --secret-file, no {SECRET_ENV}, and no {path}"
    return read_secret(path), str(path)


def authorization(secret: str | None) -> dict[str, str]:
    """The request headers that present `secret` (none without one)."""
    return {"Authorization": f"Bearer {secret}"} if secret else {}


def check_authorization(header: str | None, secret: str) -> tuple[int, str] | None:
    """None when the Authorization `header` presents `secret`, else the HTTP status and why."""
    scheme, _, presented = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return 401, f"it needs the controller's secret in the header 'Authorization: Bearer <secret>'; {HOW_TO_PROVIDE}"
    if not hmac.compare_digest(presented.strip().encode(), secret.encode()):
        return 403, f"the secret in the Authorization header is not this controller's; {HOW_TO_PROVIDE}"
    return None


def check_private_directory(directory: Path) -> None:
    """SecretError unless only this user (or root) may write to `directory`."""
    info = directory.stat()
    if info.st_uid not in (os.getuid(), 0) or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise SecretError(
            f"{directory} must be writable only by you to keep the controller's secret in "
            f"(choose another directory with {SECRET_DIR_ENV} or another file with --secret-file)"
        )


def is_private_file(path: Path) -> bool:
    info = path.stat()
    return info.st_uid == os.getuid() and not info.st_mode & (stat.S_IRWXG | stat.S_IRWXO)


def write_secret(path: Path, secret: str) -> None:
    """Write `secret` to `path` with mode 0600, atomically (a temporary file renamed over it)."""
    with atomic_write(path, private=True) as file:
        file.write(secret + "\n")


def keep_secret(port: int, secret_file: str | None = None) -> tuple[str, Path]:
    """The controller's secret (see the module docstring for where it comes from) and the file it
    is kept in, which is created or replaced if needed."""
    path = Path(secret_file) if secret_file else default_secret_file(port)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_private_directory(path.parent)
    kept = path.exists() and is_private_file(path) and path.read_text().strip()
    if secret_file and path.exists():
        if not kept:
            raise SecretError(f"--secret-file {path} must be a non-empty file only you can read (chmod 600 {path})")
        return kept, path
    secret = os.environ.get(SECRET_ENV, "").strip() or kept or secrets.token_urlsafe(32)
    if secret != kept:
        write_secret(path, secret)
    return secret, path
