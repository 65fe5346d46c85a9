"""Every text the wizard shows, in Japanese and English, by a stable id.

The id is also the tag printed at the start of the line (``[network.mode]``)
so that a program on the serial console can wait for a prompt; ids never
change once published (tests and the image's QEMU tests rely on them).
"""

from __future__ import annotations

from typing import Literal

Lang = Literal["ja", "en"]

# id: (日本語, English)
MESSAGES: dict[str, tuple[str, str]] = {
    # --- language ------------------------------------------------------------
    "language": ("言語を選んでください / Language", "Language / 言語"),
    "language.ja": ("日本語", "日本語 (Japanese)"),
    "language.en": ("English", "English"),
    "language.vt": (
        "この画面では日本語を表示できません。日本語はシリアルコンソールで使えます。",
        "This screen cannot show Japanese; Japanese is available on the serial console.",
    ),
    "choice.invalid": (
        "1〜{count} の番号を入力してください。",
        "Enter a number from 1 to {count}.",
    ),
    "yes": ("あり", "yes"),
    "no": ("なし", "no"),
    # --- steps -----------------------------------------------------------------
    "step": ("ステップ {number}/{total}: {name}", "Step {number}/{total}: {name}"),
    "step.network": ("ネットワーク", "network"),
    "step.hostname": ("ホスト名", "host name"),
    "step.time": ("タイムゾーンと NTP", "time zone and NTP"),
    "step.role": ("役割", "role"),
    "step.tls": ("TLS 証明書", "TLS certificate"),
    "step.database": ("データベース", "database"),
    "step.seal": ("ルート鍵の封印", "sealing the root key"),
    "step.vault": ("保管庫の起動", "starting the vault"),
    "step.admin": ("最初のアプライアンス管理者", "the first Appliance Admin"),
    "step.finish": ("完了", "finishing"),
    # --- network ---------------------------------------------------------------
    "network.link": (
        "{number}: {name}  MAC {mac}  リンク {carrier}  アドレス {addresses}",
        "{number}: {name}  MAC {mac}  carrier {carrier}  addresses {addresses}",
    ),
    "network.interface": (
        "使うインターフェース（番号または名前）",
        "Interface to use (number or name)",
    ),
    "network.no_such_link": (
        "{name} というインターフェースはありません。",
        "There is no interface {name}.",
    ),
    "network.mode": ("アドレスの設定方法", "How to get an address"),
    "network.dhcp": ("DHCP", "DHCP"),
    "network.static": ("固定アドレス", "static address"),
    "network.address": (
        "アドレス/プレフィックス（例 192.0.2.10/24）",
        "Address/prefix (e.g. 192.0.2.10/24)",
    ),
    "network.gateway": ("デフォルトゲートウェイ", "Default gateway"),
    "network.dns": ("DNS サーバー（空白区切り）", "DNS servers (separated by spaces)"),
    "network.applying": (
        "{interface} に {mode} を設定して確認しています…",
        "Applying {mode} on {interface} and checking it…",
    ),
    "network.works": (
        "ネットワークは機能しています（アドレス {address}）。",
        "The network works (address {address}).",
    ),
    "network.confirm": (
        "この設定を保持しますか？ {seconds} 秒以内に yes と入力してください。"
        "入力がなければ元に戻します",
        "Keep this setting? Type yes within {seconds} seconds, or it is reverted",
    ),
    "network.timeout": ("時間内に確認がありませんでした。", "No confirmation in time."),
    "network.reverted": (
        "ネットワーク設定を元に戻しました。もう一度設定してください。",
        "The network setting was reverted. Please set it again.",
    ),
    # --- host name, time, role -------------------------------------------------------
    "hostname": ("ホスト名", "Host name"),
    "time.zone": ("タイムゾーン", "Time zone"),
    "time.ntp": (
        "NTP サーバー（空白区切り、空なら systemd の既定）",
        "NTP servers (separated by spaces; empty: systemd's defaults)",
    ),
    "role": ("この装置の役割", "This appliance's role"),
    "role.single": ("単体", "single"),
    "role.primary": ("プライマリ", "primary"),
    "role.standby": ("スタンバイ", "standby"),
    "role.witness": ("ウィットネス", "witness"),
    "role.skip": ("役割 {role} では不要なため省略します。", "Not needed for role {role}: skipped."),
    # --- the HA pair (docs/ha.md, "Setting up a pair") ---------------------------------
    "ha.code": (
        "ウィットネスの登録コード（kura witness enrol-code、KW1-…）",
        "The witness's enrol code (kura witness enrol-code, KW1-…)",
    ),
    "ha.enrolment": (
        "このノードの登録ファイル（kura witness enrol が作成）の内容を貼り付け、最後に空行を"
        "入力してください",
        "Paste this node's enrolment file (made by kura witness enrol), then an empty line",
    ),
    "ha.vip": (
        "浮動アドレス（クライアントが使う仮想 IP、接頭辞長付き、例 192.0.2.10/24）",
        "The floating address (the virtual IP clients use, with its prefix, e.g. 192.0.2.10/24)",
    ),
    "ha.interface": (
        "浮動アドレスを置くインターフェース", "The link that carries the floating address"
    ),
    "ha.enrolled": (
        "ノード {node} として、モニター {monitor} の CA を確認しました。",
        "Node {node}: the CA of the monitor at {monitor} matches the enrol code.",
    ),
    "ha.node_working": (
        "pg_auto_failover のノードを作成しています（{role}）…",
        "Making this node of pg_auto_failover's formation ({role})…",
    ),
    "ha.pairing_wait": (
        "ルート鍵はプライマリからペアリングで受け取ります。プライマリのコンソールの"
        "「待機系のペアリング」で、アドレス {address} と下のコードを入力してください"
        "（申し出 {fingerprint}、{until} まで有効）。",
        "The root key comes from the primary by pairing. On the primary's console, open"
        " Pair a standby and type the address {address} and the code below"
        " (offer {fingerprint}, valid until {until}).",
    ),
    "ha.pairing_code": ("ペアリングコード", "Pairing code"),
    "ha.paired": (
        "プライマリ {primary} とペアリングしました。ルート鍵を封印しました。",
        "Paired with the primary {primary}: the root key is sealed.",
    ),
    "ha.pairing_again": (
        "申し出の有効期限が切れました。新しいコードを表示します。",
        "The offer ran out: here is a new code.",
    ),
    "witness.address": (
        "データノードがこのウィットネスに接続するアドレス",
        "The address the data nodes reach this witness at",
    ),
    "witness.working": (
        "ウィットネス（CA とモニター）を {address} に作成しています…",
        "Making the witness (CA and monitor) at {address}…",
    ),
    "witness.code": ("登録コード: {code}", "Enrol code: {code}"),
    "status.witness": (
        "ウィットネス（pg_auto_failover のモニター）。データノードの登録コード: {code}",
        "Witness (pg_auto_failover's monitor). The data nodes' enrol code: {code}",
    ),
    # --- TLS --------------------------------------------------------------------------
    "tls.mode": ("Web コンソールの TLS 証明書", "The web console's TLS certificate"),
    "tls.self_signed": ("この装置で作成（自己署名）", "make one here (self-signed)"),
    "tls.import": ("PEM を貼り付けて取り込む", "import (paste PEM)"),
    "tls.cert": (
        "証明書（PEM、中間証明書を含めて可）を貼り付け、最後に空行を入力してください",
        "Paste the certificate (PEM, chain allowed), then an empty line",
    ),
    "tls.key": (
        "秘密鍵（PEM、パスフレーズなし）を貼り付け、最後に空行を入力してください",
        "Paste the private key (PEM, no passphrase), then an empty line",
    ),
    "tls.fingerprint": (
        "証明書の SHA-256 フィンガープリント: {fingerprint}",
        "Certificate SHA-256 fingerprint: {fingerprint}",
    ),
    # --- database ----------------------------------------------------------------------
    "database.working": ("PostgreSQL を準備しています…", "Preparing PostgreSQL…"),
    # --- seal ------------------------------------------------------------------------------
    "seal.mode": ("ルート鍵の封印方式", "How to seal the root key"),
    "seal.tpm": (
        "TPM（自動で解錠、復旧用シェア付き）",
        "TPM (opens by itself; with recovery shares)",
    ),
    "seal.custodian": (
        "鍵管理者のシェア（起動のたびに入力）",
        "custodian shares (typed in after each boot)",
    ),
    "seal.no_tpm": (
        "TPM が見つからないため、鍵管理者のシェアで封印します。",
        "No TPM was found: the root key is sealed to custodian shares.",
    ),
    "seal.count": ("作成するシェアの数 N", "Number of shares to make (N)"),
    "seal.threshold": ("解錠に必要なシェアの数 M", "Shares needed to unseal (M)"),
    "seal.working": ("ルート鍵を作成して封印しています…", "Making and sealing the root key…"),
    "seal.shares_custodian": (
        "これから {n} 個のシェアを1つずつ表示します。起動のたびに、このうち {m} "
        "個で保管庫を解錠します。表示は今回限りです。それぞれ書き留めてください。",
        "{n} shares follow, one at a time. After each boot, any {m} of them unseal the vault. "
        "They are shown only now: write each one down.",
    ),
    "seal.shares_tpm": (
        "これから {n} 個の復旧用シェアを1つずつ表示します。TPM が使えなくなったとき、このうち {m} "
        "個で鍵を復旧します。表示は今回限りです。それぞれ書き留めてください。",
        "{n} recovery shares follow, one at a time. If the TPM is lost, any {m} of them recover "
        "the key. They are shown only now: write each one down.",
    ),
    "seal.share.confirm": (
        "シェア {number} を書き留めたら yes と入力してください",
        "Type yes once share {number} is written down",
    ),
    "seal.share.again": ("シェア {number} をもう一度表示します。", "Share {number} again:"),
    "seal.shares_done": (
        "すべてのシェアを確認しました（解錠には {m} 個必要）。",
        "All shares confirmed ({m} unseal).",
    ),
    "seal.shares_console": (
        "{n} 個のシェアをコンソール（/dev/console）にだけ表示しました。"
        "ジャーナルには記録していません。",
        "{n} shares were printed on the console (/dev/console) only, not in the journal.",
    ),
    "seal.unconfirmed": (
        "封印は作成済みですが、シェアを書き留めた確認がありません。"
        "そのシェアは二度と表示できません。",
        "A seal exists, but nobody confirmed that its shares were written down. Those shares "
        "cannot be shown again.",
    ),
    "seal.existing": ("どうしますか", "What now"),
    "seal.remake": ("封印を作り直す（新しい鍵とシェア）", "make a new seal (new key, new shares)"),
    "seal.keep": (
        "今の封印を使う（シェアは書き留めてある）",
        "keep this seal (the shares were written down)",
    ),
    "seal.forgotten": ("以前の封印を消去しました。", "The previous seal was erased."),
    # --- vault -------------------------------------------------------------------------------
    "vault.starting": ("保管庫（kura-vault）を起動しています…", "Starting the vault (kura-vault)…"),
    "vault.open": ("保管庫は解錠されています。", "The vault is open."),
    "vault.need_shares": (
        "保管庫は封印されています。鍵管理者のシェアを {m} 個入力してください。",
        "The vault is sealed: enter {m} custodian shares.",
    ),
    "vault.share": ("シェア（単語を空白区切りで）", "Share (its words, separated by spaces)"),
    "vault.share_taken": ("受け付けました（{have}/{m}）。", "Accepted ({have}/{m})."),
    # --- first DA ------------------------------------------------------------------------------
    "admin.username": (
        "最初のアプライアンス管理者（DA）のユーザー名",
        "The first Appliance Admin (DA)'s user name",
    ),
    "admin.password": (
        "パスワード（12文字以上、3種類以上の文字）",
        "Password (12 or more characters, 3 kinds)",
    ),
    "admin.password.again": ("確認のためもう一度", "The same password again"),
    "admin.password.mismatch": ("パスワードが一致しません。", "The passwords differ."),
    "admin.made": (
        "アプライアンス管理者 {username} を作成しました。"
        "最初のログインでパスワードの変更を求められます。",
        "Appliance Admin {username} created; the password must be changed at first sign-in.",
    ),
    "admin.exists": ("アカウントは既に存在します。", "Accounts exist already."),
    "finish.done": ("初期設定が完了しました。", "Setup is complete."),
    # --- running -------------------------------------------------------------------------------
    "setup.busy": (
        "初期設定は {where} で実行中です。この端末は待機します。",
        "Setup is in progress on {where}. This terminal waits.",
    ),
    "setup.failed": ("このステップは完了していません。", "This step is not done."),
    "setup.retry": ("Enter でもう一度試します", "Press Enter to try again"),
    "not_appliance": (
        "この機械は Kura アプライアンスではありません（/usr/share/kura/appliance がない）。"
        "テストでは --root DIR を使ってください。",
        "This machine is not a Kura appliance (no /usr/share/kura/appliance); tests use --root "
        "DIR.",
    ),
    "internal": ("内部エラー: {what}", "Internal error: {what}"),
    # --- unattended ----------------------------------------------------------------------------
    "auto.none": (
        "応答ファイルがありません。コンソールで対話式に設定してください。",
        "No answers file: set the appliance up on the console.",
    ),
    "auto.found": ("応答ファイル: {where}", "Answers file: {where}"),
    "answers.bad": (
        "応答ファイルの {field} に誤りがあります: {reason}",
        "Answers file, {field}: {reason}",
    ),
    "answers.fallback": (
        "自動設定は行いません。コンソールで対話式に設定してください。",
        "Nothing was set up automatically: set the appliance up on the console.",
    ),
    "auto.failed": (
        "自動設定が途中で止まりました。コンソールで続きから設定できます。",
        "Unattended setup stopped; continue it on the console.",
    ),
    "auto.done": ("自動設定が完了しました。", "Unattended setup is complete."),
    "auto.already": ("初期設定は完了しています。", "Setup was done already."),
    # --- status screen ----------------------------------------------------------------------------
    "status.title": ("Kura アプライアンス {name}", "Kura appliance {name}"),
    "status.url": ("Web コンソール: {url}", "Web console: {url}"),
    "status.fingerprint": ("証明書 SHA-256: {fingerprint}", "Certificate SHA-256: {fingerprint}"),
    "status.vault.open": ("保管庫: 解錠済み", "Vault: open"),
    "status.vault.sealed": (
        "保管庫: 封印中（シェア {have}/{m}）",
        "Vault: sealed (shares {have}/{m})",
    ),
    "status.vault.down": ("保管庫: 応答なし", "Vault: not answering"),
    "menu": ("メニュー", "Menu"),
    "menu.refresh": ("再表示", "refresh"),
    "menu.network": ("ネットワーク表示", "show network"),
    "menu.unseal": ("シェアを入力して解錠", "unseal with shares"),
    "menu.reboot": ("再起動", "reboot"),
    "menu.poweroff": ("電源を切る", "shut down"),
    "menu.reset": ("工場出荷状態に戻す", "factory reset"),
    "menu.language": ("言語 / Language", "language / 言語"),
    "menu.sure": ("本当に実行しますか（yes/no）", "Really do it (yes/no)"),
    "reset.warning": (
        "工場出荷状態に戻すと、鍵・データベース・設定がすべて消去され、元に戻せません。",
        "A factory reset erases the keys, the database and the settings, for good.",
    ),
    "reset.username": (
        "アプライアンス管理者（DA）のユーザー名",
        "An Appliance Admin (DA)'s user name",
    ),
    "reset.password": ("パスワード", "Password"),
    "reset.totp": ("認証アプリの確認コード", "Code from the authenticator app"),
    "reset.confirm": ("消去するには {word} と入力してください", "Type {word} to erase everything"),
    "reset.cancelled": ("中止しました。", "Cancelled."),
    "reset.working": ("消去しています…", "Erasing…"),
}


def text(msg_id: str, lang: Lang, **values: object) -> str:
    ja, en = MESSAGES[msg_id]
    return (ja if lang == "ja" else en).format(**values)


def both(msg_id: str, **values: object) -> tuple[str, str]:
    ja, en = MESSAGES[msg_id]
    return ja.format(**values), en.format(**values)
