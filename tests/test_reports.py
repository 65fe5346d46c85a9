"""Reports through the JSON API, against the real console, vault and
PostgreSQL: the access history counts what the MU did, the handling-status
ledger lists the files and who may use them, the vault verifies its own
audit chain, the DA sees the appliance's state — and no report carries a
number. Then the pure core: the folding, the due dates, the labels, and the
catalogs that name it all in Japanese."""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from babel.messages.extract import extract_from_file
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from jinja2.ext import babel_extract

from kura import __version__
from kura.console.web import i18n
from kura.console.web.admin import certificate_facts
from kura.core import audit, reports
from kura.core.disposal import DEFAULT_RULES
from kura.core.errors import BadRequest
from tests.support import Api, hyphenated, my_numbers

NUMBERS = my_numbers(4, seed=4406)
WEBUI = Path(__file__).resolve().parent.parent / "webui"


def _period(start: datetime) -> dict[str, str]:
    return {"since": start.isoformat(), "until": (datetime.now(UTC) + timedelta(minutes=1))
            .isoformat()}


@pytest.fixture(scope="module")
def activity(users: dict[str, Api]) -> dict[str, Any]:
    """The MU registers two payees, reveals one number (and is refused a
    purpose the payee does not allow) and exports one row, in a period of
    its own."""
    mu = users["MU"]
    start = datetime.now(UTC) - timedelta(seconds=1)
    subjects = []
    for i, number in enumerate(NUMBERS[:2]):
        r = mu.post("/payees", {"code": f"RPT-{i}", "name": f"報告 {i}郎", "number": number})
        assert r.status == 201, r.body
        subjects.append(r.json["subject"])
    revealed = mu.post(f"/subjects/{subjects[0]['id']}/reveal", {"purpose": "payment_record"})
    assert revealed.status == 200 and revealed.json["number"] == NUMBERS[0]
    refused = mu.post(f"/subjects/{subjects[0]['id']}/reveal", {"purpose": "health_pension"})
    assert refused.status == 422
    exported = mu.post("/exports", {"purpose": "payment_record", "ids": [subjects[1]["id"]]})
    assert exported.status == 200, exported.body
    assert NUMBERS[1] in exported.body.decode("cp932")
    return {"start": start, "subjects": subjects,
            "export_sha256": hashlib.sha256(exported.body).hexdigest()}


def _no_number(body: bytes) -> None:
    text = body.decode()
    for number in NUMBERS:
        assert number not in text and hyphenated(number) not in text


# --- the access history -----------------------------------------------------------


def test_access_report_counts_the_mus_reveal_export_and_registrations(
    users: dict[str, Api], activity: dict[str, Any],
) -> None:
    sa, mu = users["SA"], users["MU"]
    r = sa.get("/reports/access", query=_period(activity["start"]))
    assert r.status == 200, r.body
    _no_number(r.body)
    by_user = {u["user"]: u for u in r.json["users"]}
    counts = by_user[mu.username]["counts"]
    assert counts == {**counts, "reveal": 1, "export": 1, "register": 2, "denied": 1}
    assert by_user[mu.username]["roles"] == ["MU"]
    assert r.json["totals"]["reveal"] == 1 and r.json["totals"]["export"] == 1
    assert r.json["categories"] == list(reports.CATEGORIES)

    # The drill-down: the MU's own entries, newest first, with what and why.
    mine = sa.get("/reports/access", query={**_period(activity["start"]), "user": mu.username})
    assert mine.status == 200
    _no_number(mine.body)
    entries = mine.json["entries"]
    assert {e["actor"] for e in entries} == {mu.username}
    reveal = next(e for e in entries if e["action"] == "subject.reveal" and e["outcome"] == "ok")
    assert reveal["target"] == activity["subjects"][0]["id"]
    assert reveal["purpose"] == "payment_record"
    export = next(e for e in entries if e["action"] == "subject.export")
    assert export["detail"]["rows"] == 1
    assert export["detail"]["sha256"] == activity["export_sha256"]
    assert [e["seq"] for e in entries] == sorted((e["seq"] for e in entries), reverse=True)


def test_access_report_refuses_a_period_that_ends_before_it_starts(
    users: dict[str, Api],
) -> None:
    r = users["SA"].get("/reports/access", query={"since": "2026-05-02T00:00:00+09:00",
                                                   "until": "2026-05-01T00:00:00+09:00"})
    assert r.status == 400 and r.error_code == "bad_request"
    assert "期間" in r.json["error"]["message"]
    bad = users["SA"].get("/reports/access", query={"since": "last tuesday"})
    assert bad.status == 400 and bad.json["error"]["detail"]["field"] == "since"
    number = users["SA"].get("/reports/access", query={"user": NUMBERS[3]})
    assert number.status == 400 and NUMBERS[3] not in number.body.decode()


def test_the_report_itself_is_audited(users: dict[str, Api]) -> None:
    sa = users["SA"]
    assert sa.get("/reports/ledger").status == 200
    seen = sa.get("/audit", query={"actor": sa.username, "action": "report.ledger", "limit": 1})
    assert seen.json["entries"][0]["action"] == "report.ledger"
    assert seen.json["entries"][0]["detail"]["since"]


# --- the handling-status ledger ------------------------------------------------------


def test_ledger_lists_the_files_with_counts_and_who_has_access(
    users: dict[str, Api], activity: dict[str, Any],
) -> None:
    for role in ("SA", "MA"):
        r = users[role].get("/reports/ledger", query=_period(activity["start"]))
        assert r.status == 200, r.body
        _no_number(r.body)
        for subject in activity["subjects"]:
            assert subject["name"] not in r.body.decode()
        files = {f["file"]: f for f in r.json["files"]}
        assert list(files) == ["employee", "dependent", "payee", "documents"]
        payees = files["payee"]
        assert payees["held"] >= 2
        assert any(p["purpose"] == "payment_record" and p["count"] >= 2
                   for p in payees["purposes"])
        assert payees["reveals"] == 1
        assert r.json["exports_total"] == {"count": 1, "rows": 1}
        assert r.json["exports"] == [{"action": "subject.export", "purpose": "payment_record",
                                      "count": 1, "rows": 1}]
        access = {a["username"]: a for a in r.json["access"]}
        assert access[users["MU"].username]["role"] == "MU"
        assert access[users["MA"].username]["role"] == "MA"
        assert users["SA"].username not in access and users["DA"].username not in access
        storage = r.json["storage"]
        assert storage["cipher"] == "AES-256-GCM" and storage["keys_apart"] is True
        assert storage["seal_mode"] == "host" and storage["keyring_versions"]


# --- the audit chain, verified inside the vault ----------------------------------------


def test_audit_verify_says_the_chain_is_intact(users: dict[str, Api]) -> None:
    sa = users["SA"]
    r = sa.post("/audit/verify")
    assert r.status == 200, r.body
    result = r.json
    assert result["ok"] is True and result["problem"] == "ok"
    assert result["entries"] == result["last_seq"] > 0
    assert result["first_bad_seq"] is None
    # The same signing key as in an exported bundle, which verifies offline.
    bundle = sa.get("/audit/export")
    offline = audit.verify_bundle(bundle.body)
    assert offline.ok
    assert offline.public_key_fingerprints == [result["public_key_fingerprint"]]


# --- the appliance ----------------------------------------------------------------------


def test_appliance_status_has_sane_numbers(users: dict[str, Api]) -> None:
    r = users["DA"].get("/appliance")
    assert r.status == 200, r.body
    s = r.json
    assert s["version"] == __version__ and s["appliance"] == "kura-test-shared"
    assert s["sealed"] is False and s["seal_mode"] == "host"
    assert s["active_key_version"] in s["keyring_versions"]
    assert 1 << 20 < s["database_size"] < 1 << 34
    keys = next(x for x in s["storage"] if x["name"] == "keys")
    assert keys["path"].endswith("/keys")
    assert 0 < keys["free"] <= keys["total"]
    data = next(x for x in s["storage"] if x["name"] == "data")
    assert data["free"] is None or 0 < data["free"] <= data["total"]
    roles = {u["role"]: u for u in s["users"]}
    assert set(roles) >= {"MU", "MA", "SA", "DA"}
    assert s["users_total"] >= 4 and all(u["enabled"] <= u["total"] for u in s["users"])
    assert s["sessions_open"] >= 1  # at least the DA's own
    assert s["audit_entries"] > 0
    assert s["audit_key_fingerprint"].startswith("sha256:")
    _no_number(r.body)


# --- the pure core --------------------------------------------------------------------------


def test_summarise_access_folds_actions_into_columns() -> None:
    rows = [
        {"actor": "mu", "role": "MU", "action": "subject.reveal", "outcome": "ok", "n": 3},
        {"actor": "mu", "role": "MU", "action": "subject.reveal", "outcome": "denied", "n": 1},
        {"actor": "mu", "role": "MU", "action": "export.download", "outcome": "ok", "n": 2},
        {"actor": "mu", "role": "MU", "action": "subject.export", "outcome": "ok", "n": 1},
        {"actor": "mu", "role": "MU", "action": "subject.list", "outcome": "ok", "n": 7},
        {"actor": "ma", "role": "MA", "action": "login", "outcome": "ok", "n": 1},
        {"actor": "ma", "role": "MA", "action": "request.approve", "outcome": "error", "n": 1},
        {"actor": "-", "role": "", "action": "login", "outcome": "denied", "n": 4},
    ]
    summary = reports.summarise_access(rows)
    users = {u["user"]: u for u in summary["users"]}
    assert [u["user"] for u in summary["users"]] == ["-", "ma", "mu"]
    assert users["mu"]["counts"] == {"reveal": 3, "export": 3, "register": 0, "import": 0,
                                     "disposal": 0, "login": 0, "denied": 1}
    assert users["mu"]["total"] == 14
    assert users["ma"]["counts"]["register"] == 0  # an error is no registration
    assert users["-"]["roles"] == [] and users["-"]["counts"]["denied"] == 4
    assert summary["totals"]["denied"] == 5 and summary["totals"]["all"] == 20


def test_due_counts_follow_the_disposal_rules() -> None:
    today = date(2026, 6, 1)
    groups = [
        # end of contract 2019-05-31 + 7 years: due 2026-05-31
        reports.RetentionGroup("payee", "contract", date(2019, 5, 31), None, None, 2),
        # 2019-06-02 + 7 years: due tomorrow, the next date
        reports.RetentionGroup("payee", "contract", date(2019, 6, 2), None, None, 1),
        # employment ended 2018: 11 January 2019 + 7 years = 2026-01-11, due
        reports.RetentionGroup("employee", "employment", date(2018, 12, 31), None, None, 1),
        # a dependent goes with its employee when that comes first
        reports.RetentionGroup("dependent", "employment", None, "employment",
                               date(2018, 3, 1), 3),
        reports.RetentionGroup("dependent", "employment", date(2025, 1, 1), None, None, 1),
    ]
    due = reports.due_counts(groups, DEFAULT_RULES, today)
    assert due["payee"] == {"due": 2, "next_due": date(2026, 6, 2)}
    assert due["employee"]["due"] == 1
    assert due["dependent"] == {"due": 3, "next_due": date(2033, 1, 11)}


def test_periods_default_to_this_month_in_japan() -> None:
    now = datetime(2026, 4, 30, 16, 0, tzinfo=UTC)  # 1 May, 01:00 in Tokyo
    since, until = reports.resolve_period(None, None, now)
    assert since == datetime(2026, 4, 30, 15, 0, tzinfo=UTC)  # 1 May 00:00 in Tokyo
    assert until == now
    with pytest.raises(BadRequest):
        reports.resolve_period(now, now, now)


def test_actions_have_labels_in_both_languages_and_unknown_ones_show_their_name() -> None:
    assert reports.action_label("subject.reveal", "ja") == "個人番号の表示"
    assert reports.action_label("subject.reveal", "en") == "Number revealed"
    assert reports.action_label("login", "ja") == "ログイン"
    assert reports.action_label("frobnicate.now", "ja") == "frobnicate.now"
    for ja, en in reports.ACTION_LABELS.values():
        assert ja and en and ja != en


def test_every_message_of_the_reports_and_admin_pages_is_in_japanese() -> None:
    catalog = i18n.read_catalog(WEBUI / "locale", "ja")
    missing = []
    options = {"extensions": "jinja2.ext.i18n", "trim_blocks": "True", "lstrip_blocks": "True"}
    for area in ("reports", "admin"):
        sources = [(p, babel_extract) for p in sorted((WEBUI / "templates" / area).glob("*.html"))]
        view = WEBUI.parent / "daemons" / "kura" / "console" / "web" / f"{area}.py"
        for path, method in [*sources, (view, "python")]:
            found = extract_from_file(method, str(path), keywords={"_": None, "N_": None},
                                      options=options if method != "python" else {})
            for _, message, _, _ in found:
                text = message if isinstance(message, str) else message[0]
                entry = catalog.get(text)
                if entry is None or not entry.string:
                    missing.append((path.name, text))
    assert missing == []


def _certificate(not_after: datetime) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kura.example")])
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(not_after - timedelta(days=400)).not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("kura.example")]), False)
        .sign(key, hashes.SHA256())
    )


def test_the_certificate_warns_under_thirty_days_and_when_expired() -> None:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    fine = certificate_facts(_certificate(now + timedelta(days=90, hours=1)), now)
    assert fine["state"] == "ok" and fine["days_left"] == 90
    assert fine["subject"] == "CN=kura.example" and fine["names"] == ["kura.example"]
    assert fine["self_signed"] and len(fine["fingerprint"].split(":")) == 32
    soon = certificate_facts(_certificate(now + timedelta(days=29, hours=23)), now)
    assert soon["state"] == "soon" and soon["days_left"] == 29
    gone = certificate_facts(_certificate(now - timedelta(hours=1)), now)
    assert gone["state"] == "expired" and gone["days_left"] < 0
