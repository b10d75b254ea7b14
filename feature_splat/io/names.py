"""Names of output files and folders, made safely from text that the input controls.

View names come from dataset files (``file_path`` in ``transforms.json``, ``NAME`` in COLMAP's
``images.txt``) and prompts come from users; neither may decide where a file lands. Every name
written under an output folder goes through :func:`safe_name`: one path component of ASCII letters,
digits, ``-``, ``_`` and ``.``, never hidden, never ``..``, and short enough for any file system.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from pathlib import PurePosixPath, PureWindowsPath

MAX_NAME_LENGTH = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, fallback: str, max_length: int = MAX_NAME_LENGTH) -> str:
    """``text`` as a single, portable file name: accents dropped, any other character run turned
    into ``_``, leading dots and separators stripped, at most ``max_length`` characters;
    ``fallback`` when nothing is left."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    name = _UNSAFE.sub("_", ascii_text).strip("._-")[:max_length].rstrip("._-")
    return name or fallback


def prompt_folder_name(prompt: str) -> str:
    """A folder name for a prompt: its readable part and a hash of the whole text, so that prompts
    differing only in case, punctuation, script or length never share a folder."""
    digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:8]
    return f"{safe_name(prompt.lower(), 'query', max_length=48)}-{digest}"


def view_file_names(image_names: Sequence[str]) -> list[str]:
    """One unique, safe file name (without extension) per view: the last part of its name
    (``images/frame_0001`` -> ``frame_0001``), suffixed ``-2``, ``-3``, ... where two views would
    otherwise share a name (compared case-insensitively), ``view_007`` where nothing usable is left."""
    names, taken = [], set()
    for index, image_name in enumerate(image_names):
        last = PureWindowsPath(PurePosixPath(image_name).name).name
        base = safe_name(last, f"view_{index:03d}")
        name, count = base, 1
        while name.lower() in taken:
            count += 1
            name = f"{base}-{count}"
        taken.add(name.lower())
        names.append(name)
    return names
