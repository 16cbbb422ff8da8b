"""A small example application that uses jobbuf (see ``test_myapp.py`` for its tests)."""
