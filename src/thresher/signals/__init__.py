"""Signals: per-sample numbers computed from token stats, pure numpy, one file per paper."""
