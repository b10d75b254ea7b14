"""The class vocabulary shared by every synthetic world, and text -> class resolution.

Label ``k`` in a synthetic world's ground truth names ``CLASS_NAMES[k]``. Class 0 is ``sky``: the
label of rays that hit nothing, so every pixel has a class and labels are never -1.
:data:`SYNONYMS` maps other words to these classes ("armchair" -> "chair", "automobile" -> "car"), and
:func:`resolve_class` finds the class a phrase such as "a photo of a chair" talks about.
"""

from __future__ import annotations

import re

SKY = 0

CLASS_NAMES: list[str] = [
    "sky",
    "floor",
    "wall",
    "ceiling",
    "table",
    "chair",
    "sofa",
    "lamp",
    "mug",
    "plant",
    "book",
    "ball",
    "road",
    "sidewalk",
    "building",
    "car",
    "tree",
    "person",
]

SYNONYMS: dict[str, str] = {
    "heaven": "sky",
    "ground": "floor",
    "carpet": "floor",
    "rug": "floor",
    "tiles": "floor",
    "room wall": "wall",
    "roof": "ceiling",
    "desk": "table",
    "dining table": "table",
    "armchair": "chair",
    "seat": "chair",
    "stool": "chair",
    "couch": "sofa",
    "settee": "sofa",
    "light": "lamp",
    "floor lamp": "lamp",
    "desk lamp": "lamp",
    "street lamp": "lamp",
    "streetlight": "lamp",
    "lamppost": "lamp",
    "cup": "mug",
    "coffee mug": "mug",
    "coffee cup": "mug",
    "houseplant": "plant",
    "potted plant": "plant",
    "flower": "plant",
    "notebook": "book",
    "sphere": "ball",
    "street": "road",
    "asphalt": "road",
    "pavement": "sidewalk",
    "footpath": "sidewalk",
    "house": "building",
    "skyscraper": "building",
    "automobile": "car",
    "vehicle": "car",
    "auto": "car",
    "bush": "tree",
    "human": "person",
    "pedestrian": "person",
    "man": "person",
    "woman": "person",
    "people": "person",
}

_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _singular(word: str) -> str:
    """A crude singular form for matching plurals ("chairs" -> "chair"; "glasses" stays)."""
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _vocabulary() -> list[tuple[list[str], str]]:
    """(phrase as words, class name) for every class name and synonym."""
    entries = [(_words(name), name) for name in CLASS_NAMES]
    entries += [(_words(word), name) for word, name in SYNONYMS.items()]
    return entries


_VOCABULARY = _vocabulary()


def resolve_class(text: str) -> str | None:
    """The class that ``text`` names, or None.

    Case and punctuation are ignored and plurals accepted. A class name or synonym may appear inside a
    longer phrase ("a photo of a chair" -> "chair"); when several do, the longest wins ("a floor lamp"
    -> "lamp"), then the earliest.
    """
    words = [_singular(w) for w in _words(text)]
    best: tuple[int, int, str] | None = None  # (-length, start, class name)
    for phrase, name in _VOCABULARY:
        phrase = [_singular(w) for w in phrase]
        n = len(phrase)
        for start in range(len(words) - n + 1):
            if words[start : start + n] == phrase:
                candidate = (-n, start, name)
                if best is None or candidate < best:
                    best = candidate
                break
    return None if best is None else best[2]
