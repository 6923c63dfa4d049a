"""Engines: where passes run. `local` loops over shards in one process."""
