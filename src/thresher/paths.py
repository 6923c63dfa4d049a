"""Local path or hub id: which one an argument names, and the errors when it is neither.

An argument that exists is a local path. Otherwise only the `owner/name` form is a hub id, and
only when `owner` is no folder here and the name does not end in a file suffix; every other
argument that does not exist is a missing local file, reported with the near matches in the
nearest folder that does exist. When the hub is needed but cannot be used (`HF_HUB_OFFLINE`
set, or no connection to it) the error says so and how to proceed.

Imports nothing heavy: `validate` and the readers call it before any model loads.
"""

from __future__ import annotations

import difflib
import itertools
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

# a hub id is owner/name; a leading "." or "/" means a local path
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
# ours: a TCP connect that has not answered in 3 s will not carry a download either
CONNECT_TIMEOUT_S = 3.0
MAX_LISTED = 2000  # ours: a folder's entries compared for near matches (a huge folder stays fast)


def is_hub_id(arg: str, file_suffixes: tuple[str, ...]) -> bool:
    """Whether `arg`, which does not exist here, is taken as a hub id: `owner/name`, where no
    folder `owner` exists here and `name` does not end in one of `file_suffixes`."""
    if not HUB_ID.match(arg):
        return False
    owner = arg.split("/", 1)[0]
    return not Path(owner).is_dir() and not arg.lower().endswith(file_suffixes)


def near_matches(arg: str) -> tuple[Path, list[str]]:
    """The deepest existing folder on the way to `arg`, and up to three of its entries close to
    the first part of `arg` that does not exist there."""
    path = Path(arg).expanduser()
    base = Path(path.anchor) if path.is_absolute() else Path(".")
    parts = path.parts[1:] if path.is_absolute() else path.parts
    missing = parts[-1] if parts else arg
    for part in parts:
        if not (base / part).exists():
            missing = part
            break
        base = base / part
    try:
        entries = [p.name for p in itertools.islice(base.iterdir(), MAX_LISTED)]
    except OSError:  # not a folder, or not readable: no suggestions
        entries = []
    close = difflib.get_close_matches(missing, entries, n=3, cutoff=0.6)
    if not close:  # `data` for `data.jsonl`, `alpaca` for `alpaca_gpt4.json`: a shared stem
        stem = missing.split(".")[0].lower()
        close = sorted(e for e in entries if stem and e.lower().startswith(stem))[:3]
    return base, close


def missing_path(what: str, arg: str, expected: str) -> str:
    """The message for a local path that does not exist: what was given, the near matches next
    to it, and what is expected instead."""
    base, close = near_matches(arg)
    where = "here" if str(base) == "." else f"in {base}/"
    hint = (
        f" Near matches {where}: {', '.join(repr(str(base / c)) for c in close)}."
        if close
        else f" Nothing close {where}."
    )
    return f"{what} {arg!r}: no such file or folder.{hint} {expected}"


def offline_reason(check_network: bool = True) -> str | None:
    """Why the hub cannot be used, or None when it may be: an offline variable is set, or
    (with `check_network`) a TCP connection to the hub's endpoint fails. Behind a proxy the
    network is not probed (a direct connection may fail where the proxy works)."""
    for var in OFFLINE_VARS:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"the hub is offline ({var}={os.environ[var]})"
    if not check_network or any(os.environ.get(v) for v in PROXY_VARS):
        return None
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return None
    except OSError as e:
        return f"the hub cannot be reached (no network: connecting to {host}:{port} failed: {e})"
