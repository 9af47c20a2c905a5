"""What a task's tool may use while it runs, and the units the limits are written in.

Sizes in rrcloudrc are bytes or a number with a binary unit (``512M``,
``2 GiB``); ``format_size`` writes them back the way a person reads them
(``2 GiB``).  The defaults scale with the machine: memory is a share of its
RAM, processes a number per CPU on big machines.
"""

import os

SIZE_UNITS = {'': 1, 'k': 1 << 10, 'm': 1 << 20, 'g': 1 << 30, 't': 1 << 40}
UNIT_NAMES = ((1 << 40, 'TiB'), (1 << 30, 'GiB'), (1 << 20, 'MiB'), (1 << 10, 'KiB'))


def parse_size(text):
    """Bytes of ``1048576``, ``512M``, ``512 MiB``, ``2G``, ``1.5 GB`` (units
    are binary: K, M, G, T with an optional ``i`` and ``B``); at least 1."""
    word = text.strip().lower().replace(' ', '')
    number = word.rstrip('kmgtib')
    unit = word[len(number):]
    unit = unit[:-1] if unit.endswith('b') else unit
    unit = unit[:-1] if unit.endswith('i') else unit
    whole, _, fraction = number.partition('.')
    if unit not in SIZE_UNITS or not whole.isdigit() or not (fraction.isdigit() or not fraction) \
            or not whole.isascii() or len(number) > 20:
        raise ValueError('a size is a number of bytes, or one with K, M, G or T (e.g. 512M, 2 GiB)')
    value = int(float(number) * SIZE_UNITS[unit])
    if value < 1:
        raise ValueError('must be at least 1 byte')
    return value


def format_size(size):
    """``2 GiB``, ``1.5 GiB``, ``10 MiB``, ``512 bytes``: a size for people."""
    for unit, name in UNIT_NAMES:
        if size >= unit:
            return f'{size / unit:.1f}'.removesuffix('.0') + f' {name}'
    return f'{size} bytes'


def machine_memory():
    """Bytes of RAM of this machine (0 when the system does not say)."""
    try:
        return os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    except (OSError, ValueError):
        return 0


# A tool may take this share of the machine's RAM by default: one runaway
# task leaves the server, the store and the other half to everyone else.
DEFAULT_MEMORY_SHARE = 0.5
DEFAULT_MEMORY_FLOOR = 1 << 30


def default_max_memory():
    """``maxMemory``'s default: half the machine's RAM, at least 1 GiB."""
    return max(DEFAULT_MEMORY_FLOOR, int(machine_memory() * DEFAULT_MEMORY_SHARE))


# Threads count as processes (the kernel counts tasks): a renderer starts
# one per CPU, so big machines get more than the 64 a small one gets.
DEFAULT_PROCESSES = 64
PROCESSES_PER_CPU = 4


def default_max_processes():
    """``maxProcesses``'s default: 64, or 4 per CPU where that is more."""
    return max(DEFAULT_PROCESSES, PROCESSES_PER_CPU * (os.cpu_count() or 1))
