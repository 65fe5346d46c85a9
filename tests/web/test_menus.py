"""Each role's sidebar in the browser shows exactly what DESIGN.md's role
table lets that role do, in Japanese, and the home page offers the same
tiles. The expected menus are written here from the table (not read from
kura.console.web.menu), so the menu is checked against the product's word:

- MU: search, exports, registration requests, payees (one by one, CSV),
  the disposal due list, retention rules;
- MA: search, exports (to approve bulk ones), registration requests (to
  approve), disposal and its records, retention rules, the handling-status
  ledger;
- SA: disposal records, retention rules, the audit log, access history, the
  ledger, the audit export, the security policy, the HA pair's page (to read)
  — nothing that shows a number;
- DA: users, the appliance's status and the HA pair's page — nothing that
  shows a number or approves anything.

A screenshot of each role's home page is saved as a test artefact."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from kura.devserver import LocalAppliance
from tests.support import Api, keep_one_sa, provision
from tests.web.conftest import session_cookie

HOME = ("/", "ホーム")
SEARCH = ("/search", "検索")
EXPORTS = ("/exports", "エクスポート")
REQUESTS = ("/requests", "登録依頼")
PAYEE = ("/payees/new", "支払先の登録")
IMPORT = ("/payees/import", "CSV一括登録")
DISPOSAL = ("/disposal", "廃棄")
RECORDS = ("/disposal/records", "廃棄記録")
RETENTION = ("/retention", "保存期間ルール")
AUDIT = ("/audit", "監査ログ")
ACCESS = ("/reports/access", "アクセス履歴")
LEDGER = ("/reports/ledger", "取扱状況台帳")
AUDIT_EXPORT = ("/audit/export", "監査ログのエクスポート")
POLICY = ("/admin/policy", "セキュリティポリシー")
USERS = ("/admin/users", "ユーザー管理")
STATUS = ("/admin/status", "アプライアンスの状態")
APPROVALS = ("/admin/approvals", "アカウント変更の承認")  # the DA's account proposals
HA = ("/admin/ha", "冗長構成（HA ペア）")  # issue 11
AGENTS = ("/admin/agents", "エージェント")  # issue 12

MENUS: dict[str, set[tuple[str, str]]] = {
    "MU": {SEARCH, EXPORTS, REQUESTS, PAYEE, IMPORT, DISPOSAL, RETENTION},
    "MA": {SEARCH, EXPORTS, REQUESTS, DISPOSAL, RECORDS, RETENTION, LEDGER, APPROVALS},
    "SA": {RECORDS, RETENTION, AUDIT, ACCESS, LEDGER, AUDIT_EXPORT, POLICY, APPROVALS, HA,
           AGENTS},
    "DA": {USERS, STATUS, HA},
}
GROUPS: dict[str, set[str]] = {
    "MU": {"利用", "収集", "廃棄"},
    "MA": {"利用", "収集", "廃棄", "監査", "管理"},
    "SA": {"廃棄", "監査", "管理"},
    "DA": {"管理"},
}
# Pages that show a number or its search: never in the SA's or DA's menu.
NUMBER_PAGES = {SEARCH[0], EXPORTS[0], PAYEE[0], IMPORT[0], REQUESTS[0]}


@pytest.fixture(scope="module")
def menu_users(admin: Api, users: dict[str, Api]) -> Iterator[dict[str, Api]]:
    """An account per role of this module's own (in Japanese, the default).
    Its SA is disabled afterwards: the shared appliance keeps one SA."""
    yield {role: provision(admin, f"menus-{role.lower()}", role) for role in MENUS}
    keep_one_sa(admin, users["SA"].username)


@pytest.fixture
def home_of(
    appliance: LocalAppliance, menu_users: dict[str, Api],
    new_context: Callable[..., BrowserContext],
) -> Iterator[Callable[[str], Page]]:
    def open_home(role: str) -> Page:
        context = new_context()
        context.add_cookies([session_cookie(appliance.url, menu_users[role].token or "")])  # type: ignore[list-item]
        page = context.new_page()
        page.goto(appliance.url + "/")
        expect(page).to_have_url(appliance.url + "/")
        return page

    yield open_home


def links(page: Page, selector: str) -> list[tuple[str, str]]:
    found = page.eval_on_selector_all(
        selector, "els => els.map(e => [e.getAttribute('href'), e.textContent.trim()])"
    )
    return [(str(href), str(text)) for href, text in found]


@pytest.mark.parametrize("role", sorted(MENUS))
def test_sidebar_shows_exactly_the_roles_items_in_japanese(
    role: str, home_of: Callable[[str], Page], shot: Callable[[Page, str], object]
) -> None:
    page = home_of(role)
    expect(page.locator("html")).to_have_attribute("lang", "ja")
    sidebar = links(page, "nav.sidebar a")
    assert sidebar[0] == HOME
    items = sidebar[1:]
    assert len(items) == len(set(items)), f"an item shown twice: {items}"
    assert set(items) == MENUS[role]
    groups = page.eval_on_selector_all(
        "nav.sidebar .nav-group", "els => els.map(e => e.textContent.trim())"
    )
    assert set(groups) == GROUPS[role] and len(groups) == len(GROUPS[role]), groups
    # The home page's tiles are the same places (labelled with their group).
    tiles = {href for href, _ in links(page, ".tiles a.tile")}
    assert tiles == {href for href, _ in MENUS[role]}
    if role in ("SA", "DA"):
        assert not tiles & NUMBER_PAGES
    expect(page.locator("nav.sidebar a.active")).to_have_text(HOME[1])
    shot(page, f"home-{role}")


def test_english_menu_is_the_same_items(
    appliance: LocalAppliance, admin: Api, new_context: Callable[..., BrowserContext]
) -> None:
    """The other language changes the words, not what is offered."""
    mu = provision(admin, "menus-mu-en", "MU")
    context = new_context(locale="en-US")
    context.add_cookies([session_cookie(appliance.url, mu.token or "")])  # type: ignore[list-item]
    page = context.new_page()
    page.goto(appliance.url + "/")
    page.click("button[lang=en]")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    items = links(page, "nav.sidebar a")
    assert {href for href, _ in items[1:]} == {href for href, _ in MENUS["MU"]}
    assert ("/search", "Search") in items and ("/payees/import", "Import from CSV") in items
