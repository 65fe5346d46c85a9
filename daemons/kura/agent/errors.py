"""The agent's errors: each ends the command with one line and a non-zero exit."""

from __future__ import annotations


class AgentError(Exception):
    """Something the user can act on; the CLI prints it as one line (exit 1)."""


class NotEnrolled(AgentError):
    """No identity in the state directory: run ``kura-agent enroll`` first."""
