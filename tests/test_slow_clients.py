"""Greedy and slow clients of ``rrcloud serve`` (issue 18): one client's share
of the wait slots, its share of the connections, and the deadline on a
request's head.

Each test runs a real embedded server on loopback and plays the clients from
other loopback addresses (Linux routes all of 127/8 to lo, so a socket can
bind 127.0.0.2 as its source): the greedy or slow one from one address, the
others from their own.  Small bounds in each server's rrcloudrc keep the
file short; no assertion is on a time, only request timeouts generous
enough that a hang alone fails them.
"""
import http.client
import json
import socket
import threading
import time

import pytest

from helpers import HeaderTrickle, raise_open_files, wait_for
from rrc.web.slots import ClientSlots, NoSlot

SLOW_SERVICE = {'slow': 'path = /usr/bin:/bin\ncmd = sh\nnoOutput = yes\n'}
FLOOD = 1100
# Generous: only a server that does not answer at all fails it.
ANSWER_TIMEOUT = 30


def start_long_task(server):
    """A task that runs until it is killed (30 s at most); its id."""
    answer = request(server, 'POST', '/', body='service=slow&fileIn0=sleep+30&format=json',
                     headers={'Content-Type': 'application/x-www-form-urlencoded'})
    assert answer.status == 200, answer.body
    return json.loads(answer.body)['id']


class Answer:
    """What a client got: status, headers, body text."""

    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body


def request(server, method, target, source='127.0.0.1', body=None, headers=None):
    """One request on a new connection from ``source``; the whole answer."""
    connection = http.client.HTTPConnection('127.0.0.1', server.port, timeout=ANSWER_TIMEOUT,
                                            source_address=(source, 0))
    try:
        connection.request(method, target, body=body, headers=headers or {})
        response = connection.getresponse()
        return Answer(response.status, response.headers, response.read().decode())
    finally:
        connection.close()


def open_stream(server, task_id, source):
    """A ``service=events`` request from ``source``: (connection, response), the
    body unread but for a 200 stream's first line (it streams)."""
    connection = http.client.HTTPConnection('127.0.0.1', server.port, timeout=ANSWER_TIMEOUT,
                                            source_address=(source, 0))
    connection.request('GET', f'/?service=events&id={task_id}')
    response = connection.getresponse()
    if response.status == 200:
        assert response.readline().startswith(b'retry: ')
    return connection, response


def test_one_address_gets_its_share_of_the_wait_slots_and_others_still_wait(embedded_server):
    server = embedded_server('maxWaits = 8\n', SLOW_SERVICE)  # maxWaitsPerClient: half of them, 4
    task_id = start_long_task(server)
    streams = []
    try:
        for _ in range(8):
            streams.append(open_stream(server, task_id, '127.0.0.1'))
        accepted = [response for _, response in streams if response.status == 200]
        refused = [response for _, response in streams if response.status != 200]
        assert len(accepted) == 4, [response.status for _, response in streams]
        for response in refused:
            reason = response.read().decode()
            assert response.status == 503 and response.headers['Retry-After'].isdigit(), reason
            assert reason.count('\n') == 1 and 'maxWaitsPerClient' in reason, reason
        # Its long-poll beyond its share is answered at once (a held one would time out here).
        own = request(server, 'GET', f'/?service=info&id={task_id}&wait=60&format=json')
        assert json.loads(own.body)['status'] == 'busy'

        streams.append(open_stream(server, task_id, '127.0.0.2'))
        assert streams[-1][1].status == 200, 'another address still gets a stream'

        held, sent = {}, threading.Event()
        poll = threading.Thread(target=long_poll, args=(server, task_id, '127.0.0.3', held, sent))
        poll.start()
        assert sent.wait(ANSWER_TIMEOUT)
        time.sleep(0.5)  # the server has it: a wait answered at once would be back by now
        assert poll.is_alive(), f'answered at once: {held}'
        assert request(server, 'GET', f'/?service=kill&id={task_id}').status == 200
        poll.join(ANSWER_TIMEOUT)
        assert held['status'] == 'failed', 'held until the task ended (killed)'
    finally:
        request(server, 'GET', f'/?service=kill&id={task_id}')
        for connection, _ in streams:
            connection.close()


def test_an_ipv6_client_is_one_client_for_all_the_addresses_of_its_network():
    slots = ClientSlots(None, 2, names=('connection_limit', 'maxConnectionsPerClient'))
    held = [slots.take('2001:db8::1'), slots.take('2001:db8::9:8:7')]  # one /64: one machine's picks

    with pytest.raises(NoSlot):
        slots.take('2001:db8::abcd')
    assert slots.take('2001:db8:0:1::1')  # another /64
    assert slots.take('::ffff:10.0.0.1') and slots.take('10.0.0.1')  # an IPv4 client, however written
    with pytest.raises(NoSlot):
        slots.take('::ffff:10.0.0.1')
    held[0].release()
    assert slots.take('2001:db8::abcd')


def test_a_slot_given_back_twice_frees_one():
    slots = ClientSlots(3, 2)
    first = slots.take('10.0.0.1')
    slots.take('10.0.0.1')
    with pytest.raises(NoSlot) as share:
        slots.take('10.0.0.1')
    assert share.value.setting == 'maxWaitsPerClient'
    first.release()
    first.release()  # a stream's close() after its end: nothing more
    slots.take('10.0.0.1')
    with pytest.raises(NoSlot):
        slots.take('10.0.0.1')
    slots.take('10.0.0.2')
    with pytest.raises(NoSlot) as full:
        slots.take('10.0.0.3')
    assert full.value.setting == 'maxWaits'


def long_poll(server, task_id, source, into, sent):
    """``info&wait=`` from ``source``; sets ``sent`` once the request is out,
    puts the record it answers into ``into``."""
    connection = http.client.HTTPConnection('127.0.0.1', server.port, timeout=ANSWER_TIMEOUT,
                                            source_address=(source, 0))
    try:
        connection.request('GET', f'/?service=info&id={task_id}&wait=25&format=json')
        sent.set()
        into.update(json.loads(connection.getresponse().read()))
    finally:
        connection.close()


@pytest.fixture
def open_files():
    """Room for a flood of sockets in this process and its servers."""
    if raise_open_files(FLOOD + 400) < FLOOD + 400:
        pytest.skip('the hard limit of open files is too low for the flood')


def test_one_address_keeps_at_most_max_connections_per_client_open(embedded_server, open_files):
    # No head deadline within the test: only the cap closes connections.
    server = embedded_server('maxConnectionsPerClient = 64\nrequestHeadTimeout = 600\n', SLOW_SERVICE)
    with HeaderTrickle(server.port, FLOOD, source='127.0.0.2') as flood:
        first = list(flood.connect().sockets)
        wait_for(lambda: len(flood.sweep()) <= 64, 'the connections beyond the cap closed',
                 timeout=ANSWER_TIMEOUT)
        assert flood.sockets == first[:64], 'the first 64 stay open, every later one was closed at once'
        assert flood.trickle() == 64

        for _ in range(5):
            assert request(server, 'GET', '/?service=meta').status == 200
        # A connection closed gives its slot back: that address gets one in again.
        flood.sockets.pop().close()
        wait_for(lambda: answers_from(server, '127.0.0.2'), 'a connection from 127.0.0.2 served again',
                 timeout=ANSWER_TIMEOUT)


def answers_from(server, source):
    """True when a ``meta`` request from ``source`` is answered (not closed unanswered)."""
    try:
        return request(server, 'GET', '/?service=meta', source=source).status == 200
    except (ConnectionError, http.client.RemoteDisconnected):
        return False


def test_a_flood_of_trickled_heads_is_cut_and_meta_answers_meanwhile(embedded_server, open_files):
    server = embedded_server('maxConnectionsPerClient = 64\nrequestHeadTimeout = 2\n', SLOW_SERVICE)
    answers = []
    with HeaderTrickle(server.port, FLOOD, source='127.0.0.2') as flood:
        flood.connect()

        def cut_while_trickling():
            # A line a second: never silent for waitress's channel_timeout, so
            # only the head deadline (or the cap, at once) closes them.
            flood.trickle()
            for _ in range(4):
                answers.append(request(server, 'GET', '/?service=meta').status)
                time.sleep(0.25)
            return not flood.sweep() and len(answers) >= 12
        wait_for(cut_while_trickling, 'every trickling connection cut', timeout=ANSWER_TIMEOUT, interval=0)
    assert flood.closed == FLOOD
    assert answers == [200] * len(answers)


def test_blank_lines_are_no_request_and_never_stop_the_heads_clock(embedded_server):
    server = embedded_server('requestHeadTimeout = 2\n', SLOW_SERVICE)
    with socket.create_connection(('127.0.0.1', server.port), timeout=ANSWER_TIMEOUT,
                                  source_address=('127.0.0.2', 0)) as connection:
        connection.settimeout(0.5)

        def cut():
            # An empty line every half second: waitress parses each as no
            # request at all, and the connection is never silent.
            try:
                connection.sendall(b'\r\n')
                return connection.recv(1) == b''
            except socket.timeout:
                return False
            except OSError:  # reset: cut as well
                return True
        wait_for(cut, 'the connection sending blank lines cut', timeout=ANSWER_TIMEOUT, interval=0)


def test_a_slow_but_honest_client_is_not_cut(embedded_server):
    server = embedded_server('requestHeadTimeout = 3\n', SLOW_SERVICE)
    task_id = start_long_task(server)
    # Both run longer than the head deadline after their heads were complete:
    # a long-poll (its head in three pieces, within the deadline), and a
    # POST whose body comes in four pieces over six seconds.
    head = [f'GET /?service=info&id={task_id}&wait=7&format=json HTTP/1.1\r\n',
            'Host: 127.0.0.1\r\n', 'Connection: close\r\n\r\n']
    form = f'service=info&id={task_id}&format=json'
    post = [f'POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n'
            f'Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(form)}\r\n\r\n',
            form[:5], form[5:10], form[10:15], form[15:]]
    answers = {}
    honest = [threading.Thread(target=send_slowly, args=(server, '127.0.0.3', head, 0.25, answers, 'poll')),
              threading.Thread(target=send_slowly, args=(server, '127.0.0.4', post, 1.5, answers, 'post'))]
    try:
        with HeaderTrickle(server.port, 1, source='127.0.0.2') as trickler:
            trickler.connect()
            for thread in honest:
                thread.start()
            wait_for(lambda: trickler.trickle() == 0, 'the trickling client cut', timeout=ANSWER_TIMEOUT,
                     interval=1)
        for thread in honest:
            thread.join(ANSWER_TIMEOUT)
    finally:
        request(server, 'GET', f'/?service=kill&id={task_id}')
    for name in ('poll', 'post'):
        status_line, _, body = answers[name].partition('\r\n')
        assert status_line == 'HTTP/1.1 200 OK', answers
        assert json.loads(body.split('\r\n\r\n', 1)[1])['status'] == 'busy', answers


def send_slowly(server, source, pieces, pause, answers, name):
    """Send ``pieces`` from ``source`` with ``pause`` seconds between them; the
    whole answer (up to the server's close) goes into ``answers[name]``."""
    with socket.create_connection(('127.0.0.1', server.port), timeout=ANSWER_TIMEOUT,
                                  source_address=(source, 0)) as connection:
        for number, piece in enumerate(pieces):
            if number:
                time.sleep(pause)
            connection.sendall(piece.encode())
        received = b''
        while chunk := connection.recv(65536):
            received += chunk
    answers[name] = received.decode()
