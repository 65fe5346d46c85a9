"""Every vault operation is named once and the same everywhere: the role
table, the argument schemas and the dispatcher agree."""

from __future__ import annotations

from pathlib import Path

from kura import config
from kura.core import api, roles
from kura.vault.service import Vault
from kura.vault.store import Store


def test_dispatcher_schemas_and_roles_name_the_same_operations(tmp_path: Path) -> None:
    cfg = config.parse({"database": {"dsn": "dbname=unused"},
                        "vault": {"socket": str(tmp_path / "s"), "keys_dir": str(tmp_path)}})
    vault = Vault(cfg, Store(cfg.database.dsn))
    handled = set(vault.handlers)
    assert handled == set(api.ARGS)
    # bootstrap_da is the one operation outside the role table: it is allowed
    # only to the appliance's own administrators (peer uid), once.
    assert handled == roles.OPERATIONS | {"bootstrap_da"}
