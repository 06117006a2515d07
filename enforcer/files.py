"""Directories the daemon creates for what only root may read (the API
socket's, the flow history's). A leaf module: every layer may use it."""

from __future__ import annotations

import os
from pathlib import Path


def make_private_dir(directory: Path) -> None:
    """directory, created 0700 (root only) with any missing ancestors when
    it does not exist. An existing directory is left exactly as it is: a
    daemon never changes the mode or owner of what it did not create
    (`--socket /run/x.sock` must not make /run 0700)."""
    try:
        os.mkdir(directory, 0o700)  # the umask can only narrow this: never wider than 0700
    except FileExistsError:
        return  # not ours (made before us, or by someone else meanwhile): left alone
    except FileNotFoundError:
        make_private_dir(directory.parent)  # missing ancestors are ours too, so 0700 as well
        return make_private_dir(directory)
    os.chmod(directory, 0o700)  # ours: exactly 0700 whatever the umask took away
