"""rrc/lighthttp.py, the relay's HTTP client, against the answers real
servers give: a kept-alive connection used again, one the server closed
meanwhile (a GET is sent again on a new one), a chunked answer with a
trailer (lighttpd's for a CGI), an HTTP/1.0 answer that ends with its
connection, and the errors a caller reads (OSErrors, as requests' are).

A raw socket server in a thread plays each answer byte for byte: no real
server gives all of these on demand.
"""
import socket
import threading

import pytest

from rrc.lighthttp import LightSession, ReadTimeout, split_url
from rrc.remote import connection_failure


class ScriptedServer:
    """Accepts connections; for each request reads its head and sends the next scripted answer
    (bytes, with ``close=True`` to close the connection after it)."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.requests, self.connections = [], 0
        self.listener = socket.socket()
        self.listener.bind(('127.0.0.1', 0))
        self.listener.listen(8)
        self.url = f'http://127.0.0.1:{self.listener.getsockname()[1]}/'
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while self.answers:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self.talk, args=(connection,), daemon=True).start()

    def talk(self, connection):
        buffer = b''
        with connection:
            while self.answers:
                while b'\r\n\r\n' not in buffer:
                    data = connection.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b'\r\n\r\n')
                self.requests.append(head.decode('latin-1').split('\r\n')[0])
                answer, close = self.answers.pop(0)
                if answer is not None:
                    connection.sendall(answer)
                if close:
                    return

    def stop(self):
        self.listener.close()


def plain(body, extra=''):
    return (f'HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nContent-Type: text/plain\r\n{extra}\r\n'.encode()
            + body)


def test_a_kept_alive_connection_serves_the_next_request():
    server = ScriptedServer([(plain(b'one'), False), (plain(b'two'), False)])
    with LightSession() as session:
        first = session.get(server.url + 'a', params={'service': 'info', 'id': '1-2 3'})
        second = session.get(server.url + 'b')
    assert (first.text, second.text) == ('one', 'two')
    assert server.requests == ['GET /a?service=info&id=1-2%203 HTTP/1.1', 'GET /b HTTP/1.1']
    assert server.connections == 1 and session.connections == 1
    server.stop()


def test_a_get_on_a_connection_the_server_closed_goes_again_on_a_new_one():
    server = ScriptedServer([(plain(b'one'), True), (plain(b'two'), False)])
    with LightSession() as session:
        assert session.get(server.url).text == 'one'
        assert session.get(server.url).text == 'two'
    assert server.connections == 2
    server.stop()


def test_a_chunked_answer_with_a_trailer_then_the_next_on_the_same_connection(tmp_path):
    chunked = (b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n'
               b'5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: yes\r\n\r\n')
    server = ScriptedServer([(chunked, False), (plain(b'after'), False)])
    with LightSession() as session:
        answer = session.get(server.url, stream=True)
        assert b''.join(answer.iter_content(3)) == b'hello, world'
        assert session.get(server.url).text == 'after'
    assert server.connections == 1
    server.stop()


def test_an_http_1_0_answer_ends_with_its_connection():
    server = ScriptedServer([(b'HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end', True),
                             (plain(b'next'), False)])
    with LightSession() as session:
        assert session.get(server.url).text == 'until the end'
        assert session.get(server.url).text == 'next'
    assert server.connections == 2
    server.stop()


def test_a_refused_connection_and_a_silent_server_are_oserrors_in_a_users_words():
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    url = f'http://127.0.0.1:{listener.getsockname()[1]}/'
    listener.close()
    with pytest.raises(OSError) as refused:
        LightSession().get(url, timeout=2)
    assert connection_failure(refused.value) == 'connection refused'

    silent = ScriptedServer([(None, False), (plain(b'never asked for'), False)])  # holds the connection open
    with pytest.raises(ReadTimeout) as timed_out:
        LightSession().get(silent.url, timeout=(2, 0.3))
    assert connection_failure(timed_out.value) == 'no answer in time'
    silent.stop()


def test_an_answer_that_is_no_http_is_a_connection_error():
    server = ScriptedServer([(b'SSH-2.0-OpenSSH\r\n\r\n', True)])
    with pytest.raises(ConnectionError):
        LightSession().get(server.url)
    server.stop()


@pytest.mark.parametrize('answer', [
    b'HTTP/1.1 200 OK\r\nContent-Length: \xb9\r\n\r\nx',                   # a digit str.isdigit takes, int refuses
    b'HTTP/1.1 \xb200 OK\r\nContent-Length: 1\r\n\r\nx',
    b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-2\r\nxx\r\n0\r\n\r\n',  # int(, 16) takes -2
    b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n' + b'1' * 9000 + b'\r\n',   # a size line without end
    b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n' + b'X: y\r\n' * 100,  # trailers without end
])
def test_a_hostile_answer_is_a_connection_error_never_a_traceback_nor_a_read_forever(answer):
    server = ScriptedServer([(answer, False)])
    with pytest.raises(OSError) as refused:
        LightSession().get(server.url, timeout=(2, 2))
    assert isinstance(refused.value, (ConnectionError, ReadTimeout)), refused.value
    server.stop()


def test_a_head_trickled_a_byte_at_a_time_ends_at_its_deadline(monkeypatch):
    import time
    from rrc import lighthttp
    monkeypatch.setattr(lighthttp, 'DEADLINE_SLACK', 0.5)
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(1)

    def trickle():
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            for byte in b'HTTP/1.1 200 OK\r\nX-Slow: ' + b'y' * 100:
                connection.sendall(bytes([byte]))
                time.sleep(0.1)
    threading.Thread(target=trickle, daemon=True).start()

    with pytest.raises(ReadTimeout):  # each byte within the 1 s read timeout, the whole head not within 1.5 s
        LightSession().get(f'http://127.0.0.1:{listener.getsockname()[1]}/', timeout=(2, 1))
    listener.close()


def test_bytes_left_after_an_answer_are_never_read_as_the_next_answer():
    forged = plain(b'result') + plain(b'FORGED LOG\n')  # a Content-Length that is wrong, or a lie
    server = ScriptedServer([(forged, False), (plain(b'real log'), False)])
    with LightSession() as session:
        assert session.get(server.url + 'out').text == 'result'
        assert session.get(server.url + 'log').text == 'real log'
    assert server.connections == 2  # the first connection, with its leftover bytes, was not used again
    server.stop()


def test_a_request_line_or_header_that_is_not_one_line_of_ascii_is_never_sent():
    server = ScriptedServer([(plain(b'x'), False)])
    with pytest.raises(ConnectionError):
        LightSession(lambda url: 'token\r\nX-Evil: 1').get(server.url)
    assert server.requests == []
    server.stop()


@pytest.mark.parametrize('url, parts', [
    ('http://host:8080/x/y?a=1', ('http', 'host', 8080, '/x/y', 'a=1', 'host:8080')),
    ('https://[::1]/', ('https', '::1', 443, '/', '', '[::1]')),
    ('http://example.org', ('http', 'example.org', 80, '/', '', 'example.org')),
])
def test_urls_are_split_as_a_server_is_named(url, parts):
    target = split_url(url)
    assert (target.scheme, target.host, target.port, target.path, target.query, target.host_header) == parts


@pytest.mark.parametrize('url', ['ftp://host/', 'host:80', 'http://host:99999/', 'http://:80/'])
def test_a_url_that_names_no_http_server_is_refused(url):
    with pytest.raises(ConnectionError):
        split_url(url)
