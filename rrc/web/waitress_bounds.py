"""The bounds ``rrcloud serve`` adds to waitress (issue 18): a deadline on
each request's head, and a cap on the open connections of one client address.

Waitress's ``channel_timeout`` cuts only a silent connection: one that
trickles a header line every few seconds stays open for ever, and a
thousand of them reach ``connection_limit``, after which waitress accepts
nobody.  So:

- ``BoundedChannel`` times each request's head (request line and headers):
  from the connection's start for its first request, from the first byte
  of the next one on a kept-alive connection, until the head is complete.
  The server's maintenance closes a connection whose head is not complete
  within ``requestHeadTimeout``, however it trickles.  Once the head is
  complete the clock stops: a body being sent, a long-poll or a stream
  being answered are never cut by it.
- ``BoundedServer`` closes a new connection at once when its address holds
  ``maxConnectionsPerClient`` connections already (a ClientSlots of
  rrc/web/slots.py, one for every listening socket of the server).

Only waitress's own hooks are used, as waitress 3.0 has them: the server's
``handle_accept`` and ``maintenance`` (which its ``readable`` runs every
``cleanup_interval`` seconds), the channel's ``received`` and
``del_channel``, and its request parser's ``headers_finished``.  They run
on waitress's main-loop thread, but for a channel closed from a task thread
now and then (waitress's ``send_continue``): the counts take a lock.
"""

import time

from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import MultiSocketServer, TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher

from .slots import ClientSlots, NoSlot


def create_bounded_server(app, config, **settings):
    """Waitress's ``create_server`` for TCP sockets, each a BoundedServer with
    ``config``'s bounds; ``settings`` are waitress's own (host, port, threads…)."""
    adjustments = Adjustments(**settings)
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(adjustments.threads)
    socket_map = {}
    # One count for all listening sockets: an address is capped, not a socket.
    connections = ClientSlots(None, config.maxConnectionsPerClient,
                              names=('connection_limit', 'maxConnectionsPerClient'))
    servers = [BoundedServer(app, connections, config.requestHeadTimeout, map=socket_map,
                             dispatcher=dispatcher, adj=adjustments, sockinfo=sockinfo)
               for sockinfo in adjustments.listen]
    if len(servers) == 1:
        return servers[0]
    listening = [(server.effective_host, server.effective_port) for server in servers]
    return MultiSocketServer(socket_map, adjustments, listening, dispatcher, servers[-1].log_info)


class BoundedChannel(HTTPChannel):
    """A waitress connection that times its request heads and holds one of
    its client address's connection slots until it is closed."""

    slot = None  # the connection slot, given back when waitress forgets the channel

    def __init__(self, server, sock, addr, adj, map=None):
        super().__init__(server, sock, addr, adj, map=map)
        # The first head is timed from the connection's start: sending nothing counts too.
        self.head_started = time.monotonic()

    def received(self, data):
        """Waitress's parsing of the bytes that came, then the head's clock."""
        result = super().received(data)
        self.time_head()
        return result

    def time_head(self):
        """Stop the clock while a request is answered or its body comes; else
        keep it running, started by the first byte after an answer.  Blank
        lines are no request: they never stop it."""
        pending = self.request
        if self.requests or (pending is not None and pending.headers_finished):
            self.head_started = None
        elif self.head_started is None:
            self.head_started = time.monotonic()

    def head_overdue(self, begun_before):
        """True when a head begun before ``begun_before`` is still incomplete
        and no request of this connection is being answered."""
        return not self.requests and self.head_started is not None and self.head_started < begun_before

    def del_channel(self, map=None):
        """Waitress forgets the channel; its connection slot is free again (once)."""
        super().del_channel(map)
        if self.slot is not None:
            self.slot.release()


class BoundedServer(TcpWSGIServer):
    """A waitress TCP server that caps one address's connections and cuts
    the connections whose request head is overdue."""

    channel_class = BoundedChannel

    def __init__(self, application, connections, head_timeout, **kw):
        self.connections, self.head_timeout = connections, head_timeout
        super().__init__(application, **kw)

    def handle_accept(self):
        """Waitress's accept, plus the cap: a connection of an address that
        holds ``maxConnectionsPerClient`` already is closed before anything is read."""
        try:
            accepted = self.accept()
            if accepted is None:
                return
            conn, addr = accepted
            self.set_socket_options(conn)
        except OSError:  # as waitress: a client gone before its connection was set up
            if self.adj.log_socket_errors:
                self.logger.warning('server accept() threw an exception', exc_info=True)
            return
        try:
            slot = self.connections.take(addr[0])
        except NoSlot:
            conn.close()
            return
        self.open_channel(conn, addr, slot)

    def open_channel(self, conn, addr, slot):
        """The channel of an accepted connection, holding ``slot``."""
        try:
            channel = self.channel_class(self, conn, self.fix_addr(addr), self.adj, map=self._map)
        except BaseException:
            slot.release()
            raise
        channel.slot = slot

    def maintenance(self, now):
        """Waitress's cut of silent connections, then of overdue heads."""
        super().maintenance(now)
        begun_before = time.monotonic() - self.head_timeout
        # A copy: a task thread may close a channel meanwhile (waitress's
        # send_continue), which takes it out of active_channels.
        for channel in list(self.active_channels.values()):
            if channel.head_overdue(begun_before):
                channel.will_close = True  # closed by the main loop, as waitress's own cut
