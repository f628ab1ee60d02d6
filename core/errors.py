"""The one exception type for a user's mistake: the CLIs print its message as one line and exit 1."""


class EdgeAsdError(Exception):
    """Bad input from the user (file, model, option, environment), worth one line and a nonzero exit.

    Raise it with a message that names the thing and says what to do, e.g.
    ``EdgeAsdError("fan.tflite: not an edge-asd model (no edge_asd metadata); convert it with edge-convert")``.
    """
