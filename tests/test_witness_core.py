"""The witness's enrol code and enrolment bundle (kura.core.witness): what a data node
is told at first boot, and what it refuses."""

from __future__ import annotations

import datetime
import json

import pytest

from kura.core import witness as w

NOW = datetime.datetime(2026, 12, 5, 8, 0, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def ca() -> w.Issued:
    return w.make_ca("test", NOW)


@pytest.fixture(scope="module")
def code(ca: w.Issued) -> w.EnrolCode:
    return w.EnrolCode("192.0.2.3", 5432, w.ca_pin(ca.cert_pem))


@pytest.mark.parametrize("address", ["192.0.2.3", "2001:db8::3", "witness.example.jp"])
def test_enrol_code_round_trips(ca: w.Issued, address: str) -> None:
    code = w.EnrolCode(address, 5433, w.ca_pin(ca.cert_pem))
    text = w.encode(code)
    assert text.startswith("KW1-")
    assert w.decode(text) == code
    # as a person may type it: lower case, spaces for hyphens, O for 0 and l for 1
    typed = text.lower().replace("-", " ").replace("0", "o").replace("1", "l")
    assert w.decode(typed) == code


def test_an_ipv4_code_is_short_enough_to_type(code: w.EnrolCode) -> None:
    assert len(w.encode(code)) <= 60


def test_every_single_typo_is_refused(code: w.EnrolCode) -> None:
    text = w.encode(code)
    for i, char in enumerate(text):
        if char == "-" or i < 3:
            continue
        for other in "0Z":
            if other == char:
                continue
            with pytest.raises(w.EnrolError, match="mistyped"):
                w.decode(text[:i] + other + text[i + 1:])


@pytest.mark.parametrize("bad", ["", "KW1", "KW1-UUUUU", "KW2-042C0", "hello world",
                                 "KW1-042C0-0020C"])
def test_garbage_is_refused_with_both_languages(bad: str) -> None:
    with pytest.raises(w.EnrolError) as caught:
        w.decode(bad)
    assert "enrol code" in caught.value.message_en
    assert "登録コード" in caught.value.message_ja


def test_a_dropped_character_is_refused(code: w.EnrolCode) -> None:
    text = w.encode(code).replace("-", "")
    with pytest.raises(w.EnrolError):
        w.decode(text[:10] + text[11:])


def test_bundle_checked_against_the_code(ca: w.Issued, code: w.EnrolCode) -> None:
    passwords = w.new_passwords()
    bundle = w.make_bundle(ca, code, "node-a", "192.0.2.11", passwords, NOW)
    text = bundle.to_json()
    read = w.read_bundle(text, code, NOW)
    assert (read.node, read.address, read.passwords) == ("node-a", "192.0.2.11", passwords)
    assert "PRIVATE" not in repr(read) and passwords["autoctl_node"] not in repr(read)


def test_a_bundle_from_another_witness_is_refused(ca: w.Issued, code: w.EnrolCode) -> None:
    """Pinning: a CA whose fingerprint differs from the code's is never trusted, even
    when the bundle is otherwise perfect and names the same monitor address."""
    other = w.make_ca("impostor", NOW)
    forged = w.make_bundle(other, code, "node-a", "192.0.2.11", w.new_passwords(), NOW)
    with pytest.raises(w.EnrolError, match="does not match the enrol code") as caught:
        w.read_bundle(forged.to_json(), code, NOW)
    assert "一致しません" in caught.value.message_ja


def test_a_changed_bundle_is_refused(ca: w.Issued, code: w.EnrolCode) -> None:
    bundle = json.loads(w.make_bundle(ca, code, "node-a", "192.0.2.11",
                                      w.new_passwords(), NOW).to_json())
    other = w.make_ca("impostor", NOW)
    # a node certificate from another CA slipped in beside the right CA
    bundle_cert = dict(bundle, cert=w.issue(other, "node-a", "192.0.2.11", NOW).cert_pem.decode())
    with pytest.raises(w.EnrolError, match="not signed by"):
        w.read_bundle(json.dumps(bundle_cert), code, NOW)
    moved = dict(bundle, monitor="192.0.2.99")
    with pytest.raises(w.EnrolError, match=r"names the monitor 192\.0\.2\.99"):
        w.read_bundle(json.dumps(moved), code, NOW)
    wrong_key = dict(bundle, key=w.issue(ca, "x", "192.0.2.12", NOW).key_pem.decode())
    with pytest.raises(w.EnrolError, match="key does not match"):
        w.read_bundle(json.dumps(wrong_key), code, NOW)
    no_password = dict(bundle, passwords={"autoctl_node": "x"})
    with pytest.raises(w.EnrolError, match="lacks passwords"):
        w.read_bundle(json.dumps(no_password), code, NOW)
    with pytest.raises(w.EnrolError, match="not one that kura witness enrol wrote"):
        w.read_bundle("{}", code, NOW)
    later = NOW + datetime.timedelta(days=w.CERT_DAYS + 1)
    with pytest.raises(w.EnrolError, match="not in force"):
        w.read_bundle(json.dumps(bundle), code, later)


def test_node_certificate_names_the_node_address(ca: w.Issued) -> None:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(w.issue(ca, "node-a", "192.0.2.11", NOW).cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["192.0.2.11"]


@pytest.mark.parametrize("name", ["Node-A", "", "a b", "-x", "x" * 64])
def test_bad_node_names_are_refused(name: str) -> None:
    with pytest.raises(w.EnrolError, match="not a node name"):
        w.check_node_name(name)


def test_pgpass_escapes_colons_and_backslashes() -> None:
    assert w.pgpass({"u": "a:b\\c"}) == "*:*:*:u:a\\:b\\\\c\n"


def test_monitor_uri_is_verify_full_against_the_ca(code: w.EnrolCode) -> None:
    uri = code.monitor_uri("/etc/kura/ha/ca.crt")
    assert uri == ("postgres://autoctl_node@192.0.2.3:5432/pg_auto_failover"
                   "?sslmode=verify-full&sslrootcert=/etc/kura/ha/ca.crt")


def test_secure_hba_removes_initdbs_trust_and_keeps_pg_autoctls_lines() -> None:
    from kura.core import formation

    initdb = ("# comment with trust\n"
              "local   all             all                                     trust\n"
              "host    all             all             127.0.0.1/32            trust\n"
              "host    all             all             ::1/128                 trust\n"
              "local   replication     all                                     trust\n"
              'hostssl "pg_auto_failover" "autoctl_node" 192.0.2.0/24 scram-sha-256 '
              "# Auto-generated by pg_auto_failover\n")
    secured = formation.secure_hba(initdb)
    rules = [line.split() for line in secured.splitlines() if not line.startswith("#")]
    assert not any(rule[-1] == "trust" for rule in rules)
    assert ["local", "all", "all", "peer"] in rules
    assert ["local", "replication", "all", "peer"] in rules
    assert not any("127.0.0.1/32" in rule for rule in rules)
    assert "# Auto-generated by pg_auto_failover" in secured
    assert formation.secure_hba(secured) == secured
