"""kura-vault: the only process that sees plaintext numbers; keys, seal, storage and audit."""
