"""A tool's whole command line: the table beside its service conf
(``services/NAME.options``) of every option the tool documents, each
passed as is, naming an input, naming the output, a parameter, or refused
with the reason a client is told.

One line per option::

    OPTION   FORM   CLASS   [NOTE...]

FORM says how the option takes its value:

- ``none``   a switch (``--render``, ``+FN``);
- ``=``      ``NAME=VALUE`` or ``NAME VALUE``, kept as ``NAME=VALUE``;
- ``=?``     ``NAME`` or ``NAME=VALUE`` (never the next word: ``--render``
  before an input would take the input for its value);
- ``glued``  ``NAMEVALUE`` (POV-Ray's ``+W320``), the value may be empty;
- ``next``   ``NAME VALUE``, two words (@jscad/cli's ``-of stl``);
- ``ini``    ``NAME=VALUE`` in one word, which is also a key an ``.ini``
  input may set (POV-Ray's ``Declare=X=1``, ``Width=320``).

An OPTION ending in ``*`` stands for any name of letters, digits and ``_``
there (@jscad/cli's ``--*  ini``: ``--size=20`` for the design's main()).

CLASS is ``pass``, ``input`` (the file is sent with the task, renamed),
``output`` (mirrored back), ``param`` (the service's ``paramArgs``) or
``refuse``; the NOTE of a refused option is its one-line reason.  A line
``@signs +-`` says the tool reads ``-X`` as it reads ``+X`` (POV-Ray); a
line ``@words split`` that it splits one word at its spaces into several
options (POV-Ray again), so a value there is one word.
"""

import os

from .errors import UsageError

FORMS = ('none', '=', '=?', 'glued', 'next', 'ini')
CLASSES = ('pass', 'input', 'output', 'param', 'refuse')
VALUE_MAX = 200


class Option:
    """One row of a tool's option table."""

    def __init__(self, name, form, kind, note):
        self.name, self.form, self.kind, self.note = name, form, kind, note
        # The tool splits a word at its spaces into several options (POV-Ray:
        # "+W32 +L.." is two): a value with a space would carry unchecked ones.
        self.split_by_tool = False

    def shown(self):
        """How help shows it: ``--camera=VALUE``, ``+WVALUE``, ``-of VALUE``, ``--NAME=VALUE``."""
        short = not self.name.startswith('--') and self.form == '='  # -j 4, as it is passed on
        return self.name.replace('*', 'NAME') + {'none': '', '=': ' VALUE' if short else '=VALUE',
                                                 '=?': '[=VALUE]', 'glued': 'VALUE', 'next': ' VALUE',
                                                 'ini': '=VALUE'}[self.form]

    def prefix(self):
        """The word an input or output file follows when written as one word
        (``--load=``, ``+I``, ``-o``)."""
        long_form = self.name.startswith('--') and self.form in ('=', '=?')
        return self.name + ('=' if long_form or self.form == 'ini' else '')


class Match:
    """An option found on a command line: its row and its words as the tool gets them."""

    def __init__(self, option, words, value=None):
        self.option, self.words, self.value = option, words, value


class OptionTable:
    """The options of one tool, read from its table."""

    def __init__(self, name, options, either_sign=False, ignore_case=False):
        self.name = name
        self.either_sign = either_sign
        self.ignore_case = ignore_case
        # Longest first: +AM2 is +AM's, not +A's with the value M2.
        self.options = sorted(options, key=lambda o: -len(o.name))

    def of_class(self, kind):
        """The rows of one class, in the table's order of length."""
        return [o for o in self.options if o.kind == kind]

    def key(self, word):
        """``word`` as the tool compares it: its case folded for a tool that ignores
        case, its sign made ``+`` for a tool that reads ``-W`` as ``+W``."""
        word = word.lower() if self.ignore_case else word
        if self.either_sign and word[:1] == '-' and not word.startswith('--'):
            word = '+' + word[1:]
        return word

    def find(self, word, rest):
        """The Match of ``word`` (taking its value from ``rest`` when the form
        says so), or None for a word that is no option of the table."""
        key = self.key(word)
        for option in self.options:
            match = self._match(option, key, word, rest)
            if match is not None:
                return match
        return None

    def _match(self, option, key, word, rest):
        name, form = self.key(option.name), option.form
        if name.endswith('*'):
            return _wildcard_match(option, name[:-1], key, word)
        if form == 'none':
            return Match(option, [word]) if key == name else None
        if form == 'glued':
            return Match(option, [word], word[len(name):]) if key.startswith(name) else None
        if key.startswith(name + '=') and form != 'next':
            return Match(option, [word], word[len(name) + 1:])
        if key != name:
            return None
        if form == '=?':
            return Match(option, [word])
        if form in ('=', 'next') and rest:
            value = rest.pop(0)
            # --name=VALUE as one word; a short option's value as the next word
            # (-j 4), which every tool here reads
            joined = form == '=' and word.startswith('--')
            words = [f'{word}={value}'] if joined else [word, value]
            return Match(option, words, value)
        if form in ('=', 'next'):
            raise UsageError(f'{word} needs a value ({option.shown()})')
        return None


def _wildcard_match(option, start, key, word):
    """A row ``PREFIX*`` (form ini): ``PREFIXNAME=VALUE`` with a NAME of letters, digits and _."""
    name, sep, _ = key.partition('=')
    wild = name[len(start):]
    if option.form != 'ini' or not sep or not name.startswith(start) or not wild \
            or not all(c.isascii() and (c.isalnum() or c == '_') for c in wild):
        return None
    return Match(option, [word], word.partition('=')[2])


def is_wildcard(option):
    """True for a row that stands for many names (``--*``)."""
    return option.name.endswith('*')


def check_value(option, value, word=''):
    """A value passed to a tool: one line of printable text, no path.

    No shell ever sees it (the argv is a list); a ``/`` or ``\\`` would
    name a place, which only an input or output option may, and those are
    renamed into the task.
    """
    if value is None:
        return
    shown = repr(word[:80]) if word else option.name
    if len(value) > VALUE_MAX or any(not (' ' <= c <= '~') or c in '/\\' for c in value):
        raise UsageError(f'{shown}: the value of {option.name} must be at most {VALUE_MAX} printable '
                         f'characters without / or \\ (a value never names a place on the server)')
    if option.split_by_tool and any(c.isspace() for c in value):
        raise UsageError(f'{shown}: the value of {option.name} must be one word: the tool would read '
                         f'what follows a space as options of their own')


def refusal(match):
    """The one line a refused option gets, naming it and why."""
    return f'{match.words[0][:64]}: refused: {match.option.note or "not passed on"}'


def read_native(table, words):
    """Check a list of native words (a record's, a request's) against the table:
    every one a passed option with a value that checks; UsageError otherwise.
    Returns the Matches, in order."""
    words, matches = list(words), []
    while words:
        word = words.pop(0)
        match = table.find(word, words)
        if match is None:
            raise UsageError(f'argument {word[:64]!r} is not allowed for {table.name}: '
                             f'not an option it passes on')
        if match.option.kind == 'refuse':
            raise UsageError(refusal(match))
        if match.option.kind != 'pass':  # an input, output or parameter comes in its own field
            raise UsageError(f'argument {word[:64]!r} is not allowed for {table.name}: '
                             f'its {match.option.kind} is not a native argument')
        check_value(match.option, match.value, ' '.join(match.words))
        matches.append(match)
    return matches


def parse_option_table(path, tool):
    """Read ``services/NAME.options``; ValueError naming the line when one is bad."""
    try:
        with open(path, encoding='utf-8') as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f'options file {path}: cannot read: {exc}') from None
    options, either_sign, split_by_tool = [], False, False
    for number, line in enumerate(lines, 1):
        text = line.split('#', 1)[0] if not line.lstrip().startswith('#') else ''
        fields = text.split(None, 3)  # (read by every meta and every runner: one split a line)
        if fields[:1] == ['@signs']:
            either_sign = text.split()[1:] == ['+-']
        elif fields[:1] == ['@words']:
            split_by_tool = text.split()[1:] == ['split']
        elif fields:
            options.append(_row(fields, path, number))
    for option in options:
        option.split_by_tool = split_by_tool
    return options, either_sign


def _row(fields, path, number):
    """One Option from a table line's first three words and the rest, its
    note (which keeps its own spacing)."""
    if len(fields) < 3 or fields[1] not in FORMS or fields[2] not in CLASSES:
        raise ValueError(f'{os.path.basename(path)}:{number}: expected "OPTION FORM CLASS [NOTE]" with FORM one of '
                         f'{", ".join(FORMS)} and CLASS one of {", ".join(CLASSES)}')
    note = fields[3].strip() if len(fields) > 3 else ''
    if fields[2] == 'refuse' and not note:
        raise ValueError(f'{os.path.basename(path)}:{number}: a refused option needs its reason')
    return Option(fields[0], fields[1], fields[2], note)
