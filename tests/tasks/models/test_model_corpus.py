import random
import re

import pytest

from dartflow.tasks.models.corpus import ROLE_WORDS, build_corpus, random_expression


def test_same_seed_gives_the_same_corpus():
    assert build_corpus(seed=3, num_dialogues=50) == build_corpus(seed=3, num_dialogues=50)


def test_another_seed_gives_another_corpus():
    assert build_corpus(seed=3, num_dialogues=50) != build_corpus(seed=4, num_dialogues=50)


def test_corpus_holds_both_environments_and_the_role_words():
    text = "".join(build_corpus(seed=0, num_dialogues=200))
    for phrase in ("Guess a number between 1 and 100", "higher", "lower", "correct", " = ?"):
        assert phrase in text
    for role in ROLE_WORDS:
        assert f"{role}\n" in text
    assert "<|im_start|>" not in text  # the markers are special tokens, not corpus text


def test_arithmetic_answers_are_the_values_of_their_expressions():
    dialogues = build_corpus(seed=0, num_dialogues=400)[1::2]
    for dialogue in dialogues:
        _, _, _, question, _, answer = dialogue.splitlines()
        expression = re.sub(r"^(What is |Compute |Calculate: )|( = \?|\?|\.)$", "", question)
        assert int(re.findall(r"-?\d+", answer)[-1]) == eval(expression), dialogue
    assert len(dialogues) == 200


def test_expressions_parenthesise_compound_operands():
    rng = random.Random(0)
    for _ in range(200):
        expression = random_expression(rng, depth=3)
        eval(expression)  # well formed
        assert not (expression.startswith("(") and expression.endswith(")") and expression.count("(") == 1)


def test_corpus_refuses_an_empty_request():
    with pytest.raises(ValueError, match="num_dialogues"):
        build_corpus(num_dialogues=0)
