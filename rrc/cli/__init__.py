"""The ``rrcloud`` command line and the ``*.cloud`` wrappers."""
