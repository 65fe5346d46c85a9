"""Collecting individual payees through the browser: one payee checked as it
is typed and again by the server; duplicates refused; a Shift_JIS file of
300 rows imported with a progress bar, its rejected rows listed and
downloaded without a single number; the same file again in UTF-8, all
already registered; an oversize upload refused; another clerk kept out of
the import; a forged form refused before the file is read."""

from __future__ import annotations

import codecs
import csv
import http.client
import io
import re
import ssl
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import BrowserContext, Page, Response, expect

from kura import config
from kura.core.audit import looks_like_my_number
from kura.devserver import LocalAppliance
from tests.support import Api, hyphenated, my_numbers, provision, wrong_check_digit
from tests.web.conftest import session_cookie

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
HEADER = ["支払先コード", "氏名", "フリガナ", "個人番号", "生年月日", "利用目的", "保存根拠"]
Shot = Callable[[Page, str], object]


def posted(page: Page, path: str) -> Callable[[Response], bool]:
    return lambda r: r.request.method == "POST" and urlsplit(r.url).path == path


def assert_no_number(text: str, numbers: list[str]) -> None:
    for number in numbers:
        assert number not in text and hyphenated(number) not in text
    assert not looks_like_my_number(text)


# --- one payee -------------------------------------------------------------------


def submit(page: Page) -> Response:
    with page.expect_response(posted(page, "/payees/new")) as answer:
        page.click("#register-payee")
    return answer.value


def test_register_a_payee_checked_as_typed_then_by_the_server(
    as_role: Callable[[str], Page], base_url: str, users: dict[str, Api], shot: Shot
) -> None:
    (good,) = my_numbers(1, seed=7301)
    bad = wrong_check_digit(good)
    page = as_role("MU")
    page.goto(base_url + "/payees/new")
    expect(page.locator("h1")).to_have_text("支払先の登録")
    expect(page.locator("#payee-number")).to_have_attribute("autocomplete", "off")
    # The default purpose of a payee is the payment record; retention from the last payment.
    expect(page.locator("input[name=purposes][value=payment_record]")).to_be_checked()
    expect(page.locator("#payee-retention")).to_have_value("last_payment")
    page.fill("#payee-code", "WP-0001")
    page.fill("#payee-name", "山田 花子")
    page.fill("#payee-kana", "やまだ はなこ")
    page.fill("#payee-birth", "1985-04-01")

    # A wrong check digit is pointed out as it is typed...
    page.fill("#payee-number", bad)
    note = page.locator("#payee-number-check")
    expect(note).to_contain_text("個人番号として正しくありません")
    expect(page.locator("#payee-number")).to_have_attribute("aria-invalid", "true")
    # No number in a screenshot, not even a made-up one: the box shows dots for the picture.
    page.eval_on_selector("#payee-number", "box => { box.type = 'password'; }")
    shot(page, "live-check")
    page.eval_on_selector("#payee-number", "box => { box.type = 'text'; }")
    # ...and refused by the server when sent anyway, keeping what was typed but the number.
    answer = submit(page)
    assert answer.status == 422
    expect(page.locator("p.error")).to_contain_text("チェックデジット")
    expect(page.locator("#payee-code")).to_have_value("WP-0001")
    expect(page.locator("#payee-kana")).to_have_value("やまだ はなこ")
    expect(page.locator("#payee-number")).to_have_value("")
    assert_no_number(page.content(), [good, bad])
    assert bad not in page.title()
    shot(page, "server-refusal")

    page.fill("#payee-number", hyphenated(good))
    expect(note).to_have_text("")
    answer = submit(page)
    assert answer.status == 303
    expect(page).to_have_url(re.compile(re.escape(base_url) + f"/subjects/{UUID}$"))
    expect(page.locator(".flash")).to_have_text("支払先を登録しました。")
    assert_no_number(page.url, [good])
    shot(page, "registered")
    found = users["MU"].post("/subjects/lookup", {"code": "WP-0001", "kind": "payee"})
    (payee,) = found.json["subjects"]
    assert payee["number_masked"].endswith(good[-4:])
    assert payee["name_kana"] == "ヤマダ\u3000ハナコ"
    assert payee["purposes"] == ["payment_record"]
    assert payee["retention_basis"] == "last_payment"
    assert payee["birth_date"] == "1985-04-01"
    assert page.url.endswith(payee["id"])

    # The same payee again: nothing changes, and the clerk is told so.
    registered_url = page.url
    page.goto(base_url + "/payees/new")
    page.fill("#payee-code", "WP-0001")
    page.fill("#payee-name", "山田 花子")
    page.fill("#payee-number", good)
    assert submit(page).status == 303
    expect(page).to_have_url(registered_url)
    expect(page.locator(".flash")).to_contain_text("登録済み")


def test_duplicates_and_bad_codes_are_refused(
    as_role: Callable[[str], Page], base_url: str, shot: Shot
) -> None:
    first, second = my_numbers(2, seed=7302)
    page = as_role("MU")
    page.goto(base_url + "/payees/new")
    page.fill("#payee-code", "WP-0101")
    page.fill("#payee-name", "佐藤 一郎")
    page.fill("#payee-number", first)
    page.locator("input[name=purposes][value=withholding_slip]").check()
    page.select_option("#payee-retention", "contract")
    assert submit(page).status == 303

    cases = [
        # (code, number, what the clerk is told)
        ("WP-0102", first, "この番号は別の人に登録済みです。"),
        ("WP-0101", second, "そのコードは別の番号で登録済みです。"),
        ("WP 0103!", second, "半角英数字、ハイフン、アンダースコアのみ使えます。"),
        ("WP-0104", "", "番号が入力されていません。"),
    ]
    for code, number, told in cases:
        page.goto(base_url + "/payees/new")
        page.fill("#payee-code", code)
        page.fill("#payee-name", "鈴木 次郎")
        page.fill("#payee-number", number)
        page.select_option("#payee-retention", "contract")
        answer = submit(page)
        assert answer.status == 422, code
        expect(page.locator("p.error")).to_contain_text(told)
        expect(page.locator("#payee-code")).to_have_value(code)
        expect(page.locator("#payee-name")).to_have_value("鈴木 次郎")
        expect(page.locator("#payee-retention")).to_have_value("contract")
        expect(page.locator("#payee-number")).to_have_value("")
        assert_no_number(page.content(), [first, second])
    shot(page, "bad-code")
    # No purpose at all is refused too.
    page.goto(base_url + "/payees/new")
    page.fill("#payee-code", "WP-0105")
    page.fill("#payee-name", "高橋 三郎")
    page.fill("#payee-number", second)
    page.locator("input[name=purposes][value=payment_record]").uncheck()
    assert submit(page).status == 422
    expect(page.locator("p.error")).to_contain_text("利用目的")
    shot(page, "no-purpose")


# --- many payees from CSV -----------------------------------------------------------


def payee_file(numbers: list[str], extra: list[str]) -> tuple[list[list[str]], dict[int, str]]:
    """300 data rows: the good ones, and three bad ones at known lines (header
    = line 1). Returns the rows and {line: field} of the rows to be rejected."""
    rows = [
        [f"WPI-{i:04d}", f"取引先 {i}", "トリヒキサキ", n,
         "1980/4/1" if i % 3 == 0 else "", "支払調書作成事務" if i % 2 else "", "最終支払"]
        for i, n in enumerate(numbers)
    ]
    bad = {
        # a wrong check digit
        40: ["WPI-9001", "誤り 一", "", wrong_check_digit(extra[0]), "", "", ""],
        # no name
        150: ["WPI-9002", "", "ナシ", extra[1], "", "", ""],
        # the number of an earlier row of the file, under another code
        260: ["WPI-9003", "重複 三", "", numbers[10], "", "", ""],
    }
    for index in sorted(bad):
        rows.insert(index, bad[index])
    return rows, {index + 2: ("name" if index == 150 else "number") for index in bad}


def csv_bytes(rows: list[list[str]], encoding: str) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(HEADER)
    writer.writerows(rows)
    return out.getvalue().encode(encoding)


@pytest.fixture(scope="module")
def other_mu(admin: Api) -> Api:
    return provision(admin, "mu-payees-other", "MU")


def import_file(page: Page, base_url: str, path: Path) -> tuple[str, list[dict[str, Any]]]:
    """Upload ``path`` and wait for the result; the job's URL and every
    progress answer the page polled."""
    polled: list[dict[str, Any]] = []

    def watch(response: Response) -> None:
        if response.url.endswith("/progress") and response.ok:
            polled.append(response.json())

    page.on("response", watch)
    page.goto(base_url + "/payees/import")
    page.set_input_files("#import-file", str(path))
    with page.expect_response(posted(page, "/payees/import")) as answer:
        page.click("#start-import")
    assert answer.value.status == 303
    expect(page.locator("#imported-count")).to_be_visible()
    page.remove_listener("response", watch)
    assert re.fullmatch(re.escape(base_url) + f"/payees/import/{UUID}", page.url)
    return page.url, polled


def rejected_table(page: Page) -> list[tuple[int, str, str]]:
    cells = page.locator("#rejected-rows tbody tr").evaluate_all(
        "rows => rows.map(r => Array.from(r.cells, c => c.textContent.trim()))"
    )
    return [(int(line), column, reason) for line, column, reason in cells]


def test_import_shift_jis_then_utf8_with_progress_and_report(
    as_role: Callable[[str], Page], base_url: str, users: dict[str, Api], other_mu: Api,
    new_context: Callable[..., BrowserContext], tmp_path: Path, shot: Shot,
) -> None:
    numbers = my_numbers(297, seed=7303)
    extra = my_numbers(2, seed=7304)
    rows, bad_lines = payee_file(numbers, extra)
    assert len(rows) == 300
    every_number = numbers + extra + [wrong_check_digit(extra[0])]
    sjis = tmp_path / "payees-sjis.csv"
    sjis.write_bytes(csv_bytes(rows, "cp932"))

    page = as_role("MU")
    page.goto(base_url + "/payees/import")
    expect(page.locator("#expected-header")).to_have_text(",".join(HEADER))
    shot(page, "upload")
    with page.expect_download() as template:
        page.click("#download-template")
    sample = Path(template.value.path()).read_bytes()
    assert sample.startswith(codecs.BOM_UTF8)
    assert sample.decode("utf-8-sig").splitlines() == [",".join(HEADER)]

    job_url, polled = import_file(page, base_url, sjis)
    # The progress bar ends full, and what the page polled only went forward.
    bar = page.locator("#import-bar")
    expect(bar).to_have_attribute("value", "300")
    expect(bar).to_have_attribute("max", "300")
    final = page.request.get(job_url + "/progress").json()
    assert final == {"done": 300, "total": 300, "finished": True,
                     "redirect": urlsplit(job_url).path}
    done = [p["done"] for p in polled]
    assert done == sorted(done) and all(p["total"] == 300 for p in polled)
    assert all(p["done"] == 300 for p in polled if p["finished"])
    expect(page.locator("#import-encoding")).to_have_text("Shift_JIS（CP932）")
    expect(page.locator("#imported-count")).to_have_text("297")
    expect(page.locator("#skipped-count")).to_have_text("0")
    expect(page.locator("#rejected-count")).to_have_text("3")
    table = rejected_table(page)
    assert [(line, column) for line, column, _ in table] == [
        (line, {"number": "個人番号", "name": "氏名"}[field])
        for line, field in sorted(bad_lines.items())
    ]
    reasons = [reason for _, _, reason in table]
    assert "チェックデジット" in reasons[0]
    assert "入力してください" in reasons[1]
    assert "12行目と同じ番号です（ファイル内の重複）" in reasons[2]  # numbers[10] is on line 12
    assert_no_number(page.content(), every_number)
    shot(page, "imported-sjis")

    with page.expect_download() as report:
        page.click("#download-report")
    data = Path(report.value.path()).read_bytes()
    assert data.startswith(codecs.BOM_UTF8)
    text = data.decode("utf-8-sig")
    assert_no_number(text, every_number)
    lines = list(csv.reader(io.StringIO(text)))
    assert [int(r[0]) for r in lines[1:]] == sorted(bad_lines)
    assert [r[1] for r in lines[1:]] == ["個人番号 (number)", "氏名 (name)", "個人番号 (number)"]
    assert all(r[2] and r[3] for r in lines[1:])

    # The payees are in the vault, with the file's values.
    mu = users["MU"]
    found = mu.post("/subjects/lookup", {"number": numbers[100]}).json["subjects"]
    assert [(s["code"], s["name"]) for s in found] == [("WPI-0100", "取引先 100")]
    assert mu.post("/subjects/lookup", {"number": extra[1]}).json["subjects"] == []

    # The same file in UTF-8 (with a BOM, as Excel saves it): all already registered.
    utf8 = tmp_path / "payees-utf8.csv"
    utf8.write_bytes(codecs.BOM_UTF8 + csv_bytes(rows, "utf-8"))
    second_url, _ = import_file(page, base_url, utf8)
    assert second_url != job_url
    expect(page.locator("#import-encoding")).to_have_text("UTF-8（BOM付き）")
    expect(page.locator("#imported-count")).to_have_text("0")
    expect(page.locator("#skipped-count")).to_have_text("297")
    expect(page.locator("#rejected-count")).to_have_text("3")
    assert [line for line, _, _ in rejected_table(page)] == sorted(bad_lines)
    shot(page, "imported-utf8-again")
    # Both imports are listed on the upload page for their owner.
    page.goto(base_url + "/payees/import")
    expect(page.locator("#recent-imports tbody tr")).to_have_count(2)

    # Another MU cannot open the job, its progress or its report; an unknown job is 404.
    context = new_context()
    context.add_cookies([session_cookie(base_url, other_mu.token or "")])  # type: ignore[list-item]
    stranger = context.new_page()
    refused = stranger.goto(job_url)
    assert refused is not None and refused.status == 403
    expect(stranger.locator(".error-message")).to_contain_text("開始したユーザーだけ")
    shot(stranger, "other-mu-refused")
    for suffix in ("/progress", "/report.csv"):
        assert context.request.get(job_url + suffix).status == 403
    unknown = stranger.goto(f"{base_url}/payees/import/{uuid.UUID(int=0, version=4)}")
    assert unknown is not None and unknown.status == 404
    page.goto(base_url + "/payees/import")
    stranger.goto(base_url + "/payees/import")
    expect(stranger.locator("#recent-imports")).to_have_count(0)


def import_limit(appliance: LocalAppliance) -> int:
    return config.load(appliance.config_path).console.max_import_bytes


def test_an_oversize_file_is_refused_with_a_413_page(
    as_role: Callable[[str], Page], base_url: str, appliance: LocalAppliance, tmp_path: Path,
    shot: Shot,
) -> None:
    limit = import_limit(appliance)
    big = tmp_path / "too-big.csv"
    with big.open("wb") as f:
        f.write(",".join(HEADER).encode() + b"\r\n")
        f.truncate(limit + (1 << 20))  # the rest is NUL bytes: never read that far
    page = as_role("MU")
    page.goto(base_url + "/payees/import")
    page.set_input_files("#import-file", str(big))
    with page.expect_response(posted(page, "/payees/import")) as answer:
        page.click("#start-import")
    assert answer.value.status == 413
    # The upload page again, in the clerk's language, ready for a smaller file.
    expect(page.locator("p.error")).to_contain_text("ファイルが大きすぎます")
    expect(page.locator("html")).to_have_attribute("lang", "ja")
    expect(page.locator("#import-file")).to_be_visible()
    shot(page, "too-large")


# --- the upload without a browser: forged forms, no Content-Length -------------------


class Upload:
    """Multipart POSTs to /payees/import as a signed-in clerk, the way a
    script (or a forged page) would send them."""

    def __init__(self, base: str, cafile: Path, token: str) -> None:
        parts = urlsplit(base)
        assert parts.hostname and parts.port
        self.host, self.port = parts.hostname, parts.port
        self.context = ssl.create_default_context(cafile=str(cafile))
        self.cookie = f"kura_session={token}"

    def connection(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=60)

    def csrf(self) -> str:
        conn = self.connection()
        try:
            conn.request("GET", "/payees/import", headers={"Cookie": self.cookie})
            page = conn.getresponse().read().decode()
        finally:
            conn.close()
        found = re.search(r'name="csrf" value="([^"]+)"', page)
        assert found
        return found[1]

    def post(self, parts: list[tuple[str, bytes]], chunks: Iterator[bytes] | None = None,
             ) -> tuple[int, str]:
        boundary = "kuraTestBoundary7305"
        head = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'.encode()
            + (b'; filename="payees.csv"\r\nContent-Type: text/csv' if name == "file" else b"")
            + b"\r\n\r\n" + value + b"\r\n"
            for name, value in parts
        )
        headers = {"Cookie": self.cookie,
                   "Content-Type": f"multipart/form-data; boundary={boundary}"}
        conn = self.connection()
        try:
            if chunks is None:
                conn.request("POST", "/payees/import", body=head + f"--{boundary}--\r\n".encode(),
                             headers=headers)
            else:
                # The file part is left open and streamed without a Content-Length.
                def body() -> Iterator[bytes]:
                    yield head[: -len(b"\r\n")]
                    yield from chunks

                conn.request("POST", "/payees/import", body=body(), headers=headers,
                             encode_chunked=True)
            answer = conn.getresponse()
            return answer.status, answer.read().decode("utf-8", "replace")
        finally:
            conn.close()


def test_forged_forms_and_an_endless_upload_are_refused(
    appliance: LocalAppliance, users: dict[str, Api]
) -> None:
    mu = users["MU"]
    fresh = mu.sign_in(mu.username, mu.password, mu.totp_secret)
    upload = Upload(appliance.url, appliance.cert, fresh.token or "")
    (number,) = my_numbers(1, seed=7305)
    content = ("支払先コード,氏名,個人番号\r\nWPF-0001,偽造 太郎," + number + "\r\n").encode()
    # No token, a wrong token, and the file before the token: refused before reading the file.
    for parts in ([("file", content)], [("csrf", b"forged"), ("file", content)],
                  [("file", content), ("csrf", upload.csrf().encode())]):
        status, page = upload.post(parts)
        assert status == 403, parts[0][0]
        assert "別のサイトから送信されました" in page
        assert number not in page
    assert mu.post("/subjects/lookup", {"number": number}).json["subjects"] == []

    # A file sent without a Content-Length is cut off once it passes the limit.
    limit = import_limit(appliance)

    def endless() -> Iterator[bytes]:
        block = b"x" * (1 << 20)
        for _ in range(limit // len(block) + 4):
            yield block

    status, page = upload.post([("csrf", upload.csrf().encode()), ("file", content)], endless())
    assert status == 413
    assert "ファイルが大きすぎます" in page
