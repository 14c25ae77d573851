"""A MiniWoB page as text an LLM can act on, and that text read back (for scripts and tests).

    Instruction: Select DKkQH and click Submit.
    Page:
    [5] label @2,59 46x11
      [6] input_checkbox #ch0 unchecked @6,55 20x13
      "USa" @29,59 19x11
    [9] button #subbtn "Submit" @2,101 101x31

One line per shown element, in document order, indented two spaces per shown ancestor:
`[ref] tag`, then `#id`, `.classes` when it has no text (what an icon is: `.trash`), the element's
own text (JSON-quoted), `checked`/`unchecked` for check boxes and radio buttons or `value="..."`
for a field that holds text, `focused`, and `@left,top widthxheight` in page pixels. A line without
`[ref]` is a run of text inside its parent: it has no ref of its own (MiniWoB renumbers text runs
every step and cannot click them); click its parent or click_xy.

Shown: text runs; elements one interacts with (links, buttons, fields, labels, options); elements
with text of their own; and leaves without text (coloured boxes, shapes). Containers without text
of their own (body, layout divs) are left out. Refs are MiniWoB's: stable for the whole episode.

Trimmed to a character budget: interactive elements and the text inside them first, then other
text, then textless leaves; what is left out is counted in a last line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

INSTRUCTION_HEADER = "Instruction: "
PAGE_HEADER = "Page:"
INDENT = "  "
MAX_SHOWN_TEXT = 120  # characters of one element's text or value
MAX_SHOWN_ID = 30
MAX_SHOWN_CLASSES = 40
_SVG_CLASSES = "SVG_CLASS"  # what miniwob reports for an SVG element's class (an object, not a string)
_INTERACTIVE_TAGS = frozenset({"a", "button", "select", "option", "textarea", "label", "summary"})
_CHECKABLE_TAGS = frozenset({"input_checkbox", "input_radio"})


@dataclass(frozen=True)
class PageElement:
    """One entry of MiniWoB's `dom_elements` with plain Python values."""

    ref: int  # > 0: an element, stable within the episode; < 0: a text run (renumbered every step)
    parent: int  # ref of the parent element; 0 for the root
    tag: str  # lower case; inputs carry their type ("input_text"); text runs are "t"
    text: str
    value: str  # a field's text; "True"/"" for check boxes and radio buttons (miniwob's serialisation)
    id: str
    left: float
    top: float
    width: float
    height: float
    focused: bool
    is_leaf: bool
    classes: str = ""  # the HTML class attribute, space-separated

    @property
    def is_text_run(self) -> bool:
        return self.ref < 0

    @property
    def is_interactive(self) -> bool:
        return self.tag in _INTERACTIVE_TAGS or self.tag.startswith("input")


def page_elements(dom_elements: Iterable[Mapping[str, Any]]) -> list[PageElement]:
    """The elements of a miniwob observation's `dom_elements` (numpy scalars and flags unpacked)."""
    return [
        PageElement(
            ref=int(raw["ref"]),
            parent=int(raw["parent"]),
            tag=str(raw["tag"]),
            text=str(raw["text"]),
            value=str(raw["value"]),
            id=str(raw["id"]),
            left=_scalar(raw["left"]),
            top=_scalar(raw["top"]),
            width=_scalar(raw["width"]),
            height=_scalar(raw["height"]),
            focused=bool(raw["flags"][0]),
            is_leaf=bool(raw["flags"][3]),
            classes=str(raw.get("classes", "")),
        )
        for raw in dom_elements
    ]


def _scalar(value: Any) -> float:
    return float(value[0]) if hasattr(value, "__len__") else float(value)


def render_page(instruction: str, elements: Sequence[PageElement], max_chars: int) -> str:
    """The instruction and the page's shown elements, trimmed to `max_chars` characters."""
    head = f"{INSTRUCTION_HEADER}{' '.join(instruction.split())}\n{PAGE_HEADER}"
    shown = [element for element in elements if _is_shown(element)]
    refs = {element.ref for element in shown}
    parents = {element.ref: element.parent for element in elements}
    by_ref = {element.ref: element for element in elements}
    ranks = {element.ref: _rank(element, by_ref) for element in shown}
    kept: set[int] = set()
    budget = max_chars - len(head) - len(_omitted_line(len(shown)))
    for element in sorted(shown, key=lambda e: ranks[e.ref]):  # stable: document order within a rank
        cost = len(_line(element, _depth(element, parents, refs))) + 1
        if cost <= budget:
            kept.add(element.ref)
            budget -= cost
    lines = [head]
    for element in shown:
        if element.ref in kept:
            lines.append(_line(element, _depth(element, parents, kept)))
    if len(kept) < len(shown):
        lines.append(_omitted_line(len(shown) - len(kept)))
    return "\n".join(lines)


def _is_shown(element: PageElement) -> bool:
    if element.is_text_run:
        return bool(element.text)
    return element.is_interactive or bool(element.text) or element.is_leaf


def _rank(element: PageElement, by_ref: Mapping[int, PageElement]) -> int:
    parent = by_ref.get(element.parent)
    if element.is_interactive or (parent is not None and parent.is_interactive):
        return 0
    return 1 if element.text else 2


def _depth(element: PageElement, parents: Mapping[int, int], shown: set[int]) -> int:
    depth, ref, seen = 0, parents.get(element.ref, 0), set()
    while ref and ref not in seen:  # `seen`: a malformed tree must not loop
        seen.add(ref)
        depth += ref in shown
        ref = parents.get(ref, 0)
    return depth


def _omitted_line(count: int) -> str:
    return f"(... {count} more elements not shown)"


def _quoted(text: str, limit: int = MAX_SHOWN_TEXT) -> str:
    return json.dumps(text if len(text) <= limit else text[: limit - 3] + "...", ensure_ascii=False)


def _classes(classes: str) -> str:
    shown = ""
    for name in classes.split():
        if len(shown) + 1 + len(name) > MAX_SHOWN_CLASSES:
            break
        shown += "." + name
    return shown or "." + classes.split()[0][: MAX_SHOWN_CLASSES - 1]


def _line(element: PageElement, depth: int) -> str:
    parts = [] if element.is_text_run else [f"[{element.ref}] {element.tag}"]
    if element.id and not element.is_text_run:
        parts.append(f"#{element.id[:MAX_SHOWN_ID]}")
    if not element.text and element.classes and element.classes != _SVG_CLASSES:
        parts.append(_classes(element.classes))  # what a textless icon or box is (".trash", ".star")
    if element.text:
        parts.append(_quoted(element.text))
    if element.tag in _CHECKABLE_TAGS:
        parts.append("checked" if element.value == "True" else "unchecked")
    elif element.value and element.value != element.text:
        parts.append(f"value={_quoted(element.value)}")
    if element.focused:
        parts.append("focused")
    parts.append(
        f"@{round(element.left)},{round(element.top)} {round(element.width)}x{round(element.height)}"
    )
    return INDENT * depth + " ".join(parts)


# ---- reading a rendered page back ------------------------------------------------------------------


@dataclass(frozen=True)
class ShownElement:
    """One line of a rendered page."""

    ref: int | None  # None: a text run
    tag: str  # "t" for a text run
    text: str
    value: str
    checked: bool | None  # None: not a check box or radio button
    focused: bool
    id: str
    depth: int
    parent: int | None  # index of the enclosing shown line, None at the top
    left: int
    top: int


_LINE = re.compile(
    r"(?P<indent>(?:  )*)(?:\[(?P<ref>[0-9]+)\] (?P<tag>\S+))?(?P<rest>.*?) ?"
    r"@(?P<left>-?[0-9]+),(?P<top>-?[0-9]+) [0-9]+x[0-9]+"
)


def read_page(observation: str) -> tuple[str, list[ShownElement]]:
    """(instruction, shown elements) of a rendered page; raises ValueError when it is not one."""
    lines = observation.split("\n")
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith(INSTRUCTION_HEADER))
    except StopIteration:
        raise ValueError("no page in the observation") from None
    instruction = lines[start][len(INSTRUCTION_HEADER):]
    elements: list[ShownElement] = []
    open_parents: list[int] = []  # index of the latest line at each depth
    for line in lines[start + 2:]:
        match = _LINE.fullmatch(line)
        if match is None:
            continue  # the omitted-count line, or text after the page
        depth = len(match.group("indent")) // len(INDENT)
        del open_parents[depth:]
        text, value, checked, focused, element_id = _read_rest(match.group("rest"))
        ref = match.group("ref")
        elements.append(ShownElement(
            ref=int(ref) if ref else None, tag=match.group("tag") or "t", text=text, value=value,
            checked=checked, focused=focused, id=element_id, depth=depth,
            parent=open_parents[-1] if open_parents else None,
            left=int(match.group("left")), top=int(match.group("top")),
        ))
        open_parents.append(len(elements) - 1)
    return instruction, elements


def _read_rest(rest: str) -> tuple[str, str, bool | None, bool, str]:
    text = value = element_id = ""
    checked: bool | None = None
    focused = False
    decoder, position = json.JSONDecoder(), 0
    while position < len(rest):
        if rest[position] == " ":
            position += 1
        elif rest[position] == '"':
            text, position = decoder.raw_decode(rest, position)
        elif rest.startswith("value=", position):
            value, position = decoder.raw_decode(rest, position + len("value="))
        else:
            end = rest.find(" ", position)
            end = len(rest) if end < 0 else end
            word, position = rest[position:end], end
            if word.startswith("#"):
                element_id = word[1:]
            elif word in ("checked", "unchecked"):
                checked = word == "checked"
            elif word == "focused":
                focused = True
    return text, value or text, checked, focused, element_id
