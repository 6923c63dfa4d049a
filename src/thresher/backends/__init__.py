"""Backends: how a forward pass is computed (`hf`: transformers)."""
