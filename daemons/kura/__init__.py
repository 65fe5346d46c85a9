"""Kura: a My Number vault appliance.

``kura.core`` is the pure core shared by every daemon (numbers, keys, audit
chain, accounts, roles); ``kura.vault`` is the only process that sees a
plaintext number; ``kura.console`` serves the web console and the JSON API.
"""

__version__ = "0.1.0"
