"""The `specdecode` command (main.py) and its subcommands' bodies (generate.py, rag.py)."""
