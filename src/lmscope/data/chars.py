"""Characters as people read them in a table, and the seed study's character classes."""

from __future__ import annotations

import unicodedata

VISIBLE = {" ": "<space>", "\n": "<newline>", "\t": "<tab>", "\r": "<cr>"}
CHAR_CLASSES = ("vowel", "consonant", "digit", "space/newline", "punctuation", "other symbol")


def visible(char: str) -> str:
    """A character as people can read it in a table: <space>, <newline>, U+200B, ..."""
    if char in VISIBLE:
        return VISIBLE[char]
    if len(char) == 1 and unicodedata.category(char)[0] in "CZ":
        return f"U+{ord(char):04X}"
    return char


# Whitespace as a reader sees it in a prompt drawn character by character (the report, the
# figures' axes): a visible but quiet mark in place of the character or of its <name>.
QUIET = {" ": "·", "\n": "⏎", "\t": "⇥", "\r": "⇤"}
QUIET.update({VISIBLE[c]: mark for c, mark in QUIET.items()})


def quiet(text: str) -> str:
    """A character or token (or a character's `visible` form) with whitespace as quiet marks:
    " " and "<space>" are "·", a newline is "⏎"; a character was whitespace if it is in QUIET."""
    return QUIET.get(text) or "".join(QUIET.get(c, c) for c in text)


def char_class(char: str) -> str:
    """vowel, consonant, digit, space/newline, punctuation or other symbol (the seed's classes)."""
    if len(char) != 1:
        return "other symbol"
    if char.isspace():
        return "space/newline"
    base = unicodedata.normalize("NFD", char)[0].lower()
    if base in "aeiou":
        return "vowel"
    if char.isalpha():
        return "consonant"
    if char.isdigit():
        return "digit"
    if unicodedata.category(char).startswith("P"):
        return "punctuation"
    return "other symbol"
