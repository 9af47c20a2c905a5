"""Removing a folder tree a tool wrote, whatever it did to it, and measuring it.

A sandboxed tool writes its output folder as the server's user (the
sandbox maps its uid to that user), so it can ``chmod 000`` a folder in it,
make it thousands of levels deep, or put links in it.  ``remove_tree``
gives a folder this process owns back the rights it needs, never follows a
link, needs no recursion and at most two open folders at a time, and says
what it could not remove instead of hiding it.
"""

import os
import stat

# O_NOFOLLOW: a link where a folder was is never entered.
FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
OWNER_RIGHTS = stat.S_IRWXU


def remove_tree(path):
    """Remove ``path`` (a file, a link, or a folder and everything in it);
    returns the paths still there afterwards ([] when all of it went)."""
    path = str(path)
    parent, name = os.path.split(os.path.abspath(path))
    try:
        parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    except OSError:
        return [path]
    try:
        return TreeRemoval(parent_fd).remove(name, path)
    finally:
        os.close(parent_fd)


class Folder:
    """A folder on the way down: its name in its parent, how it is shown,
    its identity (to find the way back up) and the names left to remove."""

    def __init__(self, fd, name, shown):
        info = os.fstat(fd)
        self.name, self.shown, self.identity = name, shown, (info.st_dev, info.st_ino)
        self.names = os.listdir(fd)


class TreeRemoval:
    """One removal, depth first without recursion: a deep tree costs a list,
    never Python's stack or a descriptor per level."""

    def __init__(self, top_fd):
        self.top_fd = top_fd  # the parent of what is removed; the caller's to close
        self.way_down = []  # Folder, from the top to the one open now
        self.left = []

    def remove(self, name, shown):
        """Remove ``name`` of the top folder; the paths left."""
        if not self.remove_entry(self.top_fd, name, shown):
            fd = self.enter(self.top_fd, name, shown)
            while fd is not None:
                fd = self.step(fd)
        return self.left

    def step(self, fd):
        """From the folder open as ``fd``: into its next subfolder, or up once
        it is empty; the descriptor to go on with (None: finished)."""
        folder = self.way_down[-1]
        while folder.names:
            name = folder.names.pop()
            shown = os.path.join(folder.shown, name)
            if not self.remove_entry(fd, name, shown):
                child = self.enter(fd, name, shown)
                if child is not None:
                    os.close(fd)
                    return child
        return self.climb(fd)

    def remove_entry(self, fd, name, shown):
        """Unlink a file or link; False for a folder (to be entered)."""
        try:
            os.unlink(name, dir_fd=fd)
        except IsADirectoryError:
            return False
        except OSError as exc:
            self.could_not(shown, exc)
        return True

    def enter(self, parent_fd, name, shown):
        """Open folder ``name`` (rights given back first) and list it; its descriptor, or None."""
        try:
            give_back_rights(parent_fd, name)
            fd = os.open(name, FOLDER_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            return self.could_not(shown, exc)
        try:
            self.way_down.append(Folder(fd, name, shown))
            return fd
        except OSError as exc:
            os.close(fd)
            return self.could_not(shown, exc)

    def could_not(self, shown, exc):
        """``shown`` stays (unless ``exc`` says it is gone already); None."""
        if not isinstance(exc, FileNotFoundError):
            self.left.append(shown)
        return None

    def climb(self, fd):
        """The folder open as ``fd`` is empty: go up to its parent, remove it;
        the parent's descriptor (None at the top)."""
        done = self.way_down.pop()
        parent_fd = self.open_parent(fd) if self.way_down else self.top_fd
        os.close(fd)
        if parent_fd is None:  # the way back changed under us: stop, say what stays
            self.left += [done.shown] + [folder.shown for folder in self.way_down]
            self.way_down.clear()
            return None
        try:
            os.rmdir(done.name, dir_fd=parent_fd)
        except OSError as exc:
            self.could_not(done.shown, exc)
        return parent_fd if self.way_down else None

    def open_parent(self, fd):
        """The folder above ``fd``, if it is still the one we came down from; else None."""
        try:
            parent_fd = os.open('..', FOLDER_FLAGS, dir_fd=fd)
        except OSError:
            return None
        info = os.fstat(parent_fd)
        if (info.st_dev, info.st_ino) != self.way_down[-1].identity:
            os.close(parent_fd)
            return None
        return parent_fd


def give_back_rights(parent_fd, name):
    """u+rwx on folder ``name`` when this process owns it and lacks them (a
    tool chmod'ed it): then it can be listed and emptied.  Never through a link."""
    info = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        return
    if info.st_mode & OWNER_RIGHTS != OWNER_RIGHTS:
        try:
            os.chmod(name, stat.S_IMODE(info.st_mode) | OWNER_RIGHTS, dir_fd=parent_fd, follow_symlinks=False)
        except (ValueError, NotImplementedError):
            pass  # a link took its place meanwhile (Python refuses to chmod one): opening it fails next


def shown_left(left, root, most=3):
    """What ``remove_tree`` left, for a log line: paths relative to ``root``
    (never the server's own folders), unprintable characters as '?' (a tool
    chose the names), the first ``most`` and how many more."""
    shown = [''.join(c if c.isprintable() else '?' for c in os.path.relpath(path, root)) for path in left[:most]]
    more = f' and {len(left) - most} more' if len(left) > most else ''
    return ', '.join(shown) + more


# ---- What a tree takes on disk ---------------------------------------------

# Each file or folder counts at least this much: a tool that makes a million
# empty files uses the disk too.
ENTRY_BYTES = 4096
# Deeper than this a folder tree is not a tool's output but an attack on the
# walk (each level holds a descriptor while it is walked).
USAGE_MAX_DEPTH = 128


class TreeTooDeep(Exception):
    """A folder tree nested deeper than USAGE_MAX_DEPTH."""


def tree_usage(path, max_depth=USAGE_MAX_DEPTH):
    """(bytes, entries) of a folder tree: the bytes it takes on disk (blocks,
    never the size a sparse file claims; each entry at least ENTRY_BYTES),
    walked by descriptors without recursion (names of any length, any depth
    up to ``max_depth``: deeper is TreeTooDeep) and without following a link."""
    stack = [_opened(os.open(path, FOLDER_FLAGS))]
    total = entries_seen = 0
    try:
        while stack:
            fd, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                _close(*stack.pop())
                continue
            total += _entry_bytes(entry)
            entries_seen += 1
            if entry.is_dir(follow_symlinks=False):
                if len(stack) >= max_depth:
                    raise TreeTooDeep(path)
                child = _open_child(fd, entry.name)
                if child is not None:
                    stack.append(_opened(child))
    finally:
        for opened in stack:
            _close(*opened)
    return total, entries_seen


def _opened(fd):
    return fd, os.scandir(fd)


def _close(fd, entries):
    entries.close()
    os.close(fd)


def _entry_bytes(entry):
    try:
        return max(entry.stat(follow_symlinks=False).st_blocks * 512, ENTRY_BYTES)
    except OSError:
        return ENTRY_BYTES  # gone meanwhile


def _open_child(fd, name):
    try:
        return os.open(name, FOLDER_FLAGS, dir_fd=fd)
    except OSError:
        return None  # gone meanwhile, or a link put in its place
