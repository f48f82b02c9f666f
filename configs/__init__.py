"""Run configurations: ``get_config(arg)`` files (big_vision style)."""
