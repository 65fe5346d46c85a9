"""Who may do what: DESIGN.md's role table as data, enforced in the vault.

Each vault operation is named here once. ``PUBLIC`` operations need no
session; ``SELF`` operations need a session of any role; everything else is
allowed to exactly the roles listed in ``ALLOWED``.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    MU = "MU"  # MyNumber User: register payees, search, reveal and export for a purpose
    MA = "MA"  # MyNumber Admin: approve requests, correct records, approve disposals/exports
    SA = "SA"  # Security Admin: policy, audit; never sees a number
    DA = "DA"  # Appliance Admin: accounts, keys, appliance; never sees a number

    @property
    def label_ja(self) -> str:
        return _LABELS[self][0]

    @property
    def label_en(self) -> str:
        return _LABELS[self][1]


_LABELS = {
    Role.MU: ("マイナンバー利用者", "MyNumber User"),
    Role.MA: ("マイナンバー管理者", "MyNumber Admin"),
    Role.SA: ("セキュリティ管理者", "Security Admin"),
    Role.DA: ("アプライアンス管理者", "Appliance Admin"),
}

# request.open and request.submit are the data subject's: the one-time link's
# token is their only credential.
# user.activate is the new account holder's: the activation code's two halves
# are their only credential.
# agents.ca is the endpoint agents' CA certificate and bundle key: public values.
PUBLIC = frozenset(
    {"status", "unseal", "login", "request.open", "request.submit", "user.activate",
     "agents.ca"}
)
# Operations of the kura-policy daemon (docs/agents.md): no session, only a
# peer whose uid is in ``[vault] policy_uids``; the vault audits them as the
# actor "kura-policy".
SERVICE = frozenset(
    {
        "agents.server_cert",
        "agents.enrol",
        "agents.check",
        "agents.heartbeat",
        "agents.bundle",
        "agents.watch",
    }
)
SELF = frozenset(
    {
        "logout",
        "whoami",
        "change_password",
        "totp_begin",
        "totp_confirm",
        "purposes",
        "preferences.set",
    }
)

_MU, _MA, _SA, _DA = Role.MU, Role.MA, Role.SA, Role.DA

ALLOWED: dict[str, frozenset[Role]] = {
    # subjects and their numbers
    # Only MU registers directly (DESIGN.md); MA approves others' requests, so
    # an MA registering would approve their own work.
    "subject.register": frozenset({_MU}),
    "subject.lookup": frozenset({_MU, _MA}),
    "subject.list": frozenset({_MU, _MA}),
    "subject.get": frozenset({_MU, _MA}),
    "subject.reveal": frozenset({_MU}),
    "subject.import": frozenset({_MU}),
    "subject.export": frozenset({_MU}),
    "subject.correct": frozenset({_MA}),
    # security policy and audit
    "policy.get": frozenset({_SA}),
    "policy.set": frozenset({_SA}),
    # A weakening waits for a second person: an SA, or an MA where there is
    # exactly one SA (checked by the vault); the DA only sees that it waits.
    "policy.pending": frozenset({_SA, _MA, _DA}),
    "policy.approve": frozenset({_SA, _MA}),
    "policy.reject": frozenset({_SA, _MA}),
    "policy.cancel": frozenset({_SA}),
    "audit.list": frozenset({_SA}),
    "audit.export": frozenset({_SA}),
    # accounts and the appliance
    "user.create": frozenset({_DA}),
    "user.list": frozenset({_DA}),
    "user.update": frozenset({_DA}),
    "user.reset_password": frozenset({_DA}),
    # Accounts that see numbers or approve take two people: the DA proposes,
    # an SA or MA approves (kura.core.account_approvals).
    "user.proposals": frozenset({_DA, _SA, _MA}),
    "user.approve": frozenset({_SA, _MA}),
    "user.reject": frozenset({_SA, _MA}),
    "user.cancel": frozenset({_DA}),
    "user.first_logins": frozenset({_SA}),
    "keys.rotate": frozenset({_DA}),
    "appliance.status": frozenset({_DA}),
    # collection from employees: requests with a one-time link
    "request.create": frozenset({_MU, _MA}),
    "request.list": frozenset({_MU, _MA}),
    "request.get": frozenset({_MA}),  # with the entered numbers (masked) and documents
    "request.document": frozenset({_MA}),
    "request.approve": frozenset({_MA}),
    "request.reject": frozenset({_MA}),
    "request.reissue": frozenset({_MU, _MA}),
    "request.cancel": frozenset({_MU, _MA}),
    # exports over the threshold wait for an MA
    "export.prepare": frozenset({_MU}),
    "export.list": frozenset({_MU, _MA}),
    "export.decide": frozenset({_MA}),
    "export.download": frozenset({_MU}),
    # retention and disposal
    "retention.list": frozenset({_MU, _MA, _SA}),
    "retention.set": frozenset({_SA}),
    "disposal.due": frozenset({_MU, _MA}),
    "disposal.propose": frozenset({_MU, _MA}),
    "disposal.list": frozenset({_MU, _MA, _SA}),
    "disposal.decide": frozenset({_MA}),
    "disposal.records": frozenset({_MA, _SA}),
    # reports
    "report.access": frozenset({_SA}),
    "report.ledger": frozenset({_SA, _MA}),
    "audit.verify": frozenset({_SA}),
    # an audit-integrity incident: an SA and a DA must both acknowledge it
    "audit.acknowledge": frozenset({_SA, _DA}),
    # pairing a standby hands it the root key: the DA pairs, an SA approves
    # the standby named in the offer (kura.core.pairing.requires_approval)
    "ha.pair": frozenset({_DA}),
    "ha.approve": frozenset({_SA}),
    "ha.reject": frozenset({_SA}),
    "ha.pairings": frozenset({_DA, _SA}),
    # the pair's health page; a planned switchover (kura.vault.hastatus)
    "ha.status": frozenset({_DA, _SA}),
    "ha.switchover": frozenset({_DA}),
    # endpoint agents (kura.vault.agents): the SA enrols, revokes and sets
    # their policy; the alerts are the SA's and the DA's to see
    "agents.token_create": frozenset({_SA}),
    "agents.tokens": frozenset({_SA}),
    "agents.token_withdraw": frozenset({_SA}),
    "agents.list": frozenset({_SA}),
    "agents.revoke": frozenset({_SA}),
    "agents.policy_get": frozenset({_SA}),
    "agents.policy_set": frozenset({_SA}),
    "alerts.list": frozenset({_SA, _DA}),
}

OPERATIONS = PUBLIC | SELF | SERVICE | frozenset(ALLOWED)


def may(role: Role, operation: str) -> bool:
    """True if ``role`` may perform ``operation`` (which must need a session)."""
    if operation in SERVICE:
        return False
    if operation in SELF:
        return True
    return role in ALLOWED.get(operation, frozenset())
