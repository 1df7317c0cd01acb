"""The arithmetic of a score: accuracy, per-class precision/recall/F1, the confusion matrix and the kappas,
checked against worked examples."""

from __future__ import annotations

import pytest

from jobs.operations.scores import TIE, cohen_kappa, fleiss_kappa, score_pairs


def test_per_class_scores_and_the_confusion_matrix_follow_their_definitions() -> None:
    pairs = [("spam", "spam")] * 8 + [("spam", "ham")] * 2 + [("ham", "ham")] * 9 + [("ham", "spam")]
    accuracy, classes, confusion = score_pairs(pairs)
    assert accuracy == 0.85
    assert confusion == {"ham": {"ham": 9, "spam": 1}, "spam": {"ham": 2, "spam": 8}}
    spam = next(c for c in classes if c.label == "spam")
    assert spam.precision == pytest.approx(8 / 9, abs=1e-4)
    assert spam.recall == 0.8
    assert spam.f1 == pytest.approx(2 * (8 / 9) * 0.8 / (8 / 9 + 0.8), abs=1e-3)
    assert spam.support == 10


def test_a_tie_is_a_prediction_that_is_never_right_and_no_class_of_its_own() -> None:
    accuracy, classes, confusion = score_pairs([("ham", TIE), ("ham", "ham")])
    assert accuracy == 0.5
    assert [c.label for c in classes] == ["ham"]
    assert confusion["ham"][TIE] == 1


def test_cohens_kappa_of_the_textbook_example_is_0_4() -> None:
    # 50 items: both yes 20, first yes second no 5, first no second yes 10, both no 15.
    first = ["yes"] * 25 + ["no"] * 25
    second = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(first, second) == 0.4


def test_fleiss_kappa_of_the_textbook_example_is_0_210() -> None:
    # Ten subjects, fourteen raters, five categories (the worked example of Fleiss' kappa).
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    items = [[str(k) for k, n in enumerate(row) for _ in range(n)] for row in table]
    assert fleiss_kappa(items) == pytest.approx(0.210, abs=1e-3)


def test_kappa_is_undefined_when_every_rating_is_one_label() -> None:
    assert cohen_kappa(["a", "a"], ["a", "a"]) is None
    assert fleiss_kappa([["a", "a", "a"]]) is None
