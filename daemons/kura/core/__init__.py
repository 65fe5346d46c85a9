"""The pure core: values in, values or decisions out. No sockets, files or SQL here."""
