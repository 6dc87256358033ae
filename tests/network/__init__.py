"""Tests of `network/`."""
