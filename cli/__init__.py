"""sensitivity.cli: the ``sensitivity`` command line, a thin click layer over ``systems``."""
