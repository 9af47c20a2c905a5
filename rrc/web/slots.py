"""Slots that many clients share: at most ``total`` held at once, at most
``per_client`` of them by one client address, so one client never holds
them all (issue 18).

``rrcloud serve``'s long-polls and event streams take them
(``App.wait_slots``: ``maxWaits``, ``maxWaitsPerClient``), and so do its
open connections (``rrc/web/waitress_bounds.py``:
``maxConnectionsPerClient``).  They are counts only: nothing ever waits for
a slot, a refusal says at once which bound it met.

Imported on first use only: a CGI request that never waits does not load
threading.
"""

import threading


class NoSlot(Exception):
    """No slot for this client: ``setting`` names the bound it met."""

    def __init__(self, setting):
        super().__init__(setting)
        self.setting = setting


class ClientSlots:
    """How many slots are held, in all and by each address, under one lock.

    ``total`` None: no bound in all (waitress's ``connection_limit`` bounds
    the connections).  ``names`` are the settings a refusal names, for the
    total and for one client's share."""

    def __init__(self, total, per_client, names=('maxWaits', 'maxWaitsPerClient')):
        self.total, self.per_client, self.names = total, per_client, names
        self.lock = threading.Lock()
        self.held = 0
        self.by_client = {}  # address -> slots it holds; an address holding none is dropped

    def take(self, address):
        """A Slot for the client at ``address``; NoSlot naming the bound when
        none is free to it (all of them held first, then the client's share)."""
        client = client_key(address)
        with self.lock:
            if self.total is not None and self.held >= self.total:
                raise NoSlot(self.names[0])
            mine = self.by_client.get(client, 0)
            if mine >= self.per_client:
                raise NoSlot(self.names[1])
            self.held += 1
            self.by_client[client] = mine + 1
        return Slot(self, client)

    def give_back(self, slot):
        """Count ``slot`` as free again, the first time it is given back only."""
        with self.lock:
            if slot.released:
                return
            slot.released = True
            self.held -= 1
            left = self.by_client[slot.client] - 1
            if left:
                self.by_client[slot.client] = left
            else:
                del self.by_client[slot.client]


def client_key(address):
    """Who a client is, for its share: its IPv4 address, or the /64 network of
    its IPv6 address (one machine picks new addresses in its /64 at will)."""
    if ':' not in address:
        return address
    import ipaddress
    try:
        ip = ipaddress.IPv6Address(address.split('%')[0])
    except ValueError:
        return address
    if ip.ipv4_mapped:  # an IPv4 client of a dual-stack socket
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network(f'{ip}/64', strict=False))


class Slot:
    """One slot a client holds; ``release()`` (or leaving a ``with``) gives it
    back, once however often it is called."""

    def __init__(self, slots, client):
        self.slots, self.client = slots, client
        self.released = False

    def release(self):
        """Give the slot back (again: nothing happens)."""
        self.slots.give_back(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
