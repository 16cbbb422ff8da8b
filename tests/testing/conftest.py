"""Tests of the testing kit itself; ``pytester`` (enabled in tests/conftest.py) runs inner pytest sessions."""
