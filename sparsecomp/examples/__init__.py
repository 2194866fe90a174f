"""Runnable examples: ``python -m sparsecomp.examples.<name>``."""
