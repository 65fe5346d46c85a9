"""The errors Kura reports to people, each with a stable code and a message in
Japanese and English. The vault raises them; the edges (JSON API, CLI) turn
them into an HTTP status or an exit code. No message ever carries a number."""

from __future__ import annotations

from typing import Any, ClassVar


class KuraError(Exception):
    """Base of every error a user may see."""

    code: ClassVar[str] = "internal"
    status: ClassVar[int] = 500
    ja: ClassVar[str] = "内部エラーが発生しました。"
    en: ClassVar[str] = "An internal error occurred."

    def __init__(self, en: str | None = None, ja: str | None = None, **detail: Any) -> None:
        self.message_en = en or self.en
        self.message_ja = ja or self.ja
        self.detail = detail
        super().__init__(self.message_en)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "code": self.code,
            "message": self.message_ja,
            "message_en": self.message_en,
        }
        if self.detail:
            body["detail"] = self.detail
        return body


class BadRequest(KuraError):
    """The request is malformed: not JSON, wrong types, unknown fields."""

    code = "bad_request"
    status = 400
    ja = "リクエストの形式が正しくありません。"
    en = "The request is malformed."


class InvalidNumber(KuraError):
    """A My Number or corporate number failed validation."""

    code = "invalid_number"
    status = 422
    ja = "番号が正しくありません。"
    en = "The number is not valid."


class PayloadTooLarge(KuraError):
    """The request body is over the size limit."""

    code = "payload_too_large"
    status = 413
    ja = "リクエストが大きすぎます。"
    en = "The request body is too large."


class NotAuthenticated(KuraError):
    """No valid session: missing, expired, forged or signed out."""

    code = "not_authenticated"
    status = 401
    ja = "ログインしてください（セッションが無効または期限切れです）。"
    en = "Please sign in (the session is missing, invalid or expired)."


class LoginFailed(KuraError):
    """Wrong user name, password or second factor."""

    code = "login_failed"
    status = 401
    ja = "ユーザー名、パスワードまたは確認コードが正しくありません。"
    en = "The user name, password or verification code is wrong."


class AccountLocked(KuraError):
    """Too many failed sign-ins: the account is locked for a while."""

    code = "account_locked"
    status = 423
    ja = "ログインの失敗が続いたため、アカウントは一時的にロックされています。"
    en = "The account is locked for a while after repeated failed sign-ins."


class PasswordRejected(KuraError):
    """A new password does not meet the security policy."""

    code = "password_rejected"
    status = 422
    ja = "パスワードがセキュリティポリシーを満たしていません。"
    en = "The password does not meet the security policy."


class PermissionDenied(KuraError):
    """The caller's role may not do this."""

    code = "permission_denied"
    status = 403
    ja = "この操作を行う権限がありません。"
    en = "Your role is not allowed to do this."


class TerminalNotEnrolled(PermissionDenied):
    """The security policy lets MU and MA work only from an enrolled, compliant
    clerk PC (``require_enrolled_terminal``), and this browser is not on one,
    or not on the one its session signed in from."""

    code = "terminal_not_enrolled"
    ja = (
        "この端末からは利用できません。マイナンバー利用者・管理者は、登録済みで"
        "ポリシーに準拠している事務端末からのみ利用できます。"
    )
    en = (
        "Not from this terminal: MyNumber Users and Admins work only from an enrolled "
        "clerk PC that meets its policy."
    )


class PurposeRequired(KuraError):
    """Reveal and export need a declared purpose that the subject allows."""

    code = "purpose_required"
    status = 422
    ja = "利用目的を指定してください（この対象者に認められた目的のみ）。"
    en = "Declare a purpose that this subject's numbers may be used for."


class ActionRequired(KuraError):
    """The session must first change its password or enrol a second factor."""

    code = "action_required"
    status = 403
    ja = "先にパスワードの変更または二要素認証の設定が必要です。"
    en = "Change your password or set up the second factor first."


class NotFound(KuraError):
    """No such record."""

    code = "not_found"
    status = 404
    ja = "該当するデータがありません。"
    en = "No such record."


class Conflict(KuraError):
    """The request conflicts with stored data."""

    code = "conflict"
    status = 409
    ja = "既存のデータと矛盾します。"
    en = "The request conflicts with existing data."


class DuplicateNumber(Conflict):
    """The number is already registered for a different person."""

    code = "duplicate_number"
    ja = "この番号は別の人に登録済みです。"
    en = "This number is already registered for a different person."


class VaultSealed(KuraError):
    """The vault has no root key in memory yet."""

    code = "sealed"
    status = 503
    ja = "保管庫は封印されています。鍵管理者による開封が必要です。"
    en = "The vault is sealed; custodians must unseal it."


class AuditIntegrity(KuraError):
    """The audit chain in the database no longer extends the head the vault
    trusts, or a sweep found it altered: the vault records the incident and
    stops until a security admin and an appliance admin acknowledge it."""

    code = "audit_integrity"
    status = 503
    ja = (
        "監査ログの完全性に問題が見つかったため、保管庫は停止しています"
        "（監査ログの完全性エラー状態）。セキュリティ管理者とアプライアンス管理者の"
        "確認が必要です。"
    )
    en = (
        "The vault has stopped: the audit log failed its integrity check "
        "(audit integrity state). A security admin and an appliance admin must "
        "acknowledge the incident."
    )


class Standby(KuraError):
    """This appliance is the standby of an HA pair: its database follows the
    primary's and takes no writes, so the vault answers nothing but its
    status until it is promoted. Clerks use the pair's floating address,
    which always reaches the primary."""

    code = "standby"
    status = 503
    ja = (
        "このアプライアンスは待機系（スタンバイ）のため、操作を受け付けません。"
        "共有（フローティング）アドレスから稼働系に接続してください。"
    )
    en = (
        "This appliance is the standby of the pair and accepts no work. "
        "Use the pair's floating address, which reaches the primary."
    )


class UnsealFailed(KuraError):
    """A share or sealed key could not be used to unseal."""

    code = "unseal_failed"
    status = 422
    ja = "開封に失敗しました。シェアを確認してください。"
    en = "Unsealing failed; check the share."


class Unavailable(KuraError):
    """A back end (the vault, the database) cannot be reached."""

    code = "unavailable"
    status = 503
    ja = "サービスに接続できません。しばらくしてから再度お試しください。"
    en = "The service is unavailable; try again shortly."


class NotReplicated(Unavailable):
    """PostgreSQL committed a write locally but stopped waiting for the standby
    to confirm it (its synchronous-commit wait was cancelled). Such a write is
    never acknowledged: the pair may lose it in a failover."""

    code = "not_replicated"
    ja = ("書き込みを待機系が確認できませんでした。処理は完了していない可能性があります。"
          "内容を確かめてから、もう一度お試しください。")
    en = ("The standby did not confirm the write, so it may not have been saved. "
          "Check, then try again.")


class SwitchoverRefused(Conflict):
    """A planned switchover was not started: this node is not the primary, the
    pair is degraded (the standby may not hold every acknowledged write),
    kura-hasync does not answer, or the monitor refused. ``detail.reason``
    says which; nothing changed."""

    code = "switchover_refused"
    ja = "切り替えを開始できませんでした。"
    en = "The switchover was not started."


class DecryptionFailed(KuraError):
    """A ciphertext or wrapped key did not authenticate: wrong key, or the
    stored bytes were altered or moved to another record, field or version.
    The message never carries plaintext or key material."""

    code = "decryption_failed"
    status = 500
    ja = "データを復号できませんでした（鍵の不一致、またはデータの改ざん・移動の可能性）。"
    en = "Data could not be decrypted: wrong key, or the data was altered or moved."


class SealDamaged(KuraError):
    """The seal files on the kura-keys partition are missing, unreadable or
    inconsistent, so no seal mode can be used as it stands."""

    code = "seal_damaged"
    status = 500
    ja = "鍵パーティションの封印ファイルが見つからないか、破損しています。"
    en = "The seal files on the kura-keys partition are missing or damaged."


class CommandFailed(KuraError):
    """A helper program (systemd-creds and the like) failed or is missing.
    The message names the program and its error output, never its input."""

    code = "command_failed"
    status = 500
    ja = "補助プログラムの実行に失敗しました。"
    en = "A helper program failed."


class AuditBundleMalformed(KuraError):
    """An audit export bundle cannot be read or parsed: not the bundle format,
    a line that is not canonical JSON, or a file cut short. ``detail`` names
    the line when there is one."""

    code = "audit_bundle_malformed"
    status = 422
    ja = "監査ログのバンドルの形式が正しくありません。"
    en = "The audit bundle is malformed."


class PairingCodeMismatch(KuraError):
    """The pairing code typed on the primary is not a code the standby can
    have shown: a digit was mistyped (its two check digits do not agree)."""

    code = "pairing_code_mismatch"
    status = 422
    ja = "ペアリングコードが一致しません。スタンバイ機の画面に表示されたコードを確認してください。"
    en = "The pairing code does not match: check the code shown on the standby's screen."


class PairingOfferExpired(KuraError):
    """The standby's pairing offer is past its expiry, or has already been
    used: the standby must make a new one."""

    code = "pairing_offer_expired"
    status = 410
    ja = "ペアリングの申し出は期限切れか使用済みです。スタンバイ機で新しく作成してください。"
    en = "The pairing offer has expired or was already used; make a new one on the standby."


class PairingEnvelopeRejected(KuraError):
    """The envelope does not open with this standby's pending offer: it was
    altered on the way, made for another standby or offer, or the code typed
    on the primary was not the one this standby showed."""

    code = "pairing_envelope_rejected"
    status = 422
    ja = (
        "ペアリングの封筒を開けられません（改ざん、別のスタンバイ機あて、"
        "またはプライマリ機で入力されたコードの誤りの可能性）。"
    )
    en = (
        "The pairing envelope does not open: it was altered, made for another "
        "standby, or the code typed on the primary was wrong."
    )


class PairingWrongRootKey(KuraError):
    """The key inside an envelope does not match the check value it carries:
    the primary sent a key that is not its root key."""

    code = "pairing_wrong_root_key"
    status = 422
    ja = "封筒内の鍵がプライマリ機の鍵の検証値と一致しません。"
    en = "The key in the envelope does not match the primary's check value."
