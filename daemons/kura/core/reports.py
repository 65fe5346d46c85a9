"""Reports: what the audit log and the records say, folded into the tables a
Security Admin and a MyNumber Admin read and print. Pure: rows in, plain
values out; the vault's ``kura.vault.reports`` fetches the rows.

- the **access report** (アクセス履歴): per user, how many reveals,
  take-outs, registrations, imports, disposals, sign-ins and refusals in a
  period (``summarise_access``), from the audit log's counts per actor,
  action and outcome;
- the **handling-status ledger** (取扱状況): per file (employees, dependents,
  payees, documents) the records held, the purposes in use, reveals and
  disposals in the period, what is due for disposal, who has access and how
  the file is kept (``build_ledger``), as the regulator's guideline asks;
- **action labels**: the audit log's action names in Japanese and English
  (``action_label``); an action not in the table shows its raw name.

No report carries a My Number or a person's name: counts, codes of
purposes, user names of the staff, and the audit log's own fields (which
never hold a number; see ``kura.core.audit``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from kura.core.argschema import LIMIT, PAGE, TIME, obj
from kura.core.disposal import RetentionRule, subject_due
from kura.core.errors import BadRequest

TOKYO = ZoneInfo("Asia/Tokyo")

# --- the arguments of this area's vault operations, as JSON Schema ------------

SCHEMAS: dict[str, dict[str, Any]] = {
    "report.access": obj(
        {},
        {
            "since": TIME,
            "until": TIME,
            "user": {"type": "string", "maxLength": 64},
            "offset": PAGE,
            "limit": LIMIT,
        }
    ),
    "report.ledger": obj({}, {"since": TIME, "until": TIME}),
    "audit.verify": obj({}),
    "appliance.status": obj({}),
}

# --- action labels ------------------------------------------------------------

# action → (Japanese, English). Denials are recorded under the operation's
# name, so the session operations (whoami, change_password …) are here too.
ACTION_LABELS: dict[str, tuple[str, str]] = {
    "login": ("ログイン", "Sign-in"),
    "logout": ("ログアウト", "Sign-out"),
    "whoami": ("セッションの確認", "Session check"),
    "session.expired": ("セッションの期限切れ", "Session expired"),
    "status": ("状態の確認", "Status check"),
    "unseal": ("保管庫の開封操作", "Unseal attempt"),
    "vault.unseal": ("保管庫の開封", "Vault unsealed"),
    "vault.share": ("開封シェアの入力", "Unseal share entered"),
    "bootstrap_da": ("最初の管理者の作成", "First admin created"),
    "change_password": ("パスワードの変更", "Password change"),
    "user.password": ("パスワードの変更", "Password change"),
    "totp_begin": ("二要素認証の設定開始", "Second factor set-up started"),
    "user.totp_begin": ("二要素認証の設定開始", "Second factor set-up started"),
    "totp_confirm": ("二要素認証の登録", "Second factor enrolled"),
    "user.totp_enrol": ("二要素認証の登録", "Second factor enrolled"),
    "preferences.set": ("表示言語の変更", "Language changed"),
    "purposes": ("利用目的の参照", "Purposes viewed"),
    "user.create": ("ユーザーの作成", "User created"),
    "user.list": ("ユーザー一覧の参照", "Users listed"),
    "user.update": ("ユーザーの変更", "User changed"),
    "user.reset_password": ("パスワードのリセット", "Password reset"),
    "user.propose": ("アカウント変更の申請", "Account change proposed"),
    "user.approve": ("アカウント変更の承認", "Account change approved"),
    "user.reject": ("アカウント変更の却下", "Account change rejected"),
    "user.cancel": ("アカウント変更の取消し", "Account change cancelled"),
    "user.proposal_expire": ("アカウント変更申請の期限切れ", "Account change proposal expired"),
    "user.activate": ("アカウントの有効化", "Account activated"),
    "user.first_login": ("初回ログイン", "First sign-in"),
    "policy.get": ("セキュリティポリシーの参照", "Security policy viewed"),
    "policy.set": ("セキュリティポリシーの変更", "Security policy changed"),
    "policy.propose": ("セキュリティポリシーを弱める変更の申請", "Weaker security policy proposed"),
    "policy.pending": ("承認待ちのポリシー変更の参照", "Pending policy changes viewed"),
    "policy.approve": ("セキュリティポリシー変更の承認", "Security policy change approved"),
    "policy.reject": ("セキュリティポリシー変更の却下", "Security policy change rejected"),
    "policy.cancel": ("セキュリティポリシー変更の取消し", "Security policy change cancelled"),
    "audit.list": ("監査ログの検索", "Audit log searched"),
    "audit.export": ("監査ログのエクスポート", "Audit log exported"),
    "audit.verify": ("監査ログの検証", "Audit log verified"),
    "keys.rotate": ("鍵のローテーション", "Keys rotated"),
    "keys.rewrap": ("データ鍵の再暗号化", "Data keys rewrapped"),
    "subject.register": ("個人番号の登録", "Number registered"),
    "subject.lookup": ("対象者の照会", "Subject looked up"),
    "subject.list": ("対象者の検索", "Subjects searched"),
    "subject.get": ("対象者の参照", "Subject viewed"),
    "subject.reveal": ("個人番号の表示", "Number revealed"),
    "subject.import": ("CSVからの一括登録", "Bulk import"),
    "subject.export": ("個人番号の持出し", "Numbers exported (take-out)"),
    "subject.correct": ("登録内容の訂正", "Record corrected"),
    "report.access": ("アクセス履歴の参照", "Access report viewed"),
    "report.ledger": ("取扱状況台帳の参照", "Handling-status ledger viewed"),
    "appliance.status": ("アプライアンス状態の参照", "Appliance status viewed"),
    "request.create": ("登録依頼の作成", "Registration request created"),
    "request.list": ("登録依頼一覧の参照", "Registration requests listed"),
    "request.get": ("登録依頼の参照", "Registration request viewed"),
    "request.document": ("確認書類の参照", "Identity document viewed"),
    "request.approve": ("登録依頼の承認", "Registration request approved"),
    "request.reject": ("登録依頼の差戻し", "Registration request rejected"),
    "request.reissue": ("依頼リンクの再発行", "Request link reissued"),
    "request.cancel": ("登録依頼の取消し", "Registration request cancelled"),
    "request.open": ("本人による依頼リンクの表示", "Request link opened"),
    "request.submit": ("本人による提出", "Submitted by the person"),
    "export.prepare": ("持出しの準備", "Export prepared"),
    "export.list": ("持出し申請の参照", "Export requests listed"),
    "export.decide": ("持出しの承認・却下", "Export request decided"),
    "export.download": ("承認済み持出しのダウンロード", "Approved export downloaded"),
    "retention.list": ("保存期間ルールの参照", "Retention rules viewed"),
    "retention.set": ("保存期間ルールの変更", "Retention rule changed"),
    "disposal.due": ("廃棄対象の参照", "Due for disposal viewed"),
    "disposal.propose": ("廃棄の申請", "Disposal proposed"),
    "disposal.list": ("廃棄申請の参照", "Disposal batches viewed"),
    "disposal.decide": ("廃棄の承認・却下", "Disposal decided"),
    "disposal.execute": ("廃棄の実行", "Disposal carried out"),
    "disposal.records": ("廃棄記録の参照", "Disposal records viewed"),
}


def action_label(action: str, language: str) -> str:
    """The human name of an audit action; the raw name when it has none."""
    label = ACTION_LABELS.get(action)
    if label is None:
        return action
    return label[0] if language == "ja" else label[1]


# --- the access report ---------------------------------------------------------

CATEGORIES: tuple[str, ...] = (
    "reveal",
    "export",
    "register",
    "import",
    "disposal",
    "login",
    "denied",
)
"""The columns of the access report, in order."""

_CATEGORY_OF_ACTION: dict[str, str] = {
    "subject.reveal": "reveal",
    "subject.export": "export",
    "export.download": "export",
    "subject.register": "register",
    "request.approve": "register",
    "subject.import": "import",
    "disposal.propose": "disposal",
    "disposal.decide": "disposal",
    "disposal.execute": "disposal",
    "login": "login",
}

CATEGORY_ACTIONS: dict[str, tuple[str, ...]] = {
    category: tuple(a for a, c in _CATEGORY_OF_ACTION.items() if c == category)
    for category in CATEGORIES
    if category != "denied"
}
"""The actions each column counts (a refusal counts only as a denial)."""


def category_of(action: str, outcome: str) -> str | None:
    """The access report's column for one entry, or None if it has none."""
    if outcome == "denied":
        return "denied"
    if outcome != "ok":
        return None
    return _CATEGORY_OF_ACTION.get(action)


def _empty_counts() -> dict[str, int]:
    return dict.fromkeys(CATEGORIES, 0)


def summarise_access(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Fold the audit log's counts (rows of actor, role, action, outcome, n)
    into one row per user: the roles they acted in, a count per column, and
    the total of all their entries. Users are sorted by name; ``totals`` sums
    the columns over everyone."""
    users: dict[str, dict[str, Any]] = {}
    totals = _empty_counts()
    grand = 0
    for row in rows:
        actor, n = str(row["actor"]), int(row["n"])
        user = users.setdefault(
            actor, {"user": actor, "roles": [], "counts": _empty_counts(), "total": 0}
        )
        role = str(row.get("role") or "")
        if role and role not in user["roles"]:
            user["roles"].append(role)
        user["total"] += n
        grand += n
        category = category_of(str(row["action"]), str(row["outcome"]))
        if category is not None:
            user["counts"][category] += n
            totals[category] += n
    ordered = sorted(users.values(), key=lambda u: u["user"])
    for user in ordered:
        user["roles"].sort()
    return {"users": ordered, "totals": {**totals, "all": grand}}


# --- periods ---------------------------------------------------------------------


def month_start(now: datetime) -> datetime:
    """Midnight on the first of ``now``'s month, in Japan's time."""
    local = now.astimezone(TOKYO)
    return local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def resolve_period(
    since: datetime | None, until: datetime | None, now: datetime
) -> tuple[datetime, datetime]:
    """The period a report covers: ``since`` (default: the start of this
    month in Japan) up to ``until`` (default: now), ``since`` before ``until``."""
    start = since or month_start(now)
    end = until or now
    if start >= end:
        raise BadRequest(
            "the period's start must come before its end",
            "期間の開始日は終了日より前にしてください。",
            field="since",
        )
    return start.astimezone(UTC), end.astimezone(UTC)


# --- retention and the ledger ------------------------------------------------------

FILES: tuple[str, ...] = ("employee", "dependent", "payee")
"""The files (特定個人情報ファイル) of subjects; documents are the fourth."""


@dataclass(frozen=True)
class RetentionGroup:
    """Subjects of one file sharing a retention basis and event (and, for
    dependents, their employee's): they fall due on the same day."""

    kind: str
    basis: str
    event: date | None
    employee_basis: str | None
    employee_event: date | None
    count: int


def due_counts(
    groups: Iterable[RetentionGroup], rules: Mapping[str, RetentionRule], today: date
) -> dict[str, dict[str, Any]]:
    """Per file: how many records are due for disposal on ``today`` and the
    next day one falls due after it (the disposal rules of kura.core.disposal:
    a dependent goes with its employee when that comes first)."""
    out: dict[str, dict[str, Any]] = {kind: {"due": 0, "next_due": None} for kind in FILES}
    for group in groups:
        entry = out.setdefault(group.kind, {"due": 0, "next_due": None})
        found = subject_due(
            rules, group.basis, group.event, group.employee_basis, group.employee_event
        )
        if found is None:
            continue
        if found.due <= today:
            entry["due"] += group.count
        elif entry["next_due"] is None or found.due < entry["next_due"]:
            entry["next_due"] = found.due
    return out


STORAGE: dict[str, Any] = {
    "cipher": "AES-256-GCM",
    "per_subject_keys": True,
    "keys_apart": True,
    "blind_index": "HMAC-SHA256",
}
"""How every file is kept (kura.core.keys): each record under its own data
key, wrapped by a versioned key-encryption key that the sealed root key
opens; the keys live on their own partition and only in the vault's memory."""


def build_ledger(
    *,
    held: Mapping[str, int],
    purposes: Iterable[Mapping[str, Any]],
    retention: Iterable[RetentionGroup],
    rules: Mapping[str, RetentionRule],
    reveals: Iterable[Mapping[str, Any]],
    disposed: Iterable[Mapping[str, Any]],
    documents: Mapping[str, int],
    exports: Iterable[Mapping[str, Any]],
    accounts: Iterable[Mapping[str, Any]],
    today: date,
    account_changes: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The handling-status ledger (取扱状況).

    ``held``: records per file; ``purposes``: rows of kind, purpose, n;
    ``reveals``: rows of kind (None for a subject since disposed), n;
    ``disposed``: disposal records' rows of kind, n in the period;
    ``documents``: held (attached to subjects) and pending (on requests);
    ``exports``: rows of action, purpose, n, rows; ``accounts``: the enabled
    MU and MA accounts; ``account_changes``: the approved proposals about
    them (username, kind, role, proposer, approver, decided_at), oldest first,
    so the 取扱者 list names who proposed and who approved each account and
    each reset."""
    changes_of: dict[str, list[dict[str, Any]]] = {}
    for c in account_changes:
        changes_of.setdefault(str(c["username"]), []).append(
            {
                "kind": str(c["kind"]),
                "role": str(c["role"]),
                "proposer": str(c["proposer"]),
                "approver": str(c["approver"] or ""),
                "at": c.get("decided_at"),
            }
        )
    by_kind_purposes: dict[str, list[dict[str, Any]]] = {}
    for row in purposes:
        by_kind_purposes.setdefault(str(row["kind"]), []).append(
            {"purpose": str(row["purpose"]), "count": int(row["n"])}
        )
    revealed: dict[str | None, int] = {}
    for row in reveals:
        kind = row["kind"]
        revealed[kind] = revealed.get(kind, 0) + int(row["n"])
    gone: dict[str, int] = {}
    for row in disposed:
        gone[str(row["kind"])] = gone.get(str(row["kind"]), 0) + int(row["n"])
    due = due_counts(retention, rules, today)
    files: list[dict[str, Any]] = []
    for kind in FILES:
        files.append(
            {
                "file": kind,
                "held": int(held.get(kind, 0)),
                "purposes": sorted(
                    by_kind_purposes.get(kind, []), key=lambda p: (-p["count"], p["purpose"])
                ),
                "reveals": revealed.get(kind, 0),
                "disposed": gone.get(kind, 0),
                "due": due[kind]["due"],
                "next_due": due[kind]["next_due"].isoformat() if due[kind]["next_due"] else None,
            }
        )
    files.append(
        {
            "file": "documents",
            "held": int(documents.get("held", 0)),
            "pending": int(documents.get("pending", 0)),
            "purposes": [],
            "reveals": 0,
            "disposed": gone.get("documents", 0),
            "due": 0,
            "next_due": None,
        }
    )
    export_rows = [
        {
            "action": str(r["action"]),
            "purpose": str(r["purpose"] or ""),
            "count": int(r["n"]),
            "rows": int(r["rows"] or 0),
        }
        for r in exports
    ]
    return {
        "files": files,
        "reveals_of_disposed": revealed.get(None, 0),
        "exports": sorted(export_rows, key=lambda r: (r["purpose"], r["action"])),
        "exports_total": {
            "count": sum(r["count"] for r in export_rows),
            "rows": sum(r["rows"] for r in export_rows),
        },
        "access": [
            {
                "username": str(a["username"]),
                "display_name": str(a.get("display_name") or ""),
                "role": str(a["role"]),
                "mfa": bool(a.get("totp")),
                "last_login_at": a.get("last_login_at"),
                "changes": changes_of.get(str(a["username"]), []),
            }
            for a in accounts
        ],
        "storage": dict(STORAGE),
    }


def days_left(expires: datetime, now: datetime) -> int:
    """Whole days from ``now`` until ``expires`` (negative once past)."""
    return (expires - now) // timedelta(days=1)
