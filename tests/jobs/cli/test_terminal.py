"""How the CLI writes amounts: a cost too small for six decimals is still not shown as nothing."""

from __future__ import annotations

from decimal import Decimal

import pytest

from jobs.cli.terminal import usd


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        ("1.5", "$1.500000"),
        ("0.000012", "$0.000012"),
        ("0", "$0.000000"),
        # An embeddings batch of a few short texts: a fraction of a millionth, to two significant digits.
        ("2.6E-7", "$0.00000026"),
        ("7.5E-8", "$0.000000075"),
    ],
)
def test_a_cost_is_shown_to_the_millionth_or_to_two_digits_when_smaller(amount: str, shown: str) -> None:
    assert usd(Decimal(amount)) == shown
