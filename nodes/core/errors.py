"""The few exception types Likeness raises. Each message says what was expected, what was found, and where."""


class LikenessError(Exception):
    """Base class: a user-facing problem with a message meant for people."""


class AdapterFileError(LikenessError):
    """An adapter file that cannot be read or is not an adapter we know."""


class IncompatibleError(LikenessError):
    """Two inputs that do not fit together (adapter vs model, encoder vs adapter, tokens vs adapter)."""


class InputError(LikenessError):
    """A bad value on a node input (range, empty batch, mask shape...)."""


class ReferencesFileError(LikenessError):
    """A saved references file that cannot be read, is damaged, or was not written by Likeness."""
