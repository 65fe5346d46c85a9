"""``kura`` on the command line as an administrator runs it: check-number
reads numbers from standard input only, one per line, and says OK or NG with
the reason for each; every command's --help works.

Each case runs the real program in a subprocess. Numbers are made at run
time (tests.support), never written here."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pyotp
import pytest

from kura.devserver import LocalAppliance
from tests.support import Api, corporate_number, hyphenated, my_numbers, wrong_check_digit

KURA = [sys.executable, "-m", "kura.cli"]


def kura(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KURA, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def full_width(text: str) -> str:
    """ASCII digits and hyphens as a Japanese IME types them."""
    return "".join(
        chr(ord("０") + int(ch)) if ch.isdigit() else "－" if ch == "-" else ch for ch in text
    )


def verdicts(stdout: str) -> dict[int, str]:
    """{line number: "OK" | "NG <code>"} from check-number's output."""
    out: dict[int, str] = {}
    for line in stdout.splitlines():
        lineno, _, rest = line.partition(": ")
        out[int(lineno)] = "OK" if rest == "OK" else " ".join(rest.split(":")[0].split()[:2])
    return out


def test_valid_numbers_in_every_accepted_spelling_exit_0() -> None:
    numbers = my_numbers(5, seed=11)
    lines = [
        numbers[0],
        hyphenated(numbers[1]),
        full_width(hyphenated(numbers[2])),
        full_width(numbers[3]),
        "  " + numbers[4] + "\r",  # surrounding spaces, a CRLF file
    ]
    done = kura("check-number", stdin="\n".join(lines) + "\n")
    assert done.returncode == 0, done.stdout + done.stderr
    assert verdicts(done.stdout) == dict.fromkeys(range(1, 6), "OK")
    for number in numbers:
        assert number not in done.stdout + done.stderr


def test_each_invalid_number_gets_its_reason_and_the_run_exits_1() -> None:
    good, other = my_numbers(2, seed=12)
    lines = [
        good,
        wrong_check_digit(other),
        "0" * 12,
        good[:11],
        good[:6] + "AB" + good[8:],
        full_width(hyphenated(other)),
        good + "0",
    ]
    done = kura("check-number", stdin="\n".join(lines) + "\n")
    assert done.returncode == 1
    assert verdicts(done.stdout) == {
        1: "OK",
        2: "NG check_digit",
        3: "NG all_zero",
        4: "NG length",
        5: "NG not_digits",
        6: "OK",
        7: "NG length",
    }
    # The reason is given in both languages by default, and never echoes the digits.
    assert "チェックデジット" in done.stdout and "check digit" in done.stdout
    for text in (good, other, wrong_check_digit(other), good[:11]):
        assert text not in done.stdout + done.stderr


def test_english_only_reasons() -> None:
    (number,) = my_numbers(1, seed=13)
    done = kura("check-number", "--english", stdin=wrong_check_digit(number) + "\n")
    assert done.returncode == 1
    assert done.stdout.strip() == "1: NG check_digit: The check digit does not match."


def test_blank_lines_are_skipped_but_counted() -> None:
    a, b = my_numbers(2, seed=14)
    done = kura("check-number", stdin=f"{a}\n\n   \n{wrong_check_digit(b)}\n")
    assert done.returncode == 1
    assert verdicts(done.stdout) == {1: "OK", 4: "NG check_digit"}


@pytest.mark.parametrize("stdin", ["", "\n", "  \n\n\t\n"])
def test_no_numbers_on_standard_input_exits_2(stdin: str) -> None:
    done = kura("check-number", stdin=stdin)
    assert done.returncode == 2
    assert done.stdout == ""
    assert "standard input" in done.stderr


@pytest.mark.parametrize("spelling", ["plain", "hyphenated"])
def test_a_number_on_the_command_line_is_refused_and_not_repeated(spelling: str) -> None:
    (number,) = my_numbers(1, seed=15)
    typed = number if spelling == "plain" else hyphenated(number)
    # Even with valid numbers waiting on standard input, argv is never read.
    done = kura("check-number", typed, stdin=number + "\n")
    assert done.returncode == 2
    assert done.stdout == ""
    assert "unrecognized arguments" in done.stderr
    # argparse quotes what it refuses: the number must not come back in the message.
    for text in (number, typed, number[:4], number[-4:]):
        assert text not in done.stderr


def test_corporate_numbers() -> None:
    rng = random.Random(16)
    good = [corporate_number(rng) for _ in range(3)]
    bad_check = str((int(good[0][0]) + 1) % 10) + good[0][1:]
    (my_number,) = my_numbers(1, seed=16)
    lines = [good[0], full_width(good[1]), good[2], bad_check, my_number, "0" * 13]
    done = kura("check-number", "--corporate", stdin="\n".join(lines) + "\n")
    assert done.returncode == 1
    assert verdicts(done.stdout) == {
        1: "OK",
        2: "OK",
        3: "OK",
        4: "NG check_digit",
        5: "NG length",
        6: "NG all_zero",
    }
    assert "13" in done.stdout  # "法人番号は13桁です" for the 12-digit line

    all_good = kura("check-number", "--corporate", stdin="\n".join(good) + "\n")
    assert all_good.returncode == 0
    # A corporate number is not a My Number, and the other way round.
    assert kura("check-number", stdin=good[0] + "\n").returncode == 1


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["check-number"],
        ["db"],
        ["db", "migrate"],
        ["vault"],
        ["vault", "init"],
        ["audit"],
        ["audit", "export"],
        ["audit", "verify"],
        ["dev"],
    ],
    ids=lambda c: " ".join(c) or "kura",
)
def test_help_for_every_command(command: list[str]) -> None:
    done = kura(*command, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: kura")
    assert done.stderr == ""


def test_check_number_help_says_numbers_come_from_standard_input() -> None:
    done = kura("check-number", "--help")
    assert "standard input" in done.stdout
    assert "--corporate" in done.stdout


def test_no_command_is_a_usage_error() -> None:
    done = kura()
    assert done.returncode == 2
    assert "usage: kura" in done.stderr


def test_audit_export_and_verify_from_the_command_line(
    appliance: LocalAppliance, users: dict[str, Api], tmp_path: Path
) -> None:
    sa = users["SA"]
    # The next time step's code: the one SA signed in with may not be used twice.
    code = pyotp.TOTP(sa.totp_secret).at(time.time() + 30)
    bundle = tmp_path / "audit.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "kura.cli", "audit", "export", "--config",
         str(appliance.config_path), "--user", sa.username, "--totp", code, "-o", str(bundle)],
        capture_output=True, text=True, env={**os.environ, "KURA_PASSWORD": sa.password},
        timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "entries" in done.stdout and bundle.exists()
    verified = kura("audit", "verify", str(bundle))
    assert verified.returncode == 0, verified.stdout
    assert verified.stdout.startswith("OK:")

    wrong = subprocess.run(
        [sys.executable, "-m", "kura.cli", "audit", "export", "--config",
         str(appliance.config_path), "--user", sa.username, "-o", str(tmp_path / "x")],
        capture_output=True, text=True, env={**os.environ, "KURA_PASSWORD": "wrong"},
        timeout=60, check=False,
    )
    assert wrong.returncode == 1
    assert "Traceback" not in wrong.stderr and "password" in wrong.stderr.lower()
    assert not (tmp_path / "x").exists()
