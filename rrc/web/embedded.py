"""``rrcloud serve``: the embedded server (waitress), and telling whether one already serves a port."""

import errno
import os
import sys
import time

from ..config import load_config, port_number
from ..limits import claim_cgroup, format_size
from ..errors import ConfigError, ExitCode, UsageError
from ..procs import process_started_at
from ..recovery import recover_store
from ..remote import CONNECT_TIMEOUT, http_session, parse_answer, server_url, terminal_safe
from ..node import Node, limit_fields, warn_if_unsandboxed
from .app import App


def serve(args):
    """``rrcloud serve [--bind ADDR] [--port N] [--check]``: the embedded server (waitress)."""
    config = load_config()
    bind, port, check = serve_options(args, config.port)
    if check:
        warn_if_redis_open(config)
        return check_serving(config, bind, port)
    app = App(Node(config, started=process_started_at(os.getpid()) or time.time()))
    server = listen(app, bind, port)  # before anything is created or claimed
    claim_cgroup()  # a delegated cgroup v2: tasks get cgroups of their own beside this server's
    store = app.store
    store.ensure()
    recover_store(store, config)
    print(f'rrcloud: serving {store.root} on http://{bind}:{port}/', file=sys.stderr)
    print(f'rrcloud: clients allowed from {", ".join(config.allow)}; '
          f'token {"required" if config.token else "not required"}', file=sys.stderr, flush=True)
    print(f'rrcloud: {limits_line(limit_fields(config))}', file=sys.stderr, flush=True)
    warn_if_unsandboxed(config)
    warn_if_redis_open(config)
    if config.backend == 'rq':
        sweep_the_farm(store, config)
    warm_tool_versions(app.node)
    server.run()
    return ExitCode.OK


def serve_options(args, port):
    """(bind address, port, check) from ``serve``'s arguments."""
    bind, check = '0.0.0.0', False
    args = list(args)
    while args:
        word = args.pop(0)
        name, sep, value = word.partition('=')
        if word == '--check':
            check = True
            continue
        if name not in ('--bind', '--port'):
            raise UsageError(f'unknown serve option: {word!r}')
        if not sep:
            if not args:
                raise UsageError(f'{name} needs a value')
            value = args.pop(0)
        if name == '--bind':
            bind = value
        else:
            try:
                port = port_number(value)
            except ValueError:
                raise UsageError(f'bad port: {value!r}') from None
    return bind, port, check


def listen(app, bind, port):
    """The waitress server of ``app`` bound to ``bind:port``, with rrcloud's bounds
    on slow and greedy clients (rrc/web/waitress_bounds.py); a port in use is one error line."""
    from .waitress_bounds import create_bounded_server
    try:
        # Idle connections cost no thread in waitress; allow many of them, at
        # most maxConnectionsPerClient of one address, so others always get in.
        # Cut those that send nothing for 20 s, and those whose request head is
        # not complete within requestHeadTimeout however it trickles: looked at
        # every second or two (cleanup_interval 1, and waitress's loop wakes
        # at least every second).  A request whose head is complete (a body
        # coming, a long-poll) is never cut.
        # channel_request_lookahead: a connection stays read while its request
        # runs, so an event stream sees its client hang up (waitress tells the
        # app through environ['waitress.client_disconnected']) and frees its
        # thread at once.  Waitress sends each chunk of an answer as it comes
        # (send_bytes is 1 since waitress 1.3): events are not held back.
        # asyncore_use_poll: select() fails past file descriptor 1024, which
        # 1000 connections and a raised open-files limit can reach.
        return create_bounded_server(
            app, app.config, host=bind, port=port, threads=16, ident='rrcloud',
            connection_limit=1000, backlog=1024, channel_timeout=20, cleanup_interval=1,
            channel_request_lookahead=1, asyncore_use_poll=True,
            max_request_body_size=app.config.maxRequestSize)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise ConfigError(f'cannot serve on {bind}:{port}: the port is in use '
                          f'(rrcloud serve --check --port {port} tells by whom)') from None


def check_serving(config, bind, port):
    """``serve --check``: does rrcloud answer on the port (0), nothing (5), or another server (4)?"""
    import requests
    host = '127.0.0.1' if bind in ('0.0.0.0', '::', '') else bind
    url = server_url(f'[{host}]:{port}' if ':' in host else f'{host}:{port}', port)
    try:
        # The admin's command line asking its own server: a client, with the server's own token.
        session = http_session(config.client_token_for)
        response = session.get(url, params={'service': 'meta'}, timeout=(CONNECT_TIMEOUT, 10))
    except requests.ConnectionError:
        print(f'rrcloud: nothing serves on port {port}')
        return ExitCode.NO_SERVER
    except OSError as exc:
        raise ConfigError(f'port {port} does not answer like rrcloud ({exc.__class__.__name__})') from None
    if is_rrcloud_answer(response):
        meta = parse_answer(response)
        print(f'rrcloud: rrcloud serves on port {port} ({terminal_safe(meta.get("version", "RepRapCloud"))})')
        if 'limits' in meta:
            print(f'rrcloud: {terminal_safe(limits_line(meta))}')
        return ExitCode.OK
    raise ConfigError(f'port {port} is taken by a server that is not rrcloud')


def warm_tool_versions(node):
    """Each tool asked its version in a thread as the server starts, not by
    its first ``meta`` (Node's WASM engine and Slic3r take a second or more,
    longer on a Pi, and a client's pipe check or load probe waits only
    briefly for a meta)."""
    import threading
    from ..services import load_services
    node.tool_versions.lock = threading.Lock()  # its first meta waits for this, never asks twice

    def warm():
        try:
            node.tool_versions.of_services(load_services(node.store.root)[0], save=False)
        except Exception as exc:  # the first meta asks again
            print(f'rrcloud: tool versions: {exc}', file=sys.stderr, flush=True)
    threading.Thread(target=warm, daemon=True, name='tool versions').start()


def sweep_the_farm(store, config):
    """A farm's front-end looks after the workers' tasks (rrc/farmwork.py) in a thread of its own."""
    import threading
    from ..farmwork import keep_sweeping
    threading.Thread(target=keep_sweeping, args=(store, config, threading.Event()), daemon=True,
                     name='farm sweep').start()


def warn_if_redis_open(config):
    """A farm's Redis without a password is open to anyone on its network:
    any of them could queue work for the workers (docs/FARM.md)."""
    from urllib.parse import urlsplit
    if config.backend == 'rq' and not urlsplit(config.redis).password:
        print('rrcloud: warning: redis in rrcloudrc has no password: anyone who reaches that Redis can '
              'queue work for the farm\'s workers (requirepass; see docs/FARM.md)', file=sys.stderr, flush=True)


def limits_line(fields):
    """One line of what a server's tools may use and how that is enforced (from meta's fields)."""
    def size(key):
        value = fields.get(key, '')
        return format_size(int(value)) if value.isdigit() else '?'
    return (f'tool limits (by {fields.get("limits", "?")}): memory {size("maxMemory")}, '
            f'{fields.get("maxProcesses", "?")} processes, output {size("maxOutputSize")}, '
            f'log {size("maxLogSize")}, suspended at most {fields.get("maxSuspend", "?")} s')


def is_rrcloud_answer(response):
    """True for rrcloud's answer to meta: its version, or its refusal naming its realm."""
    if 'RepRapCloud' in parse_answer(response).get('version', ''):
        return True
    return response.status_code == 401 and 'realm="rrcloud"' in response.headers.get('WWW-Authenticate', '')
