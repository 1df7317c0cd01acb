"""A record's vote: the majority of each field, ties said as such, the agreement, and each model's answer."""

from __future__ import annotations

from jobs.formats.votes import Ballot, label_fields, schema_fields, tally


def test_the_majority_of_each_field_is_kept_with_the_share_of_models_agreeing() -> None:
    vote = tally(
        [
            Ballot("a", '{"label": "spam", "lang": "en"}', True),
            Ballot("b", '{"lang": "en", "label": "spam"}', True),
            Ballot("c", '{"label": "ham", "lang": "en"}', True),
        ]
    )
    assert vote.majority == {"label": "spam", "lang": "en"}
    assert vote.agreement == {"label": 0.6667, "lang": 1.0}
    assert vote.ties == {}
    assert vote.answers["c"] == {"label": "ham", "lang": "en"}
    assert not vote.unanimous


def test_a_tie_has_no_majority_and_lists_the_tied_values_in_the_order_given() -> None:
    vote = tally([Ballot("a", '{"label": "ham"}', True), Ballot("b", '{"label": "spam"}', True)])
    assert vote.majority == {"label": None}
    assert vote.ties == {"label": ["ham", "spam"]}
    assert vote.agreement == {"label": 0.5}


def test_a_model_that_failed_is_shown_with_its_error_and_the_vote_is_of_those_that_answered() -> None:
    vote = tally(
        [
            Ballot("a", '{"label": "ham"}', True),
            Ballot("b", None, True, "invalid_output: not JSON"),
            Ballot("c", '{"label": "ham"}', True),
        ]
    )
    assert vote.majority == {"label": "ham"}
    assert vote.agreement == {"label": 1.0}
    assert vote.answered == 2
    assert vote.answers["b"] == {"error": "invalid_output: not JSON"}
    assert vote.unanimous


def test_plain_text_answers_vote_as_a_whole_and_objects_compare_whatever_their_key_order() -> None:
    text = tally([Ballot("a", "Paris", False), Ballot("b", "Paris", False), Ballot("c", "Lyon", False)])
    assert text.majority == {"answer": "Paris"}
    nested = tally(
        [Ballot("a", '{"x": {"p": 1, "q": 2}}', True), Ballot("b", '{"x": {"q": 2, "p": 1}}', True)]
    )
    assert nested.agreement == {"x": 1.0}


def test_no_answer_at_all_is_a_vote_of_nobody() -> None:
    vote = tally([Ballot("a", None, True, "timeout"), Ballot("b", None, True, "timeout")])
    assert vote.answered == 0
    assert vote.majority == {}
    assert not vote.unanimous


def test_with_label_fields_only_they_are_voted_and_free_text_comes_from_a_model_of_the_majority() -> None:
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": ["spam", "ham"]}, "reason": {"type": "string"}},
    }
    assert label_fields(schema) == ["label"]
    vote = tally(
        [
            Ballot("a", '{"label": "ham", "reason": "a friend writes"}', True),
            Ballot("b", '{"label": "spam", "reason": "it sells pills"}', True),
            Ballot("c", '{"label": "spam", "reason": "a miracle offer"}', True),
        ],
        label_fields(schema),
    )
    assert vote.majority == {"label": "spam", "reason": "it sells pills"}
    assert vote.agreement == {"label": 0.6667}
    assert vote.ties == {}
    two = tally(
        [
            Ballot("a", '{"label": "ham", "reason": "x"}', True),
            Ballot("b", '{"label": "ham", "reason": "y"}', True),
        ],
        ["label"],
    )
    assert two.unanimous
    assert two.majority == {"label": "ham", "reason": "x"}


def test_label_fields_are_enums_consts_booleans_and_integers() -> None:
    schema = {
        "type": "object",
        "properties": {
            "kind": {"enum": [1, 2]},
            "fixed": {"const": "x"},
            "ok": {"type": "boolean"},
            "stars": {"type": ["integer", "null"]},
            "score": {"type": "number"},
            "note": {"type": "string"},
        },
    }
    assert label_fields(schema) == ["kind", "fixed", "ok", "stars"]
    assert schema_fields(schema) == ["kind", "fixed", "ok", "stars", "score", "note"]
    assert label_fields({"type": "string"}) == []
