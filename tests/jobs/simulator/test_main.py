"""`orbatch simulator`'s options: read into a configuration, and listed by --help with their defaults."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jobs.simulator.main import config_from_args
from tests.support import ROOT


def test_the_command_line_takes_the_speed_and_the_account() -> None:
    scaled = config_from_args(["--speed", "10"])
    assert (scaled.free_window_seconds, scaled.day_seconds, scaled.free_per_day) == (6, 8640, 50)
    real = config_from_args([])
    assert (real.free_window_seconds, real.day_seconds, real.free_per_day, real.speed) == (60, None, 50, 1)
    bought = config_from_args(["--no-free-tier", "--credits", "10"])
    assert (bought.is_free_tier, bought.free_per_day, bought.credits) == (False, 1000, 10)
    # The options ORBATCH_SIMULATOR_ARGS has always taken.
    old = config_from_args(["--free-window-seconds", "1", "--free-per-day", "100000", "--latency-ms", "5"])
    assert (old.free_window_seconds, old.free_per_day, old.latency_ms) == (1, 100000, 5)
    with pytest.raises(SystemExit) as refused:
        config_from_args(["--speed", "0"])
    assert refused.value.code == 2


def test_the_command_line_sets_the_batch_api() -> None:
    default = config_from_args([])
    assert (default.batches_enabled, default.batch_model_policy, default.batch_cancel_allowed) == (
        True,
        "variant",
        True,
    )
    assert (
        default.batch_validating_seconds,
        default.batch_in_progress_seconds,
        default.batch_finalizing_seconds,
    ) == (
        1,
        3,
        1,
    )
    assert (default.batch_window_seconds, default.batch_expire) == (86400, False)
    chosen = config_from_args(
        [
            "--no-batches",
            "--batch-model-policy",
            "either",
            "--batch-validating-seconds",
            "0",
            "--batch-in-progress-seconds",
            "20",
            "--batch-finalizing-seconds",
            "2",
            "--batch-window-seconds",
            "60",
            "--batch-expire",
            "--no-batch-cancel",
        ]
    )
    assert (chosen.batches_enabled, chosen.batch_model_policy, chosen.batch_cancel_allowed) == (
        False,
        "either",
        False,
    )
    assert (
        chosen.batch_validating_seconds,
        chosen.batch_in_progress_seconds,
        chosen.batch_finalizing_seconds,
    ) == (
        0,
        20,
        2,
    )
    assert (chosen.batch_window_seconds, chosen.batch_expire) == (60, True)
    for wrong in (
        ["--batch-model-policy", "base"],
        ["--batch-window-seconds", "0"],
        ["--batch-validating-seconds", "-1"],
    ):
        with pytest.raises(SystemExit):
            config_from_args(wrong)


def test_the_command_line_sets_models_that_err_and_mislabel() -> None:
    default = config_from_args([])
    assert (default.err_rate, default.err_label, default.label_noise, default.fixed_label) == (
        {},
        None,
        {},
        {},
    )
    chosen = config_from_args(
        [
            "--err-rate",
            "sim/echo=0.3",
            "--err-rate",
            "sim/backup=1",
            "--err-label",
            "unsure",
            "--label-noise",
            "sim/echo=0.2",
            "--label-noise",
            "openai/gpt-4o-mini=0",
            "--fixed-label",
            "sim/spare=spam",
            "--fixed-label",
            "sim/backup=a=b",
        ]
    )
    assert chosen.err_rate == {"sim/echo": 0.3, "sim/backup": 1.0}
    assert chosen.err_label == "unsure"
    assert chosen.label_noise == {"sim/echo": 0.2, "openai/gpt-4o-mini": 0.0}
    assert chosen.fixed_label == {"sim/spare": "spam", "sim/backup": "a=b"}


def test_a_malformed_error_or_label_option_is_refused_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    for wrong, said in (
        (["--err-rate", "sim/echo"], "--err-rate: 'sim/echo' is not MODEL=VALUE: it has no '='"),
        (["--err-rate", "sim/echo=1.5"], "--err-rate: the rate of sim/echo must be a number from 0 to 1"),
        (
            ["--label-noise", "sim/echo=-0.1"],
            "--label-noise: the rate of sim/echo must be a number from 0 to 1",
        ),
        (["--label-noise", "sim/echo=often"], "not 'often'"),
        (["--label-noise", "sim/echo=nan"], "not 'nan'"),
        (["--fixed-label", "=spam"], "--fixed-label: '=spam' names no model before its '='"),
        (["--fixed-label", "sim/echo="], "--fixed-label: 'sim/echo=' gives no value after its '='"),
        (["--fixed-label", "sim/echo"], "--fixed-label: 'sim/echo' is not MODEL=VALUE"),
        (["--err-label", " "], "--err-label: must be a label, not empty"),
    ):
        with pytest.raises(SystemExit) as refused:
            config_from_args(wrong)
        assert refused.value.code == 2
        assert said in capsys.readouterr().err


def test_help_lists_every_option_with_its_default() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "jobs.simulator", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"},
    ).stdout
    for option in (
        "--host",
        "--port",
        "--latency-ms",
        "--free-per-minute",
        "--free-window-seconds",
        "--free-per-day",
        "--day-seconds",
        "--speed",
        "--free-tier",
        "--credits",
        "--no-record",
        "--batches",
        "--no-batches",
        "--batch-model-policy",
        "--batch-validating-seconds",
        "--batch-in-progress-seconds",
        "--batch-finalizing-seconds",
        "--batch-window-seconds",
        "--batch-expire",
        "--no-batch-cancel",
        "--err-rate",
        "--err-label",
        "--label-noise",
        "--fixed-label",
        "MODEL=RATE",
        "MODEL=LABEL",
    ):
        assert option in shown
    assert "[default: 8787]" in shown
    assert "[default: 1.0]" in shown
    assert "[default: variant]" in shown
    assert "[default: 86400.0]" in shown
