"""kura-console: the web console and the JSON API (/api/v1). It holds no keys;
every call goes to kura-vault over its Unix socket with the user's session."""
