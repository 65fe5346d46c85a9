"""The wizard's errors. Each carries its message in both languages, so the
edge (:mod:`kura_firstboot.main`) can print one clear bilingual line."""

from __future__ import annotations


class FirstbootError(Exception):
    """Base of every error the wizard reports to the person at the console."""

    def __init__(self, en: str, ja: str) -> None:
        super().__init__(en)
        self.en = en
        self.ja = ja


class BadValue(FirstbootError):
    """A value typed in or read from the answers file is not acceptable."""


class AnswersError(FirstbootError):
    """The answers file cannot be used; ``field`` names the setting at fault."""

    def __init__(self, field: str, en: str, ja: str) -> None:
        super().__init__(f"{field}: {en}", f"{field}: {ja}")
        self.field = field


class StepFailed(FirstbootError):
    """A step could not be completed; the journal still lists it as not done."""


class NotAppliance(FirstbootError):
    """kura-firstboot was started on a machine that is not a Kura appliance."""


class InputClosed(Exception):
    """The terminal went away (end of input)."""


class InputTimeout(Exception):
    """Nobody answered in time."""
