"""kura-policy: the appliance daemon endpoint agents connect to (docs/agents.md).

It enrols agents, pushes signed policy bundles over an mTLS WebSocket, answers
the pull that is the fallback and passes heartbeats on. It holds no key on
disk and writes nothing itself: every decision and every audit entry is the
vault's, asked over its Unix socket.

- ``wire``: the messages and request bodies, checked (pure).
- ``identity``: agents' certificate checks, cached for at most a second (pure).
- ``certificate``: the in-memory TLS key, its CSR and the server's TLS context.
- ``server``: the aiohttp application, its routes and the push from the vault's watch.
- ``main``: start-up (wait for the vault, get a certificate, serve).
"""
