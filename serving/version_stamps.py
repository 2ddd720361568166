"""Stamps of a model version's files: what tells one write of them from another.

A stamp is (name, size, mtime_ns, ctime_ns) per file; any write changes a file's ctime.
The model manager keeps the stamp of a version that failed to load (retried only once its
files change) and that of a loaded version's metadata.json (a new publish under the same
version number is loaded again).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from serving.repository import CONFIG_FILE, METADATA_FILE

FileStamp = tuple[str, int, int, int]  # (name, size, mtime_ns, ctime_ns)
Stamp = tuple[FileStamp, ...]


def _entry(name: str, st: os.stat_result) -> FileStamp:
    return (name, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_stamp(path: Path) -> FileStamp:
    """One file's stamp (OSError if it cannot be read)."""
    return _entry(path.name, path.stat())


def metadata_stamp(stamp: Stamp) -> FileStamp | None:
    """The entry of a version folder's `folder_stamp` for its metadata.json, which every publish
    writes anew and nothing edits in place."""
    return next((entry for entry in stamp if entry[0] == METADATA_FILE), None)


def folder_stamp(path: Path) -> Stamp:
    """Identity of a version folder's files and of its model's config.json: any write
    changes a file's ctime."""
    entries = [_entry(e.name, e.stat()) for e in sorted(os.scandir(path), key=lambda e: e.name)]
    with contextlib.suppress(FileNotFoundError):
        entries.append(_entry(f"../{CONFIG_FILE}", (path.parent / CONFIG_FILE).stat()))
    return tuple(entries)
