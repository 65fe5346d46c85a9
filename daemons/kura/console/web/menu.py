"""The console's menu, by role (DESIGN.md's role table): each entry is shown
only to the roles that may use it. The vault enforces the same rules on every
operation; the menu only keeps people from being shown what they cannot do."""

from __future__ import annotations

from dataclasses import dataclass

from kura.core.roles import Role

MU, MA, SA, DA = Role.MU, Role.MA, Role.SA, Role.DA


def N_(message: str) -> str:
    """Marks a message id for the catalogs; translated where it is shown."""
    return message


@dataclass(frozen=True)
class MenuItem:
    path: str
    label: str  # an English message id
    roles: frozenset[Role]
    group: str


MENU: tuple[MenuItem, ...] = (
    MenuItem("/search", N_("Search"), frozenset({MU, MA}), N_("Use")),
    MenuItem("/exports", N_("Exports"), frozenset({MU, MA}), N_("Use")),
    MenuItem("/requests", N_("Registration requests"), frozenset({MU, MA}), N_("Collect")),
    MenuItem("/payees/new", N_("Register a payee"), frozenset({MU}), N_("Collect")),
    MenuItem("/payees/import", N_("Import from CSV"), frozenset({MU}), N_("Collect")),
    MenuItem("/disposal", N_("Disposal"), frozenset({MU, MA}), N_("Dispose")),
    MenuItem("/disposal/records", N_("Disposal records"), frozenset({MA, SA}), N_("Dispose")),
    MenuItem("/retention", N_("Retention rules"), frozenset({MU, MA, SA}), N_("Dispose")),
    MenuItem("/audit", N_("Audit log"), frozenset({SA}), N_("Audit")),
    MenuItem("/reports/access", N_("Access history"), frozenset({SA}), N_("Audit")),
    MenuItem("/reports/ledger", N_("Handling-status ledger"), frozenset({SA, MA}), N_("Audit")),
    MenuItem("/audit/export", N_("Audit export"), frozenset({SA}), N_("Audit")),
    MenuItem("/admin/policy", N_("Security policy"), frozenset({SA}), N_("Administration")),
    MenuItem("/admin/users", N_("Users"), frozenset({DA}), N_("Administration")),
    MenuItem(
        "/admin/approvals", N_("Account approvals"), frozenset({SA, MA}), N_("Administration")
    ),
    MenuItem("/admin/status", N_("Appliance status"), frozenset({DA}), N_("Administration")),
    MenuItem("/admin/ha", N_("HA pair"), frozenset({DA, SA}), N_("Administration")),
    MenuItem("/admin/agents", N_("Agents"), frozenset({SA}), N_("Administration")),
)


def menu_for(role: Role | None) -> list[MenuItem]:
    if role is None:
        return []
    return [item for item in MENU if role in item.roles]
