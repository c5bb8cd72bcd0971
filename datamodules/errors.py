"""The one base class for errors caused by user input: the CLI prints them without a traceback
and the HTTP layer turns them into JSON 4xx answers."""


class UserError(ValueError):
    """Bad input; the message says what is wrong and how to fix it."""


class ImageryError(UserError):
    """Bad imagery input; the message says what is wrong and how to fix it."""
