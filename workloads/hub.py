"""Hugging Face Hub ids (``org/name[@revision]``) for ``model.name_or_path`` and ``model.tokenizer``: a local
directory as it is, else ``snapshot_download`` through the user's cache (offline: a DataError naming the fix).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from jobs.errors import DataError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?(@[\w./-]+)?$")


def cache_dir() -> str:
    """The Hub cache as the environment says now (huggingface_hub reads it once, at import)."""
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return os.environ.get("HF_HUB_CACHE") or os.path.join(os.path.expanduser(home), "hub")


def resolve(name_or_path: str, key: str = "model.name_or_path") -> str:
    """A local directory for a checkpoint directory or Hub id; raises DataError (one line) when there is none."""
    if Path(name_or_path).is_dir():
        return name_or_path
    if not HUB_ID.match(name_or_path) or Path(name_or_path).exists() or name_or_path.endswith((".json", ".txt")):
        raise DataError(
            f"{key} '{name_or_path}' is not a directory, so it has no config.json — give a Hugging Face checkpoint directory or a Hub id (org/name)"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo_id, _, revision = name_or_path.partition("@")
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        return snapshot_download(repo_id, revision=revision or None, cache_dir=cache_dir(), local_files_only=offline)
    except LocalEntryNotFoundError:
        raise DataError(
            f"{key} '{name_or_path}' is not in the Hugging Face cache {cache_dir()} and HF_HUB_OFFLINE is set — "
            "download it once with HF_HUB_OFFLINE=0 (or set HF_HOME to a cache that has it), or give a checkpoint directory"
        ) from None
    except (RepositoryNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
        raise DataError(
            f"{key} '{name_or_path}' could not be fetched from the Hugging Face Hub ({str(e).splitlines()[0]}) — "
            "check the id, or give a checkpoint directory"
        ) from None
