"""miniwob:<task> action grammar: a pure, strict parser (no browser)."""

import pytest

from dartflow.tasks.envs.miniwob_actions import (
    MAX_TYPED_CHARS,
    Click,
    ClickXY,
    InvalidAction,
    Press,
    TypeText,
    format_action,
    parse_action,
    parse_key,
)


@pytest.mark.parametrize(
    "text, action",
    [
        ("click(4)", Click(4)),
        ("  click( 12 )\n", Click(12)),
        ("CLICK (7)", Click(7)),
        ('type(5, "Kasie")', TypeText(5, "Kasie")),
        ('type( 5 ,"say \\"hi\\"\\n" )', TypeText(5, 'say "hi"\n')),
        ('type(5, "ünïcode ok")', TypeText(5, "ünïcode ok")),
        ('type(5, "click(3)")', TypeText(5, "click(3)")),  # a text that looks like an action is still text
        ("press(Enter)", Press("<Enter>")),
        ("press(enter)", Press("<Enter>")),
        ("press(a)", Press("a")),
        ('press("A")', Press("A")),
        ("press(,)", Press(",")),
        ("press())", Press(")")),
        ("press(Space)", Press("<Space>")),
        ('press(" ")', Press("<Space>")),
        ("press(ctrl+a)", Press("C-a")),
        ("press(shift+Tab)", Press("S-<Tab>")),
        ("press(shift+ctrl+alt+ArrowDown)", Press("A-C-S-<ArrowDown>")),  # MiniWoB's modifier order
        ("press(ctrl++)", Press("C-+")),
        ("click_xy(40, 85)", ClickXY(40.0, 85.0)),
        ("click_xy(12.5,-3)", ClickXY(12.5, -3.0)),
    ],
)
def test_valid_actions_parse_to_their_meaning(text, action):
    assert parse_action(text) == action


@pytest.mark.parametrize(
    "text, complaint",
    [
        ("", "is not an action"),
        ("hello", "is not an action"),
        ("I will click(4)", "is not an action"),
        ("click(4).", "is not an action"),
        ("`click(4)`", "is not an action"),
        ("click(4)\nclick(5)", "several actions"),
        ('type(5, "a") click(6)', "several actions"),
        ("scroll(4)", "unknown action 'scroll'"),
        ("click()", "the ref is the number in brackets"),
        ("click([4])", "the ref is the number in brackets"),
        ("click(-4)", "the ref is the number in brackets"),
        ("click(4, 5)", "the ref is the number in brackets"),
        ("click(0)", "is not a ref of the page"),
        ("click(12345678)", "is not a ref of the page"),
        ("type(5)", "takes a ref and a double-quoted text"),
        ("type(5, 'single')", "must be in double quotes"),
        ('type(5, "unterminated)', "is not one double-quoted string"),
        ('type(5, "a", "b")', "unexpected"),
        ('type(5, "")', "the text is empty"),
        ('type(5, "' + "x" * (MAX_TYPED_CHARS + 1) + '")', f"at most {MAX_TYPED_CHARS}"),
        ('type(5, "smile \\ud83d\\ude00")', "cannot be typed"),
        ('type(5, "bell \\u0007")', "cannot be typed"),
        ("press()", "needs a key"),
        ("press(Enterr)", "unknown key"),
        ("press(hyper+a)", "unknown modifier 'hyper'"),
        ("press(ctrl+ctrl+a)", "given twice"),
        ("press(é)", "not a printable ASCII character"),
        ('press("ab")', "one character"),
        ("click_xy(40)", "two numbers"),
        ("click_xy(x, y)", "two numbers"),
    ],
)
def test_invalid_actions_say_what_is_wrong(text, complaint):
    with pytest.raises(InvalidAction, match=complaint.replace("(", r"\(").replace(")", r"\)")):
        parse_action(text)


def test_a_huge_action_is_refused_with_a_short_message():
    with pytest.raises(InvalidAction) as refused:
        parse_action("click(" + "9" * 100_000 + ")")
    assert len(str(refused.value)) < 200


@pytest.mark.parametrize(
    "action", [Click(3), TypeText(8, 'a "quoted"\nline'), Press("<Enter>"), Press("C-a"), Press("S-<Tab>"), Press(","), ClickXY(4, 5.5)]
)
def test_formatted_actions_parse_back_to_themselves(action):
    assert parse_action(format_action(action)) == action


def test_every_key_the_parser_builds_is_one_miniwob_can_press():
    from miniwob.constants import ALL_POSSIBLE_KEYS

    keys = ["Enter", "tab", "Esc", "up", "Insert", "a", "Z", "~", "!", "ctrl+c", "meta+shift+Home", "alt+ctrl+meta+shift+x"]
    assert {parse_key(key) for key in keys} <= set(ALL_POSSIBLE_KEYS)
