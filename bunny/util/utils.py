"""Small runtime helpers shared by the command-line tools."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import IO, Any, Iterable, Iterator


def disable_torch_init() -> None:
    """Skip the random initialisation of Linear and LayerNorm layers (weights are loaded right after),
    for the rest of the process (the original's helper; `torch_init_skipped` undoes it afterwards)."""
    import torch  # here, so that the tools that only read and write files start without torch

    setattr(torch.nn.Linear, "reset_parameters", lambda self: None)
    setattr(torch.nn.LayerNorm, "reset_parameters", lambda self: None)


@contextmanager
def torch_init_skipped() -> Iterator[None]:
    """`disable_torch_init` for the time of a block: loading a checkpoint in a process that goes on
    building models (a test run, lmms-eval, a notebook) must not leave later models uninitialised."""
    import torch

    saved = {cls: cls.__dict__.get("reset_parameters") for cls in (torch.nn.Linear, torch.nn.LayerNorm)}
    disable_torch_init()
    try:
        yield
    finally:
        for cls, method in saved.items():
            setattr(cls, "reset_parameters", method)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _current_umask()  # read once: setting it (the only way to read it) is not thread-safe


@contextmanager
def atomic_write(
    path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8", private: bool = False
) -> Iterator[IO]:
    """Open `path` for writing through a temporary file in the same directory (created if needed),
    renamed into place only when the block succeeds: a crash never leaves a partial file under the
    final name. The file gets the permissions a plain `open` would give it, or only the owner's
    (0600) when `private`. The one way this package writes a file that others read."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")  # 0600
    try:
        if not private:
            os.chmod(tmp, 0o666 & ~UMASK)
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class OutputDirectoryError(ValueError):
    """An output directory that can't be written without destroying what a user already had."""


def check_output_directory(path: str | os.PathLike, marker: str, overwrite: bool) -> str:
    """The absolute `path`, if a directory may be written there: nothing there, an empty directory,
    or (with `overwrite`) a previous output of ours, recognised by the file `marker` inside it."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputDirectoryError(f"{path} exists and is not a directory")
    if os.path.isdir(path) and os.listdir(path):
        if not os.path.isfile(os.path.join(path, marker)):
            raise OutputDirectoryError(
                f"{path} is not empty and was not written by this tool (it has no {marker}); "
                "choose a new or empty directory, nothing in it is replaced"
            )
        if not overwrite:
            raise OutputDirectoryError(f"{path} holds an earlier output; pass --overwrite to replace it")
    cwd = os.getcwd()
    if cwd == path or cwd.startswith(path + os.sep):
        raise OutputDirectoryError(f"{path} is the working directory or holds it; choose another directory")
    return path


@contextmanager
def atomic_directory(path: str | os.PathLike, marker: str, overwrite: bool = False) -> Iterator[str]:
    """A new temporary directory beside `path` to fill, moved to `path` only when the block succeeds.

    `path` must pass `check_output_directory`. A crash leaves no partial directory under the final
    name and nothing of the temporary one; a replaced earlier output is removed only once the new
    one is in place. The block must write `marker` into the directory it is given.
    """
    path = check_output_directory(path, marker, overwrite)
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{name}.partial-")
    try:
        yield tmp
        if not os.path.isfile(os.path.join(tmp, marker)):
            raise RuntimeError(f"the output written to {tmp} has no {marker}")
        old = None
        if os.path.isdir(path) and os.listdir(path):
            old = tempfile.mkdtemp(dir=parent, prefix=f".{name}.old-")
            os.replace(path, old)
        try:
            os.replace(tmp, path)  # onto nothing or an empty directory
        except BaseException:
            if old is not None:
                os.replace(old, path)
            raise
        if old is not None:
            shutil.rmtree(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> None:
    """One JSON object per line, written atomically (see `atomic_write`)."""
    with atomic_write(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


# The messages the web demo shows (the original's wording, which its users know).
server_error_msg = "**NETWORK ERROR DUE TO HIGH TRAFFIC. PLEASE REGENERATE OR REFRESH THIS PAGE.**"
moderation_msg = "YOUR INPUT VIOLATES OUR CONTENT MODERATION GUIDELINES. PLEASE TRY AGAIN."
