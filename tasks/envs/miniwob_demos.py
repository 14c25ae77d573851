"""Scripted solutions of some MiniWoB tasks, acting on the observation text the agent sees.

`next_action(task, observation)` reads the rendered page (miniwob_page.read_page) and returns the
next action of a solution in the text grammar; called again on each new observation, it plays the
task to the end. A script reads only what the observation shows (never the seed or the page's
hidden state), so a demonstration is something the policy could have done from the same prompt,
and a page the rendering loses (an element trimmed by the budget) makes the script fail loudly
(`ScriptError`) instead of acting blind.

For the behaviour-cloning warm-up (tasks/rollout/demonstrations.py): `demonstration_script(task)`
is a script `(the episode's observations so far, rng) -> next action`, or None for a task without one.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence

from dartflow.tasks.envs.miniwob_actions import TypeText, format_action
from dartflow.tasks.envs.miniwob_page import ShownElement, read_page


class ScriptError(ValueError):
    """The script does not understand the page (unexpected instruction or missing element)."""


Page = list[ShownElement]


def _quoted(instruction: str) -> list[str]:
    return re.findall(r'"([^"]*)"', instruction)


def _first(page: Page, what: str, predicate: Callable[[ShownElement], bool]) -> ShownElement:
    for element in page:
        if element.ref is not None and predicate(element):
            return element
    raise ScriptError(f"no {what} on the page")


def _click(element: ShownElement) -> str:
    return f"click({element.ref})"


def _type(element: ShownElement, text: str) -> str:
    return format_action(TypeText(element.ref, text))


def _button(page: Page, text: str) -> ShownElement:
    return _first(page, f'button "{text}"', lambda e: e.tag == "button" and e.text == text)


def _label_of(page: Page, index: int) -> str:
    """The text runs beside a check box inside its label (the line it is nested in)."""
    parent = page[index].parent
    texts = [e.text for e in page if e.ref is None and e.parent == parent and parent is not None]
    return " ".join(texts)


def _fill_then_submit(page: Page, fields: Sequence[tuple[ShownElement, str]], submit: str) -> str:
    for field, text in fields:
        if field.value != text:
            return _type(field, text)
    return _click(_button(page, submit))


# ---- one function per task: (instruction, page) -> action ------------------------------------------


def click_test(instruction: str, page: Page) -> str:
    return _click(_first(page, "button", lambda e: e.tag == "button"))


def click_test_2(instruction: str, page: Page) -> str:
    match = re.search(r"Click button (\S+?)\.", instruction)
    if match is None:
        raise ScriptError(f"unexpected instruction {instruction!r}")
    return _click(_button(page, match.group(1)))


def click_button(instruction: str, page: Page) -> str:
    (target,) = _quoted(instruction) or [""]
    return _click(_button(page, target))


def click_link(instruction: str, page: Page) -> str:
    (target,) = _quoted(instruction) or [""]
    return _click(_first(page, f'link "{target}"', lambda e: e.tag in ("span", "a") and e.text == target))


def click_button_sequence(instruction: str, page: Page) -> str:
    one, two = _button(page, "ONE"), _button(page, "TWO")
    return _click(two if one.focused else one)  # a clicked button keeps the focus


def click_dialog(instruction: str, page: Page) -> str:
    for element in page:
        if element.ref is None and element.text == "Close" and element.parent is not None:
            return _click(page[element.parent])
    raise ScriptError("no Close button on the page")


def focus_text(instruction: str, page: Page) -> str:
    return _click(_first(page, "text field", lambda e: e.tag == "input_text"))


def focus_text_2(instruction: str, page: Page) -> str:
    match = re.search(r"(\d+)(?:st|nd|rd|th)", instruction)
    fields = [e for e in page if e.ref is not None and e.tag == "input_text"]
    if match is None or not 1 <= int(match.group(1)) <= len(fields):
        raise ScriptError(f"cannot tell which of {len(fields)} text fields {instruction!r} means")
    return _click(fields[int(match.group(1)) - 1])


def enter_text(instruction: str, page: Page) -> str:
    (target,) = _quoted(instruction) or [""]
    field = _first(page, "text field", lambda e: e.tag == "input_text")
    return _fill_then_submit(page, [(field, target)], "Submit")


def enter_password(instruction: str, page: Page) -> str:
    (password,) = _quoted(instruction) or [""]
    fields = [e for e in page if e.ref is not None and e.tag == "input_password"]
    if len(fields) != 2:
        raise ScriptError(f"expected two password fields, found {len(fields)}")
    return _fill_then_submit(page, [(field, password) for field in fields], "Submit")


def login_user(instruction: str, page: Page) -> str:
    username, password = (_quoted(instruction) + ["", ""])[:2]
    user_field = _first(page, "username field", lambda e: e.id == "username")
    password_field = _first(page, "password field", lambda e: e.id == "password")
    return _fill_then_submit(page, [(user_field, username), (password_field, password)], "Login")


def click_checkboxes(instruction: str, page: Page) -> str:
    match = re.fullmatch(r"Select (.*) and click Submit\.", instruction)
    if match is None:
        raise ScriptError(f"unexpected instruction {instruction!r}")
    wanted = set() if match.group(1) == "nothing" else set(match.group(1).split(", "))
    return _toggle_then_submit(page, wanted, "input_checkbox")


def click_option(instruction: str, page: Page) -> str:
    match = re.fullmatch(r"Select (.*) and click Submit\.", instruction)
    if match is None:
        raise ScriptError(f"unexpected instruction {instruction!r}")
    return _toggle_then_submit(page, {match.group(1)}, "input_radio")


def _toggle_then_submit(page: Page, wanted: set[str], tag: str) -> str:
    boxes = {_label_of(page, index): element for index, element in enumerate(page) if element.tag == tag}
    missing = wanted - set(boxes)
    if missing:
        raise ScriptError(f"no {tag} labelled {sorted(missing)} on the page")
    for label, box in boxes.items():
        if box.checked != (label in wanted) and (tag == "input_checkbox" or label in wanted):
            return _click(box)
    return _click(_button(page, "Submit"))


_WIDGET_TAGS = {"radio": "input_radio", "checkbox": "input_checkbox", "text": "input_text",
                "textarea": "textarea", "button": "button"}


def click_widget(instruction: str, page: Page) -> str:
    (kind,) = _quoted(instruction) or [""]
    if kind not in _WIDGET_TAGS:
        raise ScriptError(f"unknown widget kind {kind!r}")
    return _click(_first(page, f"{kind} widget", lambda e: e.tag == _WIDGET_TAGS[kind]))


TASK_SCRIPTS: dict[str, Callable[[str, Page], str]] = {
    "click-test": click_test,
    "click-test-2": click_test_2,
    "click-button": click_button,
    "click-link": click_link,
    "click-button-sequence": click_button_sequence,
    "click-dialog": click_dialog,
    "click-widget": click_widget,
    "click-checkboxes": click_checkboxes,
    "click-option": click_option,
    "focus-text": focus_text,
    "focus-text-2": focus_text_2,
    "enter-text": enter_text,
    "enter-password": enter_password,
    "login-user": login_user,
}


def next_action(task: str, observation: str) -> str:
    """The next action of a scripted solution of `task` on the page `observation` shows."""
    script = TASK_SCRIPTS.get(task)
    if script is None:
        raise ScriptError(f"no script for miniwob:{task}; scripted tasks: {', '.join(sorted(TASK_SCRIPTS))}")
    try:
        instruction, page = read_page(observation)
    except ValueError as error:
        raise ScriptError(f"miniwob:{task}: {error}") from None
    return script(instruction, page)


def demonstration_script(task: str) -> Callable[[Sequence[str], random.Random], str] | None:
    """A BC demonstration script for `task`: (the episode's observations so far, rng) -> next action."""
    if task not in TASK_SCRIPTS:
        return None

    def script(observations: Sequence[str], rng: random.Random) -> str:
        return next_action(task, observations[-1])

    script.__name__ = f"miniwob_{task.replace('-', '_')}_script"
    return script
