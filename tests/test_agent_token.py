"""Where ``kura-agent enroll`` takes its one-time token from. Given on the
command line it is in every local user's process list (another user could
race to enrol with it), so the agent also takes it from stdin or from
``$KURA_AGENT_TOKEN``, which other users cannot read."""

from __future__ import annotations

import io

import pytest

from kura.agent import cli
from kura.agent.errors import AgentError


@pytest.fixture
def stdin(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    piped = io.StringIO()
    monkeypatch.setattr("sys.stdin", piped)
    monkeypatch.delenv(cli.TOKEN_VARIABLE, raising=False)
    return piped


def test_a_dash_reads_the_token_from_stdin(stdin: io.StringIO) -> None:
    stdin.write("tok-from-stdin\n")
    stdin.seek(0)
    assert cli._token("-") == "tok-from-stdin"


def test_without_token_the_environment_is_used(stdin: io.StringIO,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cli.TOKEN_VARIABLE, " tok-from-env ")
    assert cli._token(None) == "tok-from-env"


def test_without_token_or_environment_stdin_is_read(stdin: io.StringIO) -> None:
    stdin.write("tok-piped\n")
    stdin.seek(0)
    assert cli._token(None) == "tok-piped"


def test_a_token_on_the_command_line_still_works(stdin: io.StringIO) -> None:
    assert cli._token("tok-argv") == "tok-argv"


def test_no_token_anywhere_is_one_clear_error(stdin: io.StringIO,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(AgentError, match="no token"):
        cli._token("-")
    code = cli.main(["enroll", "--server", "https://192.0.2.1:8445", "--fingerprint",
                     "ab" * 32, "--state", "/nonexistent-kura-agent"])
    assert code == cli.EXIT_ERROR
    assert "no token" in capsys.readouterr().err


def test_the_help_warns_about_a_token_on_the_command_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["enroll", "--help"])
    assert "process list" in " ".join(capsys.readouterr().out.split())
