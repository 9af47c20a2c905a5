"""A receiver of rrcloud's signed notifier calls: Python's standard library only.

    RRCLOUD_NOTIFIER_SECRET=the-servers-notifierSecret python3 notifier_receiver.py 8000

listens on port 8000 and answers every notifier call: 204 when it carries a
valid signature made no more than FRESH_SECONDS ago and not seen before,
403 otherwise.  The rrcloud server writes that answer into the task's log
(``rrcloud: notifier URL: HTTP 204``).  Put what should happen on a call in
``received`` (the task id and the event are only trustworthy after
``verify``).  How the signature is made: docs/SECURITY.md, "Signed notifier
calls".  tests/test_notifier_signed.py runs this very file.
"""
import hashlib
import hmac
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FRESH_SECONDS = 300


def verify(secret, method, target, headers, now=None):
    """True when a call carries a valid rrcloud signature made at most FRESH_SECONDS ago."""
    fields = dict(part.strip().split('=', 1) for part in
                  headers.get('X-RRCloud-Signature', '').split(',') if '=' in part)
    timestamp, given = fields.get('t', ''), fields.get('v1', '')
    if not (timestamp.isascii() and timestamp.isdigit()):
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > FRESH_SECONDS:
        return False
    signed = '\n'.join((timestamp, f'{method} {target}',
                        headers.get('X-RRCloud-Event', ''), headers.get('X-RRCloud-Task', '')))
    expected = hmac.new(secret.encode(), signed.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), given.encode())


class NotifierReceiver(BaseHTTPRequestHandler):
    """Answers rrcloud's notifier GETs; ``self.server.secret`` is the server's notifierSecret."""

    def do_GET(self):
        signature = self.headers.get('X-RRCloud-Signature', '')
        if not verify(self.server.secret, self.command, self.path, self.headers) \
                or not self.server.first_time(signature):
            self.send_response(403)
        else:
            self.received(self.headers['X-RRCloud-Task'], self.headers['X-RRCloud-Event'])
            self.send_response(204)
        self.end_headers()

    def received(self, task_id, event):
        """A genuine call: task ``task_id`` has ``started`` or ``ended``."""
        print(f'task {task_id} {event}', flush=True)


class ReceiverServer(ThreadingHTTPServer):
    """The listener: the secret, and the signatures seen within the freshness window
    (a call replayed by someone who recorded it is refused)."""

    def __init__(self, address, handler, secret):
        super().__init__(address, handler)
        self.secret = secret
        self.seen = {}  # signature -> when it came
        self.seen_lock = threading.Lock()

    def first_time(self, signature):
        """True the first time a signature comes (older ones are stale anyway)."""
        now = time.time()
        with self.seen_lock:
            self.seen = {s: t for s, t in self.seen.items() if now - t <= 2 * FRESH_SECONDS}
            fresh = signature not in self.seen
            self.seen[signature] = now
        return fresh


def main(argv):
    secret = os.environ.get('RRCLOUD_NOTIFIER_SECRET', '')
    if len(secret) < 16 or len(argv) != 2 or not argv[1].isdigit():
        sys.exit('usage: RRCLOUD_NOTIFIER_SECRET=SECRET notifier_receiver.py PORT')
    ReceiverServer(('', int(argv[1])), NotifierReceiver, secret).serve_forever()


if __name__ == '__main__':
    main(sys.argv)
