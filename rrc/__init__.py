"""rrcloud's modules; ``rrcloud.py`` beside this package is the one entry program."""
