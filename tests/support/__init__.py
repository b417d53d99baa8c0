"""Helpers the test modules share: plain functions and constants, no fixtures, no tests.

Fixtures live in tests/conftest.py; a test module imports helpers from here, never from
another test module (tests/README.md lists what each file holds).
"""
