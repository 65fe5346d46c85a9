"""kura-agent: the reference agent for clerk PCs and business servers.

It verifies signed policy bundles (``kura.core.bundle``), enforces the last
good one with one nftables table (``rules``, ``nft``), switches USB mass
storage through usbguard (``usb``), reports posture (``posture``) and talks to
kura-policy (``enrol``, ``client``). It ships alone on endpoints: it imports
only the standard library, cryptography, aiohttp, pyudev, nftables,
``kura.core.bundle`` and itself.
"""
