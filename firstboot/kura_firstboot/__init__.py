"""kura-firstboot: the appliance's first-boot wizard.

It runs on the console terminals (``kura-firstboot tty``) or unattended from
an answers file (``kura-firstboot auto``) and takes a fresh image to a
working appliance: network (systemd-networkd files, confirm-or-revert), host
name, time, role, TLS certificate, the PostgreSQL cluster, the sealed root
key, the vault and the first Appliance Admin (DA). Each step is idempotent
and recorded in a journal, so a power cut resumes at the first unfinished
step. Afterwards the terminals show the status screen.

Modules, by noun: :mod:`.messages` (every text, both languages),
:mod:`.answers` (the answers file), :mod:`.journal` (the steps and their
record), :mod:`.system` (the one way to the machine), :mod:`.terminal`
(line-based prompts with tags), :mod:`.network`, :mod:`.host`,
:mod:`.certificate`, :mod:`.database`, :mod:`.appliance` (kura.toml, vault),
:mod:`.wizard` (the steps), :mod:`.status` (the screen after set-up),
:mod:`.main` (the command line).
"""
