"""Tests of `indexer/`."""
