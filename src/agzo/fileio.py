"""Small atomic file operations shared by model saving and checkpoints."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

__all__ = ["link_or_copy"]


def link_or_copy(source: Path, target: Path) -> None:
    """Make `target` hold the content of `source`, atomically.

    A hard link costs no disk space. Files are only ever replaced, never rewritten in
    place, so every name linked to one content keeps it. Where the file system has no
    hard links (or `target` is on another one), the file is copied.
    """
    staging = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        try:
            os.link(source, staging)
        except OSError:
            shutil.copyfile(source, staging)
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)
