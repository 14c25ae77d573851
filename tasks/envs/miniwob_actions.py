"""The text actions of `miniwob:<task>`: a strict grammar, parsed by a pure function.

One action per reply, exactly one of

    click(ref)           click the element shown as [ref] on the page
    type(ref, "text")    click the element [ref], then type the text (after any text already there)
    press(key)           press one key: a name (Enter, Tab, Backspace, Delete, Escape, Space, ArrowUp,
                         ArrowDown, ArrowLeft, ArrowRight, Home, End, PageUp, PageDown, Insert) or one
                         character (`press(a)`, `press("a")`), with optional modifiers (`press(ctrl+a)`,
                         `press(shift+Tab)`; ctrl, shift, alt, meta)
    click_xy(x, y)       click at page coordinates (pixels, as the page's @x,y positions)

with optional whitespace around the action, around the arguments and before the parenthesis.
`ref` is the decimal number in brackets (no brackets, no sign); the text is one double-quoted
string with JSON escapes (`\\"`, `\\\\`, `\\n`), at most MAX_TYPED_CHARS characters, none of them an
emoji or a control character other than newline and tab. Action and key names are matched without
regard to case. Everything else is rejected with a message that says what was wrong: words around
the action, two actions, single quotes, a missing argument.

Whether a ref is on the page, or a point inside it, is the environment's check (it needs the page).
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass

from dartflow.tasks.envs.parsing import excerpt

MAX_TYPED_CHARS = 200
# MiniWoB refs are below 10**6 (miniwob.constants.MAX_REF); more digits cannot name an element.
_MAX_REF_DIGITS = 6

GRAMMAR_SUMMARY = 'click(ref), type(ref, "text"), press(key) or click_xy(x, y)'

# MiniWoB's key syntax (miniwob.constants): special keys in angle brackets, modifiers as prefixes.
NAMED_KEYS = {
    name.lower(): f"<{name}>"
    for name in (
        "Enter", "Tab", "Backspace", "Delete", "Escape", "Space", "ArrowUp", "ArrowDown", "ArrowLeft",
        "ArrowRight", "Home", "End", "PageUp", "PageDown", "Insert",
    )
}
NAMED_KEYS.update({"esc": "<Escape>", "return": "<Enter>", "up": "<ArrowUp>", "down": "<ArrowDown>",
                   "left": "<ArrowLeft>", "right": "<ArrowRight>", "del": "<Delete>"})
# In the order miniwob.constants.ALL_POSSIBLE_KEYS combines them, so every key we build is one of those.
MODIFIER_PREFIXES = {"alt": "A-", "ctrl": "C-", "control": "C-", "meta": "M-", "cmd": "M-", "shift": "S-"}
_PREFIX_ORDER = ("A-", "C-", "M-", "S-")


@dataclass(frozen=True)
class Click:
    ref: int


@dataclass(frozen=True)
class TypeText:
    ref: int
    text: str


@dataclass(frozen=True)
class Press:
    key: str  # MiniWoB's syntax: "<Enter>", "a", "C-a", "S-<Tab>"


@dataclass(frozen=True)
class ClickXY:
    x: float
    y: float


PageAction = Click | TypeText | Press | ClickXY


class InvalidAction(ValueError):
    """An action that cannot be carried out; the message says why, for the agent to read."""


_CALL = re.compile(r"\s*([A-Za-z_]\w*)\s*\((.*)\)\s*", re.DOTALL)
_ANY_CALL = re.compile(r"\b(click_xy|click|type|press)\s*\(", re.IGNORECASE)
_REF = re.compile(r"\s*([0-9]+)\s*")
_NUMBER = r"-?[0-9]+(?:\.[0-9]+)?"
_POINT = re.compile(rf"\s*({_NUMBER})\s*,\s*({_NUMBER})\s*")
_TYPE_ARGS = re.compile(r"\s*([0-9]+)\s*,\s*(.*)", re.DOTALL)
_KEY_COMBO = re.compile(r"((?:[A-Za-z]+\+)*)(.+)", re.DOTALL)


def parse_action(text: str) -> PageAction:
    """The action `text` states, or InvalidAction saying what is wrong with it."""
    try:
        return _parse_one(text)
    except InvalidAction:
        # Checked only on failure: a typed text may itself look like an action.
        if len(_ANY_CALL.findall(text)) > 1:
            raise InvalidAction(f"{excerpt(text)} holds several actions: write one of {GRAMMAR_SUMMARY}") from None
        raise


def _parse_one(text: str) -> PageAction:
    match = _CALL.fullmatch(text)
    if match is None:
        raise InvalidAction(f"{excerpt(text)} is not an action: write exactly one of {GRAMMAR_SUMMARY}")
    name, arguments = match.group(1).lower(), match.group(2)
    if name == "click":
        return Click(_parse_ref(arguments, "click(ref)"))
    if name == "type":
        return _parse_type(arguments)
    if name == "press":
        return Press(parse_key(arguments))
    if name == "click_xy":
        point = _POINT.fullmatch(arguments)
        if point is None:
            raise InvalidAction(f"click_xy takes two numbers, e.g. click_xy(40, 85); got {excerpt(arguments)}")
        return ClickXY(float(point.group(1)), float(point.group(2)))
    raise InvalidAction(f"unknown action '{match.group(1)}': write exactly one of {GRAMMAR_SUMMARY}")


def _parse_ref(text: str, usage: str) -> int:
    match = _REF.fullmatch(text)
    if match is None:
        raise InvalidAction(f"{usage}: the ref is the number in brackets, e.g. 4 for [4]; got {excerpt(text)}")
    digits = match.group(1)
    if len(digits) > _MAX_REF_DIGITS or int(digits) == 0:
        raise InvalidAction(f"{usage}: {excerpt(digits)} is not a ref of the page")
    return int(digits)


def _parse_type(arguments: str) -> TypeText:
    usage = 'type(ref, "text")'
    match = _TYPE_ARGS.fullmatch(arguments)
    if match is None:
        raise InvalidAction(f'{usage} takes a ref and a double-quoted text, e.g. type(5, "hi"); got {excerpt(arguments)}')
    ref = _parse_ref(match.group(1), usage)
    quoted = match.group(2).rstrip()
    if not quoted.startswith('"'):
        raise InvalidAction(f'{usage}: the text must be in double quotes, e.g. type({ref}, "hi"); got {excerpt(quoted)}')
    try:
        typed, end = json.JSONDecoder().raw_decode(quoted)
    except json.JSONDecodeError:
        message = f"{usage}: {excerpt(quoted)} is not one double-quoted string (escape quotes inside as \\\")"
        raise InvalidAction(message) from None
    if end != len(quoted):
        raise InvalidAction(f"{usage}: unexpected {excerpt(quoted[end:])} after the text")
    if not typed:
        raise InvalidAction(f"{usage}: the text is empty (to focus the element, click({ref}))")
    if len(typed) > MAX_TYPED_CHARS:
        raise InvalidAction(f"{usage}: the text has {len(typed)} characters; at most {MAX_TYPED_CHARS}")
    untypable = next((c for c in typed if _untypable(c)), None)
    if untypable is not None:
        raise InvalidAction(f"{usage}: the character {untypable!r} cannot be typed")
    return TypeText(ref, typed)


def _untypable(character: str) -> bool:
    # chromedriver refuses characters beyond the Basic Multilingual Plane (emoji) with an error
    # that would read as a browser failure; control characters other than newline and tab press
    # nothing useful.
    return ord(character) > 0xFFFF or (unicodedata.category(character) == "Cc" and character not in "\n\t")


def parse_key(argument: str) -> str:
    """press's argument as a MiniWoB key ("<Enter>", "C-a"), or InvalidAction."""
    token = argument.strip()
    if token.startswith('"'):
        try:
            token = json.loads(token)
        except json.JSONDecodeError:
            raise InvalidAction(f"press(key): {excerpt(argument)} is not one double-quoted character") from None
        if not isinstance(token, str) or len(token) != 1:
            raise InvalidAction(f"press(key): a quoted key is one character, got {excerpt(argument)}")
        return _character_key(token, argument)
    if not token:
        raise InvalidAction("press(key) needs a key, e.g. press(Enter)")
    if len(token) == 1:
        return _character_key(token, argument)
    combo = _KEY_COMBO.fullmatch(token)
    modifiers, key = combo.group(1).split("+")[:-1], combo.group(2)
    prefixes = []
    for modifier in modifiers:
        prefix = MODIFIER_PREFIXES.get(modifier.lower())
        if prefix is None:
            raise InvalidAction(f"press(key): unknown modifier '{modifier}' (use ctrl, shift, alt, meta)")
        if prefix in prefixes:
            raise InvalidAction(f"press(key): modifier '{modifier}' given twice")
        prefixes.append(prefix)
    base = _character_key(key, argument) if len(key) == 1 else NAMED_KEYS.get(key.lower())
    if base is None:
        names = ", ".join(sorted({name[1:-1] for name in NAMED_KEYS.values()}))
        raise InvalidAction(f"press(key): unknown key {excerpt(key)}; a key is one character or one of {names}")
    return "".join(prefix for prefix in _PREFIX_ORDER if prefix in prefixes) + base


def _character_key(character: str, argument: str) -> str:
    if character == " ":
        return NAMED_KEYS["space"]
    if not " " < character <= "~":  # MiniWoB presses printable ASCII only
        raise InvalidAction(f"press(key): {excerpt(argument)} is not a printable ASCII character or a key name")
    return character


def format_action(action: PageAction) -> str:
    """The text of an action in the grammar (what a script writes); parse_action reads it back."""
    if isinstance(action, Click):
        return f"click({action.ref})"
    if isinstance(action, TypeText):
        return f"type({action.ref}, {json.dumps(action.text, ensure_ascii=False)})"
    if isinstance(action, ClickXY):
        return f"click_xy({action.x:g}, {action.y:g})"
    return f"press({_key_text(action.key)})"


def _key_text(key: str) -> str:
    names = {"A-": "alt+", "C-": "ctrl+", "M-": "meta+", "S-": "shift+"}
    modifiers = ""
    while key[:2] in names:
        modifiers, key = modifiers + names[key[:2]], key[2:]
    return modifiers + (key[1:-1] if key.startswith("<") and len(key) > 1 else key)
