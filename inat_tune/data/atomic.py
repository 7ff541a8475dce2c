"""Build a cache folder once: under a file lock, in a temporary folder renamed into place.

Both on-disk caches of the data path (decoded images, frozen-backbone features) are folders
shared by every trial on a node. A folder counts as complete when its marker file exists; it
only ever appears complete, by an atomic rename, so a reader never sees half of one and
concurrent builders build it once. Deleting a complete folder is always safe.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from filelock import FileLock


def build_folder_once(final: str | Path, build: Callable[[Path], None], *,
                      marker: str = "meta.json") -> bool:
    """Make ``final`` a complete folder (one holding ``marker``), building it if it is not.

    Returns False at once when ``final/marker`` exists. Otherwise takes the lock
    ``<final>.lock`` beside it and looks again (another process may have built it meanwhile:
    False); then calls ``build(tmp)`` on a new empty folder beside ``final``, which must write
    ``marker`` last, and renames it to ``final``: True. Errors from ``build`` propagate and
    leave no temporary folder behind; so do OSErrors from creating the parent folder, taking
    the lock or renaming.
    """
    final = Path(final)
    if (final / marker).is_file():  # complete folders appear by an atomic rename
        return False
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final.with_name(f"{final.name}.lock"))):
        if (final / marker).is_file():  # another process built it while we waited
            return False
        tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.build-", dir=final.parent))
        try:
            build(tmp)
            if not (tmp / marker).is_file():
                raise RuntimeError(f"building {final} wrote no {marker}: it would never count as complete")
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return True
