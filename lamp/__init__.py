"""The `lamp` command: the composition root, the one module that knows every layer (see lamp/cli.py)."""
