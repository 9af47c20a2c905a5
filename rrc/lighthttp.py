"""A multipart POST over http.client, shaped like the part of a requests
session that ``remote.post_task`` uses.

A forwarder sends a pipeline step to its server the moment the step before
ends: importing requests first costs 150 to 400 ms (more on a Raspberry
Pi), twice the whole hand-off that the pipeline aims at.  This needs only
http.client, and streams each file from disk.
"""

import os
from urllib.parse import urlsplit


class LightSession:
    """``post(url, data=, files=, timeout=)`` with the token ``token_for(url)``
    chooses (a forwarder's: ``Config.server_token_for``)."""

    def __init__(self, token_for):
        self.token_for = token_for
        self.sent = False  # True once a request's body went out: the server may have acted on it

    def post(self, url, data, files, timeout):
        import http.client
        parts = urlsplit(url)
        connect_timeout, read_timeout = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        if parts.scheme == 'https':
            import ssl
            connection = http.client.HTTPSConnection(parts.hostname, parts.port or 443, timeout=connect_timeout,
                                                     context=ssl.create_default_context())
        else:
            connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=connect_timeout)
        boundary = os.urandom(16).hex()  # (uuid costs 20 ms to import)
        chunks, length = multipart_body(boundary, data, files)
        headers = {'Content-Type': f'multipart/form-data; boundary={boundary}',
                   'Content-Length': str(length), 'User-Agent': 'rrcloud'}
        token = self.token_for(url)
        if token:
            headers['Authorization'] = f'Bearer {token}'
        try:
            connection.connect()
            connection.sock.settimeout(read_timeout)
            connection.request('POST', (parts.path or '/') + (f'?{parts.query}' if parts.query else ''),
                               body=chunks, headers=headers)
            self.sent = True
            answer = connection.getresponse()
            return LightResponse(answer.status, dict(answer.getheaders()), answer.read())
        finally:
            connection.close()


class LightResponse:
    """What ``remote.parse_answer`` reads of a response."""

    def __init__(self, status, headers, body):
        self.status_code = status
        self.headers = {key.title(): value for key, value in headers.items()}
        self.text = body.decode('utf-8', 'replace')


def multipart_body(boundary, fields, files):
    """(an iterator of the body's chunks, its length): text fields, then each
    file as (name, bytes or an open file) read in 64 KiB chunks."""
    head = []
    for key, value in fields.items():
        head.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    pieces, length = [b''.join(head)], len(b''.join(head))
    for key, (name, data) in files.items():
        safe = name.replace('"', '_').replace('\r', '_').replace('\n', '_')
        part = (f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"; filename="{safe}"\r\n'
                f'Content-Type: application/octet-stream\r\n\r\n').encode()
        size = len(data) if isinstance(data, bytes) else os.fstat(data.fileno()).st_size - data.tell()
        pieces += [part, data, b'\r\n']
        length += len(part) + size + 2
    tail = f'--{boundary}--\r\n'.encode()
    pieces.append(tail)
    return _chunks(pieces), length + len(tail)


def _chunks(pieces):
    for piece in pieces:
        if isinstance(piece, bytes):
            yield piece
        else:
            while chunk := piece.read(65536):
                yield chunk
