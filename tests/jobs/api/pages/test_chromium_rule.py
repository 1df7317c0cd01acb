"""Without a Chromium the browser tests skip on a developer's machine and fail in CI, never skip there."""

from __future__ import annotations

import pytest

from tests.jobs.api.pages.conftest import in_ci, no_chromium


@pytest.mark.parametrize("value", ["true", "1", "yes", "TRUE"])
def test_a_missing_chromium_fails_the_run_in_ci(value: str) -> None:
    with pytest.raises(pytest.fail.Exception, match=r"in CI they may not skip: install Debian's `chromium`"):
        no_chromium({"CI": value})


@pytest.mark.parametrize("environ", [{}, {"CI": ""}, {"CI": "false"}, {"CI": "0"}, {"CI": "no"}])
def test_a_missing_chromium_skips_outside_ci_saying_how_to_install_one(environ: dict[str, str]) -> None:
    assert not in_ci(environ)
    with pytest.raises(pytest.skip.Exception, match=r"apt-get install -y chromium\) or set ORBATCH_CHROMIUM"):
        no_chromium(environ)
