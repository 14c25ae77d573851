"""miniwob:<task> observations: the page rendering, reading it back, and the scripts that act on it (no browser)."""

import numpy as np
import pytest

from dartflow.tasks.envs.miniwob_demos import TASK_SCRIPTS, ScriptError, demonstration_script, next_action
from dartflow.tasks.envs.miniwob_family import checker_reward
from dartflow.tasks.envs.miniwob_page import PageElement, page_elements, read_page, render_page


def element(ref, parent, tag, text="", value="", id="", box=(0, 0, 10, 10), focused=False, leaf=True, classes=""):
    left, top, width, height = box
    return PageElement(ref, parent, tag, text, value, id, left, top, width, height, focused, leaf, classes)


# click-checkboxes as MiniWoB serialises it (body and layout divs included), two boxes, one checked.
CHECKBOXES = [
    element(1, 0, "body", box=(0, 0, 780, 210), focused=True, leaf=False),
    element(2, 1, "div", id="wrap", box=(0, 0, 160, 210), leaf=False),
    element(3, 2, "div", id="area", box=(0, 50, 160, 84), leaf=False),
    element(4, 3, "div", id="boxes", box=(2, 52, 156, 38), leaf=False),
    element(5, 4, "label", box=(2, 59, 46, 11), leaf=False),
    element(6, 5, "input_checkbox", value="True", id="ch0", box=(6, 55, 20, 13)),
    element(-1, 5, "t", "USa", box=(29, 59, 19, 11)),
    element(7, 4, "label", box=(2, 78, 62, 11), leaf=False),
    element(8, 7, "input_checkbox", value="", id="ch1", box=(6, 74, 20, 13)),
    element(-2, 7, "t", "DKkQH", box=(29, 78, 35, 11)),
    element(9, 3, "button", "Submit", id="subbtn", box=(2, 101, 101, 31)),
]
CHECKBOXES_PAGE = """Instruction: Select DKkQH and click Submit.
Page:
[5] label @2,59 46x11
  [6] input_checkbox #ch0 checked @6,55 20x13
  "USa" @29,59 19x11
[7] label @2,78 62x11
  [8] input_checkbox #ch1 unchecked @6,74 20x13
  "DKkQH" @29,78 35x11
[9] button #subbtn "Submit" @2,101 101x31"""


def test_the_page_shows_interactive_elements_and_text_nested_under_what_holds_them():
    assert render_page("Select DKkQH and click Submit.", CHECKBOXES, 2000) == CHECKBOXES_PAGE


def test_fields_show_their_value_focus_and_a_quoted_text_that_cannot_break_the_line():
    page = render_page("Enter it.", [
        element(4, 0, "input_text", value='say "hi"\nnow', id="tt", focused=True, box=(5.4, 56.6, 128, 21)),
        element(5, 0, "div", "x" * 500),
    ], 2000)
    field, long_text = page.split("\n")[2:]
    assert field == r'[4] input_text #tt value="say \"hi\"\nnow" focused @5,57 128x21'
    assert len(long_text) < 160 and '..."' in long_text


def test_the_budget_keeps_interactive_elements_first_and_counts_the_rest():
    elements = [element(10 + i, 0, "div", f"filler text number {i}") for i in range(40)]
    elements.append(element(99, 0, "button", "Submit"))
    page = render_page("Click Submit.", elements, 300)
    assert len(page) <= 300
    assert '[99] button "Submit"' in page  # last in the document, first in the budget
    shown = sum(1 for line in page.split("\n") if line.startswith("[1"))
    assert page.endswith(f"(... {40 - shown} more elements not shown)")


def test_textless_containers_are_left_out_and_textless_leaves_show_their_classes():
    page = render_page("Click the box.", [
        element(2, 0, "div", leaf=False, classes="email-thread"),  # a layout container: not shown
        element(3, 2, "div", id="red-box"),  # a leaf without text (a coloured box): shown
        element(4, 2, "span", classes="trash"),  # an icon: its classes say what it is
        element(5, 2, "button", classes="ui-button ui-corner-all ui-widget ui-button-icon-only"),
        element(6, 2, "span", "label", classes="not-shown-with-text"),
        element(7, 2, "circle", classes="SVG_CLASS"),  # miniwob's stand-in for an SVG class object
    ], 2000)
    assert page.split("\n")[2:] == [
        "[3] div #red-box @0,0 10x10", "[4] span .trash @0,0 10x10",
        "[5] button .ui-button.ui-corner-all.ui-widget @0,0 10x10",  # capped at whole class names
        '[6] span "label" @0,0 10x10', "[7] circle @0,0 10x10",
    ]
    assert [e.ref for e in read_page(page)[1]] == [3, 4, 5, 6, 7]


def test_elements_come_from_miniwobs_serialised_dom():
    raw = {"ref": 6, "parent": 5, "tag": "input_checkbox", "text": "", "value": "True", "id": "ch0", "classes": "",
           "left": np.array([6.0], dtype=np.float32), "top": np.array([55.0], dtype=np.float32),
           "width": np.array([20.0], dtype=np.float32), "height": np.array([13.0], dtype=np.float32),
           "flags": np.array([1, 0, 0, 1], dtype=np.int8)}
    (parsed,) = page_elements([raw])
    assert parsed == element(6, 5, "input_checkbox", value="True", id="ch0", box=(6, 55, 20, 13), focused=True)
    raw["classes"] = "ch"
    assert page_elements([raw])[0].classes == "ch"


def test_a_rendered_page_reads_back_with_its_nesting():
    instruction, page = read_page("Invalid action: nothing. Nothing was done.\n" + CHECKBOXES_PAGE)
    assert instruction == "Select DKkQH and click Submit."
    assert [(e.ref, e.tag, e.depth) for e in page] == [
        (5, "label", 0), (6, "input_checkbox", 1), (None, "t", 1), (7, "label", 0), (8, "input_checkbox", 1),
        (None, "t", 1), (9, "button", 0),
    ]
    assert [e.parent for e in page] == [None, 0, 0, None, 3, 3, None]
    assert (page[1].checked, page[4].checked, page[6].text, page[6].id) == (True, False, "Submit", "subbtn")


def test_the_checkbox_script_unchecks_wrong_boxes_checks_wanted_ones_then_submits():
    assert next_action("click-checkboxes", CHECKBOXES_PAGE) == "click(6)"  # USa is checked but not wanted
    unchecked = CHECKBOXES_PAGE.replace("#ch0 checked", "#ch0 unchecked")
    assert next_action("click-checkboxes", unchecked) == "click(8)"
    done = unchecked.replace("#ch1 unchecked", "#ch1 checked")
    assert next_action("click-checkboxes", done) == "click(9)"


def test_the_enter_text_script_types_then_submits():
    page = 'Instruction: Enter "Kasie" into the text field and press Submit.\nPage:\n[5] input_text #tt @5,56 128x21\n[6] button #subbtn "Submit" @5,87 101x31'
    assert next_action("enter-text", page) == 'type(5, "Kasie")'
    assert next_action("enter-text", page.replace("#tt @", '#tt value="Kasie" @')) == "click(6)"


def test_a_script_fails_loudly_on_a_page_it_does_not_understand():
    with pytest.raises(ScriptError, match='no button "Ok"'):
        next_action("click-button", 'Instruction: Click on the "Ok" button.\nPage:\n[4] button "Cancel" @0,0 10x10')
    with pytest.raises(ScriptError, match="no script for miniwob:book-flight"):
        next_action("book-flight", CHECKBOXES_PAGE)
    with pytest.raises(ScriptError, match="no page"):
        next_action("click-button", "Task completed.")


def test_demonstration_scripts_exist_for_the_scripted_tasks_only():
    assert demonstration_script("book-flight") is None
    script = demonstration_script("click-checkboxes")
    assert script.__name__ == "miniwob_click_checkboxes_script"
    assert script(["first page, not read", CHECKBOXES_PAGE], None) == "click(6)"
    assert {"click-button", "click-link", "enter-text", "focus-text", "click-checkboxes"} <= set(TASK_SCRIPTS)


@pytest.mark.parametrize("raw, mode, expected", [
    (1.0, "success", (1.0, True)), (0.4, "success", (1.0, True)), (-1.0, "success", (0.0, False)),
    (0.0, "success", (0.0, False)), (0.4, "raw", (0.4, True)), (-1.0, "raw", (-1.0, False)),
])
def test_the_checker_reward_maps_to_success_or_stays_raw(raw, mode, expected):
    assert checker_reward(raw, mode) == expected
