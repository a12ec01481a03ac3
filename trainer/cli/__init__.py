"""The `trainer` command: thin Typer wrappers over the layers below."""
