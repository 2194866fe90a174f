"""Small end-to-end examples, runnable as ``python -m sparsecomp.examples.<name>``."""
