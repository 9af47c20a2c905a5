"""A task's progress as a person reads it on one line of a terminal.

A progress event's data (rrc/events.py) becomes a bar where the tool tells
its fraction, its stage's name where it tells only that, with the time left
either way when it is known::

    rendering  [##############----------] 58%  1:02 left
    generating skirt  0:12 left
    [#######-----------------] 30%  0:06 left      (a print: no stages)

The time left counts down between events: ``age`` is how long ago the
event came.  Whatever a server sent is shown only as numbers and a checked
stage name (rrc/events.checked_progress), never as its own text.
"""

from ..events import checked_progress

BAR_WIDTH = 24


def progress_bar(data, age=0.0):
    """The one-line view of a progress event's data; None when it holds no progress."""
    data = checked_progress(data) if isinstance(data, dict) else None
    if not data:
        return None
    parts = [data['stage']] if data.get('stage') else []
    if 'total' in data:
        parts.append(fraction_bar(data['done'], data['total']))
    left = time_left(data, age)
    if left:
        parts.append(left)
    return '  '.join(parts)


def fraction_bar(done, total):
    """``[#######-----] 58%``."""
    done = min(max(done, 0), total)  # whole numbers: 58 of 100 is 58%, never 57.99
    filled = BAR_WIDTH * done // total if total > 0 else 0
    percent = 100 * done // total if total > 0 else 0
    return f'[{"#" * filled}{"-" * (BAR_WIDTH - filled)}] {percent}%'


def time_left(data, age):
    """``1:02 left`` once the event's time left, counted down by ``age``, is a second or more."""
    if 'eta' not in data:
        return None
    left = data['eta'] - max(age, 0.0)
    return f'{clock_text(left)} left' if left >= 1 else None


def clock_text(seconds):
    """``0:07``, ``1:02``, ``2:03:04``."""
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f'{hours}:{minutes:02d}:{seconds:02d}' if hours else f'{minutes}:{seconds:02d}'
