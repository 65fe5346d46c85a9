"""HTML typed into a text field comes back as text, never as markup: in the
page that echoes it (a refused form), and in every page that shows it later
(the handout, the queue, the review, search results, the subject page).
The payload would add an element with id "xss" if any page let it through."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import BrowserContext, Page, expect

from tests.support import my_numbers, png

PAYLOAD = '<i id="xss">X</i>"\'&'


def inert(page: Page) -> None:
    """The payload did not become an element, and it is shown as typed."""
    assert page.locator("#xss").count() == 0, page.url
    shown = page.locator("main").inner_text() + " ".join(
        page.locator("main input, main textarea").evaluate_all("els => els.map(e => e.value)")
    )
    assert PAYLOAD in shown, page.url


def test_html_in_names_and_free_text_comes_back_escaped(
    as_role: Callable[..., Page], new_context: Callable[..., BrowserContext], base_url: str,
    shot: Callable[[Page, str], Path],
) -> None:
    rng = random.Random()
    payee_number, own, dependent = my_numbers(3, seed=rng.randrange(1 << 30))
    serial = rng.randrange(10**6)

    # A payee named with markup: the subject page and the search results.
    mu = as_role("MU")
    mu.goto(base_url + "/payees/new")
    mu.fill("#payee-code", f"P-ESC-{serial}")
    mu.fill("#payee-name", PAYLOAD)
    mu.fill("#payee-number", payee_number)
    mu.click("#register-payee")
    expect(mu.locator(".flash")).to_be_visible()
    inert(mu)
    mu.goto(base_url + "/search")
    mu.fill("#query", f"P-ESC-{serial}")
    mu.click("#search-button")
    expect(mu.locator("tr[data-subject-id]")).to_have_count(1)
    inert(mu)
    # The search box itself echoes what was typed.
    mu.fill("#query", PAYLOAD)
    mu.click("#search-button")
    assert mu.locator("#xss").count() == 0
    assert mu.locator("#query").input_value() == PAYLOAD
    shot(mu, "search-echo")

    # A registration request for an employee named with markup: the handout,
    # the list; the employee's dependent too, in the MA's review.
    ma = as_role("MA")
    ma.goto(base_url + "/requests/new")
    ma.fill("[name=name]", PAYLOAD)
    ma.fill("[name=employee_code]", f"E-ESC-{serial}")
    ma.click("#create-request")
    link = ma.locator("#request-link").inner_text().strip()
    inert(ma)
    shot(ma, "handout")
    employee = new_context().new_page()
    employee.goto(link)
    inert(employee)
    employee.fill("#number", own)
    employee.select_option("[name=dep-1-relation]", "child")
    employee.fill("[name=dep-1-name]", PAYLOAD)
    employee.fill("[name=dep-1-birth]", "2015-05-05")
    employee.fill("[name=dep-1-number]", dependent)
    for field in ("number_document", "identity_document"):
        employee.set_input_files(f"[name={field}]", files=[
            {"name": "doc.png", "mimeType": "image/png", "buffer": png(20, 20, (9, 9, 9))}])
    employee.click("#submit-request")
    assert employee.locator(".error").count() == 0, employee.locator(".error").inner_text()
    expect(employee.locator("#number")).to_have_count(0)  # the thank-you page
    ma.goto(base_url + "/requests")
    inert(ma)
    ma.locator(f"#queue-table tr:has-text('E-ESC-{serial}') a").first.click()
    inert(ma)
    shot(ma, "review")

    # A user name with markup on a failed sign-in is echoed in the form.
    stranger = new_context().new_page()
    stranger.goto(base_url + "/login")
    stranger.fill("#username", PAYLOAD[:64])
    stranger.fill("#password", "not-the-password")
    stranger.click("button.primary")
    expect(stranger.locator(".error")).to_be_visible()
    assert stranger.locator("#xss").count() == 0
    assert stranger.locator("#username").input_value() == PAYLOAD[:64]

    # The SA's audit search and a refused policy echo what was typed.
    sa = as_role("SA")
    sa.goto(base_url + "/audit")
    sa.fill("#actor", PAYLOAD)
    sa.locator("#actor").press("Enter")
    assert sa.locator("#xss").count() == 0
    assert sa.locator("#actor").input_value() == PAYLOAD
    sa.goto(base_url + "/admin/policy")
    sa.fill("#allowed_networks", PAYLOAD)
    sa.click("#save-policy")
    expect(sa.locator(".error")).to_be_visible()
    assert sa.locator("#xss").count() == 0
    assert sa.locator("#allowed_networks").input_value() == PAYLOAD
    shot(sa, "policy-refused")
