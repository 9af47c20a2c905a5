#!/usr/bin/env python3
"""rrcloud's CGI entry: runs ../rrcloud.py as an imported module.

Not a symlink: a script is compiled anew on every start, an imported module
comes from its cached bytecode (`make install` precompiles it), and under
CGI every request starts Python anew.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), '..'))
import rrcloud  # noqa: E402

sys.exit(rrcloud.main())
