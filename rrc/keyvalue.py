"""The ``key: value`` line format shared by rrcloudrc files, service confs and queue markers."""

from .errors import ConfigError
from .names import split_config_line


def parse_key_value_lines(path):
    """Yield (line number, key, value) of an rrcloudrc-style file.

    ``key = value`` or ``key: value``; ``#`` starts a comment, whole-line or
    trailing.  A line that is neither empty nor a pair is a ConfigError.
    """
    try:
        with open(path, encoding='utf-8') as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f'{path}: cannot read: {exc}') from None
    return parse_key_value_text(text, path)


def parse_key_value_text(text, where):
    """parse_key_value_lines of text; errors name ``where``."""
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split('#', 1)[0].strip()
        if not line:
            continue
        pair = split_config_line(line)
        if not pair:
            raise ConfigError(f'{where}:{number}: expected "key = value", got {line!r}')
        yield (number,) + pair


TRUE_WORDS = {'yes', 'true', '1', 'on'}
FALSE_WORDS = {'no', 'false', '0', 'off', ''}


def boolean_value(text):
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f'expected yes or no, got {text!r}')
