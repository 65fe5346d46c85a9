"""Using numbers through the browser: an MU searches by kana, by code and by
number (the number never reaches the address bar), opens a subject, reveals
its number for a purpose and sees it hidden again after 30 seconds (on a
page clock); an MA sees no reveal form; an MU prepares a Shift_JIS export and
downloads it once; an export over the threshold waits until an MA approves
it in the browser, and a rejection shows its reason."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect

from kura.console.web.use import query_shape
from kura.core.exports import TOKYO
from tests.support import Api, hyphenated, my_numbers, wrong_check_digit

YEAR = datetime.now(TOKYO).year
Shot = Callable[[Page, str], Path]


def register(mu: Api, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Import ``rows`` and return the subjects by code."""
    r = mu.post("/subjects/import", {"rows": rows})
    assert r.status == 200, r.body
    assert r.json["created"] + r.json["existing"] == len(rows), r.json["rejected"]
    found: dict[str, dict[str, Any]] = {}
    for prefix in sorted({row["code"].split("-")[0] for row in rows}):
        listed = mu.get("/subjects", query={"query": prefix + "-", "limit": 500})
        for s in listed.json["subjects"]:
            if s["kind"] != "dependent":
                found[s["code"]] = s
            else:
                found[f"{s['code']}/{s['name']}"] = s
    return found


def search(page: Page, text: str, kind: str = "") -> None:
    page.fill("#query", text)
    page.select_option("#kind", kind)
    page.click("#search-button")


def result_ids(page: Page) -> list[str]:
    return [row.get_attribute("data-subject-id") or ""
            for row in page.locator("#results tbody tr").all()]


def test_the_search_box_reads_numbers_readings_and_the_rest() -> None:
    assert query_shape("1234-5678-9018") == "number"
    assert query_shape("１２３４５６７８９０１８") == "number"
    assert query_shape("123456789018") == "number"
    assert query_shape("12345678901") == "text"  # eleven digits: a code prefix
    assert query_shape("やまだ たろう") == "kana"
    assert query_shape("ヤマダ") == "kana" and query_shape("ﾔﾏﾀﾞ") == "kana"
    assert query_shape("山田") == "text" and query_shape("E-404") == "text"
    assert query_shape("") == "empty"


def test_search_open_and_reveal_for_a_purpose(
    as_role: Callable[[str], Page], users: dict[str, Api], base_url: str, shot: Shot,
) -> None:
    mu, sa = users["MU"], users["SA"]
    employee_number, spouse, child = my_numbers(3, seed=4501)
    found = register(mu, [
        {"kind": "employee", "code": "WEBU-E1", "name": "上野 健太", "name_kana": "ウエノ ケンタ",
         "number": employee_number, "birth_date": "1985-04-02"},
        {"kind": "dependent", "code": "WEBU-E1", "employee_code": "WEBU-E1",
         "name": "上野 由美", "name_kana": "ウエノ ユミ", "number": spouse},
        {"kind": "dependent", "code": "WEBU-E1", "employee_code": "WEBU-E1",
         "name": "上野 蓮", "name_kana": "ウエノ レン", "number": child},
    ])
    employee = found["WEBU-E1"]
    page = as_role("MU")
    page.goto(base_url + "/search")
    shot(page, "search-form")

    # By kana, typed in hiragana: the reading is matched in katakana.
    search(page, "うえの けん")
    expect(page.locator(f"tr[data-subject-id='{employee['id']}']")).to_be_visible()
    row = page.locator(f"tr[data-subject-id='{employee['id']}']")
    expect(row.locator("td.masked")).to_have_text("****-****-" + employee_number[-4:])
    shot(page, "search-by-kana")

    # By name in kanji, whichever space is typed between family and given name.
    search(page, "上野\u3000健")
    expect(page.locator(f"tr[data-subject-id='{employee['id']}']")).to_be_visible()

    # By code: the employee and both dependents; the kind narrows it.
    search(page, "WEBU-E1")
    expect(page.locator("#results tbody tr")).to_have_count(3)
    search(page, "WEBU-E1", "employee")
    assert result_ids(page) == [employee["id"]]

    # By number, hyphenated: one row, and the number is nowhere in the URL,
    # the title or the page (not even back in the search box).
    search(page, hyphenated(employee_number))
    assert result_ids(page) == [employee["id"]]
    assert page.url == base_url + "/search"
    assert page.locator("#query").input_value() == ""
    for spelling in (employee_number, hyphenated(employee_number)):
        assert spelling not in page.content() and spelling not in page.title()
    shot(page, "search-by-number")
    search(page, wrong_check_digit(employee_number))
    expect(page.locator(".error")).to_be_visible()
    assert wrong_check_digit(employee_number) not in page.content()

    # The subject's page: masked, with its dependents and its purposes.
    search(page, "WEBU-E1", "employee")
    page.clock.install()
    page.click(f"tr[data-subject-id='{employee['id']}'] a")
    expect(page).to_have_url(f"{base_url}/subjects/{employee['id']}")
    expect(page.locator("#masked-number")).to_have_text("****-****-" + employee_number[-4:])
    expect(page.locator("#dependents tbody tr")).to_have_count(2)
    offered = page.locator("#purpose option").evaluate_all("os => os.map(o => o.value)")
    assert offered == employee["purposes"]
    assert employee_number not in page.content()
    shot(page, "subject")

    # Reveal for a purpose: the number is shown on the page answered to the
    # POST (no redirect: the URL holds no number), then hidden after 30 s.
    page.select_option("#purpose", "withholding_slip")
    page.click("#reveal-button")
    revealed = page.locator("#revealed-number")
    expect(revealed).to_have_text(hyphenated(employee_number))
    expect(revealed).to_have_attribute("data-hide-after", "30")
    assert page.url == f"{base_url}/subjects/{employee['id']}/reveal"
    assert employee_number[-8:] not in page.title()
    shot(page, "revealed")
    page.clock.run_for(29_000)
    expect(revealed).to_have_text(hyphenated(employee_number))
    expect(page.locator("#reveal-countdown [data-countdown]")).to_have_text("1")
    page.clock.run_for(2_000)
    expect(revealed).to_have_text("****-****-" + employee_number[-4:])
    assert hyphenated(employee_number) not in page.locator("main").inner_text()
    shot(page, "hidden-again")

    # A stale or altered form naming a purpose the subject does not allow:
    # refused (and recorded by the vault), nothing shown.
    page.locator("#purpose option").first.evaluate("o => { o.value = 'payment_record'; }")
    page.select_option("#purpose", "payment_record")
    page.click("#reveal-button")
    expect(page.locator(".error")).to_be_visible()
    expect(page.locator("#revealed-number")).to_have_count(0)

    entries = sa.get("/audit", query={"action": "subject.reveal", "actor": mu.username,
                                      "limit": 20}).json["entries"]
    refused, shown = sorted(entries, key=lambda e: e["seq"], reverse=True)[:2]
    assert (shown["target"], shown["purpose"], shown["outcome"]) == (
        employee["id"], "withholding_slip", "ok")
    assert (refused["target"], refused["purpose"], refused["outcome"]) == (
        employee["id"], "payment_record", "denied")


def test_an_ma_searches_but_sees_no_reveal_form(
    as_role: Callable[[str], Page], users: dict[str, Api], base_url: str, shot: Shot,
) -> None:
    [number] = my_numbers(1, seed=4502)
    found = register(users["MU"], [{"kind": "payee", "code": "WEBM-1", "name": "前田 光",
                                    "name_kana": "マエダ ヒカル", "number": number}])
    page = as_role("MA")
    page.goto(base_url + "/search")
    search(page, "マエダ")
    subject = found["WEBM-1"]
    expect(page.locator(f"tr[data-subject-id='{subject['id']}']")).to_be_visible()
    expect(page.locator("#results input[type=checkbox]")).to_have_count(0)
    page.goto(f"{base_url}/subjects/{subject['id']}")
    expect(page.locator("#masked-number")).to_have_text("****-****-" + number[-4:])
    expect(page.locator("#reveal-button")).to_have_count(0)
    expect(page.locator("#purpose")).to_have_count(0)
    shot(page, "subject-as-ma")


def download(page: Page) -> tuple[bytes, str]:
    with page.expect_download() as info:
        page.click("#download-export")
    file = info.value
    path = file.path()
    return Path(path).read_bytes(), file.suggested_filename


def test_an_mu_exports_shift_jis_and_downloads_it_once(
    as_role: Callable[[str], Page], users: dict[str, Api], base_url: str, shot: Shot,
) -> None:
    numbers = my_numbers(3, seed=4503)
    register(users["MU"], [
        {"kind": "payee", "code": f"WEBX-{i}", "name": name, "name_kana": "", "number": n}
        for i, (name, n) in enumerate(zip(("木村 拓", "髙木 望", "斉藤 歩"), numbers, strict=True))
    ])
    page = as_role("MU")
    page.goto(base_url + "/search")
    search(page, "WEBX-")
    expect(page.locator("#results tbody tr")).to_have_count(3)
    for box in page.locator("#results input[name=subject]").all():
        box.check()
    page.click("#export-selected")
    expect(page).to_have_url(re.compile(r"/exports\?subject="))
    assert not any(n in page.url for n in numbers)
    expect(page.locator("#export-subjects input[name=subject]")).to_have_count(3)
    page.select_option("#export-purpose", "payment_record")
    page.fill("#tax-year", str(YEAR))
    page.check("input[name=encoding][value=shift_jis]")
    shot(page, "export-form")
    page.click("#prepare-export")

    expect(page).to_have_url(re.compile(r"/exports/[0-9a-f-]{36}$"))
    expect(page.locator("#export-state")).to_have_attribute("data-state", "approved")
    expect(page.locator("#export-rows")).to_have_text("2")
    # 髙 is not JIS X 0208: reported with the code and the character, not replaced.
    problem = page.locator("#export-report tr[data-code='WEBX-1']")
    expect(problem.locator("td.characters")).to_have_text("髙")
    shot(page, "export-ready")

    second_tab = page.context.new_page()
    second_tab.goto(page.url)
    body, filename = download(page)
    assert re.fullmatch(rf"kura-payment_record-{YEAR}-[0-9a-f]{{8}}\.csv", filename)
    text = body.decode("shift_jis")
    assert text == body.decode("cp932")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["種別", "コード", "氏名", "フリガナ", "個人番号"]
    assert sorted((r[1], r[2], r[4]) for r in rows[1:]) == [
        ("WEBX-0", "木村 拓", numbers[0]), ("WEBX-2", "斉藤 歩", numbers[2])]

    # The page shows it spent; the download cannot be taken again.
    expect(page.locator("#export-state")).to_have_attribute("data-state", "downloaded")
    expect(page.locator("#download-export")).to_have_count(0)
    shot(page, "export-downloaded")
    second_tab.click("#download-export")
    expect(second_tab.locator(".error")).to_be_visible()
    expect(second_tab.locator("#export-state")).to_have_attribute("data-state", "downloaded")
    shot(second_tab, "second-download-refused")


def test_an_export_over_the_threshold_waits_for_an_ma(
    as_role: Callable[[str], Page], users: dict[str, Api], base_url: str, shot: Shot,
) -> None:
    numbers = my_numbers(101, seed=4504)
    register(users["MU"], [{"kind": "payee", "code": f"WEBB-{i:03d}", "name": f"大口 {i}",
                            "number": n} for i, n in enumerate(numbers)])
    mu = as_role("MU")

    def prepare_all_payees() -> str:
        mu.goto(base_url + "/exports")
        mu.select_option("#export-purpose", "payment_record")
        mu.fill("#tax-year", "")
        mu.select_option("#export-kind", "payee")
        mu.check("input[name=encoding][value=utf-8-bom]")
        mu.click("#prepare-export")
        expect(mu).to_have_url(re.compile(r"/exports/[0-9a-f-]{36}$"))
        return mu.url.rsplit("/", 1)[1]

    first = prepare_all_payees()
    expect(mu.locator("#export-state")).to_have_attribute("data-state", "pending")
    expect(mu.locator("#export-waiting")).to_be_visible()
    expect(mu.locator("#download-export")).to_have_count(0)
    assert int(mu.locator("#export-rows").inner_text()) > 100
    shot(mu, "export-waiting")
    second = prepare_all_payees()

    ma = as_role("MA")
    ma.goto(base_url + "/exports")
    expect(ma.locator(f"#approval-queue tr[data-export-id='{first}']")).to_be_visible()
    shot(ma, "approval-queue")
    ma.click(f"#approve-export-{first}")
    expect(ma.locator(".flash")).to_be_visible()
    expect(ma.locator(f"#approval-queue tr[data-export-id='{first}']")).to_have_count(0)
    ma.fill(f"#reject-reason-{second}", "対象年を指定してください")
    ma.click(f"#reject-export-{second}")
    expect(ma.locator(f"#approval-queue tr[data-export-id='{second}']")).to_have_count(0)
    shot(ma, "decided")

    mu.goto(f"{base_url}/exports/{first}")
    expect(mu.locator("#export-state")).to_have_attribute("data-state", "approved")
    rows = int(mu.locator("#export-rows").inner_text())
    body, _ = download(mu)
    assert body.startswith(b"\xef\xbb\xbf")
    assert len(list(csv.reader(io.StringIO(body.decode("utf-8-sig"))))) == rows + 1
    mu.goto(f"{base_url}/exports/{second}")
    expect(mu.locator("#export-state")).to_have_attribute("data-state", "rejected")
    expect(mu.locator("#export-reason")).to_have_text("対象年を指定してください")
    shot(mu, "rejected")
    mu.goto(base_url + "/exports")
    state = mu.locator(f"#export-requests tr[data-export-id='{first}'] [data-state]")
    expect(state).to_have_attribute("data-state", "downloaded")
