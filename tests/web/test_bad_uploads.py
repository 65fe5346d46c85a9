"""Bad documents through the employee's browser: an executable renamed to
.png is refused by its content, and a file over the limit is refused with a
413 page in Japanese; neither uses up the link, and a good upload then works."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import BrowserContext, Page, expect

from tests.support import Api, my_numbers, png

ELF = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 8 + b"\x02\x00\x3e\x00" + b"\x90" * 200


def attach(page: Page, number_document: bytes, name: str = "card.png") -> None:
    page.set_input_files("[name=number_document]", files=[
        {"name": name, "mimeType": "image/png", "buffer": number_document}])
    page.set_input_files("[name=identity_document]", files=[
        {"name": "id.png", "mimeType": "image/png", "buffer": png(30, 20, (1, 2, 3))}])


def test_renamed_executable_and_oversize_upload_are_refused(
    users: dict[str, Api], new_context: Callable[..., BrowserContext],
    shot: Callable[[Page, str], Path],
) -> None:
    code = f"E-UPL-{random.randrange(10**6):06d}"
    created = users["MU"].post("/requests", {"name": "書類 次郎", "employee_code": code,
                                             "purposes": ["withholding_slip"]})
    assert created.status == 200, created.body
    link = f"{users['MU'].base}/r/{created.json['token']}"
    (number,) = my_numbers(1, seed=random.randrange(1 << 30))
    page = new_context().new_page()
    page.goto(link)
    page.fill("#number", number)
    attach(page, ELF)
    page.click("#submit-request")
    expect(page.locator(".error")).to_contain_text("JPEG")
    assert page.locator("#number").count() == 1  # the form again, not the thank-you page
    shot(page, "renamed-executable")

    response_status: list[int] = []
    page.on("response", lambda r: response_status.append(r.status) if "/r/" in r.url else None)
    page.fill("#number", number)
    attach(page, png(10, 10, (9, 9, 9)) + b"\x00" * (11 << 20))
    page.click("#submit-request")
    expect(page.locator("main")).to_contain_text("MB")
    assert 413 in response_status
    shot(page, "oversize")

    # The link still works: a good upload goes through.
    page.goto(link)
    page.fill("#number", number)
    attach(page, png(40, 30, (200, 10, 10)))
    page.click("#submit-request")
    expect(page.locator("#number")).to_have_count(0)
    state = users["MA"].get("/requests", query={"id": created.json["request"]["id"]})
    assert state.json["requests"][0]["state"] == "submitted", state.body
