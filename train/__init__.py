"""Command-line entry points (the only place with argument parsing)."""
