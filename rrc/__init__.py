"""rrcloud's code, one module per concern; ``rrcloud.py`` beside the package is the one entry program."""

import os

# The folder that holds rrcloud.py and this package (site-packages when installed).
PROGRAM_FOLDER = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))

__version__ = '0.1.0'
PROTOCOL_VERSION = 'RepRapCloud 0.019'
VERSION_STRING = f'{PROTOCOL_VERSION} (rrcloud.py {__version__})'
DEFAULT_PORT = 4468
