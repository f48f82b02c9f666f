"""Data: task registry, readers, source proxies and the Grain input pipeline."""
