"""Built-in plugins: each module here with a ``setup(ctx)`` is loaded by default (see
plugins/README.md and bridge/plugins.py)."""
