"""Who a node is: its configured name plus the boot it runs in.

Several nodes may share one store folder (NFS).  A pid, a process start time
or a slot lock means something only on the node, and in the boot, that wrote
it: a record names both, and a node judges liveness, reconciles, recovers
and frees slots only for records it owns.
"""

import os

from .names import ALNUM
from .schema import Field


BOOT_ID_PATH = '/proc/sys/kernel/random/boot_id'
NODE_NAME_CHARS = ALNUM | frozenset('._-')
NODE_NAME_MAX = 64
# Temp-file names carry this many characters of the boot id (see boot_tag).
BOOT_TAG_LENGTH = 8


def is_node_name(text):
    """1 to 64 letters, digits or ``._-``, starting with a letter or digit
    (a node name is a folder name under ``tasks/slots``: never ``.`` or ``..``)."""
    return (isinstance(text, str) and 0 < len(text) <= NODE_NAME_MAX and text[0] in ALNUM
            and NODE_NAME_CHARS.issuperset(text))


def default_node_name():
    """The host name, made a valid node name where it is not one already."""
    name = ''.join(c if c in NODE_NAME_CHARS else '-' for c in os.uname().nodename)
    name = name.lstrip('.-_')[:NODE_NAME_MAX]
    return name if is_node_name(name) else 'localhost'


def boot_id():
    """The kernel's id of this boot ('' where /proc does not tell)."""
    try:
        with open(BOOT_ID_PATH, encoding='ascii') as handle:
            text = handle.read().strip()
    except (OSError, UnicodeDecodeError):
        return ''
    return text if len(text) <= 64 and all(c in '0123456789abcdef-' for c in text) else ''


def boot_tag():
    """A short token of this boot for temp-file names: a writer's pid in the
    name is judged only by a reader in the same boot (any node of this machine)."""
    return boot_id().replace('-', '')[:BOOT_TAG_LENGTH]


class NodeIdentity:
    """A node's name and boot id; what its records carry in ``node`` and ``nodeBoot``."""

    __slots__ = ('name', 'boot')

    def __init__(self, name, boot):
        self.name = name
        self.boot = boot

    @classmethod
    def of(cls, name=None):
        """This machine's identity under ``name`` (default: the host name)."""
        return cls(name or default_node_name(), boot_id())

    def owns(self, record):
        """True for a record this node runs; one without ``node`` (written before
        nodes had names) counts as this node's, so old stores keep working."""
        return record.get(Field.NODE, self.name) == self.name

    def rebooted_since(self, record):
        """True when the record's processes were started in an earlier boot of
        this node: every one of them is gone, and their pids may be another's now."""
        recorded = record.get(Field.NODE_BOOT, '')
        return bool(recorded and self.boot and recorded != self.boot)

    def fields(self):
        """What a record of a task this node starts says about where it runs."""
        return {Field.NODE: self.name, Field.NODE_BOOT: self.boot} if self.boot else {Field.NODE: self.name}

    def __repr__(self):
        return f'NodeIdentity({self.name!r}, {self.boot!r})'


def instance_id(identity, root):
    """Who a node is to a server that asks (``meta``'s ``instance``): its
    name, boot and store folder, as a checksum (the folder is nobody's
    business; telling a node from the few others it knows is all it is for,
    so crc32 will do, and costs a CGI request no hashlib)."""
    import zlib
    return f'{zlib.crc32(f"{identity.name}|{identity.boot}|{root}".encode()):08x}'


def starting_node():
    """The identity of the node that started this detached process (a runner,
    a forwarder: RRCLOUD_NODE, taken out of the environment; the host's
    default for one started by hand or by an older version)."""
    name = os.environ.pop('RRCLOUD_NODE', '')
    return NodeIdentity.of(name if is_node_name(name) else None)
