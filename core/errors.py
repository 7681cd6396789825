"""Domain exceptions: one class per failure, each message says what is wrong."""


class RetroError(Exception):
    """Base class: a user-facing problem with a clear one-line message."""


class ValidationError(RetroError, ValueError):
    """Input rejected at the boundary; nothing was written.

    `code` names the check that failed, stable across rewordings of the message (programs read the code,
    people read the message): the class's default, or the raise site's `code=` for a finer distinction.
    A rejected write is stored with it and the ETL files its quarantine category by it.
    """

    code = "invalid"

    def __init__(self, *args, code: str | None = None):
        super().__init__(*args)
        if code is not None:
            self.code = code   # an instance attribute: kept when the exception is pickled


class UnknownUser(ValidationError):
    """A user id that is not in the operational database."""

    code = "unknown_user"


class UnknownMovie(ValidationError):
    """A movie id that is not in the catalog."""

    code = "unknown_movie"


class UnknownImpression(ValidationError):
    """An ad impression id that was not shown to the user asked about (or does not exist)."""

    code = "unknown_impression"


class InvalidRating(ValidationError):
    """A rating that is not an integer in 1..10."""

    code = "invalid_rating"


class UnknownEventKind(ValidationError):
    """An event kind outside the known behavioural signals."""

    code = "unknown_event_kind"


class InvalidEventValue(ValidationError):
    """An event value that makes no sense for its kind (e.g. negative watch time)."""

    code = "invalid_event_value"


class FutureTimestamp(ValidationError):
    """A timestamp later than the service's clock."""

    code = "future_timestamp"


class InvalidTimestamp(ValidationError):
    """A timestamp that cannot be parsed."""

    code = "invalid_timestamp"


class ImportFormatError(RetroError):
    """A data file that does not have the expected layout; nothing was imported."""


class WorldNotFound(RetroError):
    """No simulated world in this data folder yet."""


class NotEmpty(RetroError):
    """The target store already holds data and the operation needs an empty one."""


class NoDataFolder(RetroError):
    """The data folder does not exist; only `init` and `import-movielens` create one."""


class NotADataFolder(NoDataFolder):
    """The folder exists but is not a data folder (other files, no marker): nothing is written into it."""
