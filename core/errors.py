"""Domain exceptions: one class per failure, each message says what is wrong."""


class RetroError(Exception):
    """Base class: a user-facing problem with a clear one-line message."""


class ValidationError(RetroError, ValueError):
    """Input rejected at the boundary; nothing was written."""


class UnknownUser(ValidationError):
    """A user id that is not in the operational database."""


class UnknownMovie(ValidationError):
    """A movie id that is not in the catalog."""


class InvalidRating(ValidationError):
    """A rating that is not an integer in 1..10."""


class UnknownEventKind(ValidationError):
    """An event kind outside the known behavioural signals."""


class InvalidEventValue(ValidationError):
    """An event value that makes no sense for its kind (e.g. negative watch time)."""


class FutureTimestamp(ValidationError):
    """A timestamp later than the service's clock."""


class InvalidTimestamp(ValidationError):
    """A timestamp that cannot be parsed."""


class ImportFormatError(RetroError):
    """A data file that does not have the expected layout; nothing was imported."""


class WorldNotFound(RetroError):
    """No simulated world in this data folder yet."""


class NotEmpty(RetroError):
    """The target store already holds data and the operation needs an empty one."""


class NoDataFolder(RetroError):
    """The data folder does not exist; only `init` and `import-movielens` create one."""
