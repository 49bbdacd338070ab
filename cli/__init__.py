"""The `reg` command line: a thin typer layer over registry, trainer and server."""
