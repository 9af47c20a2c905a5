"""This server's config, store and start time, loaded once per process."""

import os
import sys

from ..config import load_config
from ..procs import process_started_at
from ..store import Store


_APP_CONTEXT = {}


def app_context():
    """Config, store and services of this server (loaded once per process)."""
    if 'store' not in _APP_CONTEXT:
        config = load_config()
        _APP_CONTEXT.update(config=config, store=Store(config.dir))
        _APP_CONTEXT.setdefault('started', process_started_at(os.getpid()))  # any WSGI server
    return _APP_CONTEXT['config'], _APP_CONTEXT['store']


SANDBOX_OFF_WARNING = ('rrcloud: warning: sandbox = no: tasks run without their sandbox, '
                       'with every right of this server\'s user (see docs/SECURITY.md)')


def warn_if_unsandboxed(config):
    """Say in the server's log that tools run unconfined, when someone chose that."""
    if not config.sandbox:
        print(SANDBOX_OFF_WARNING, file=sys.stderr, flush=True)
