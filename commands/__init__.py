"""The ``promptr1`` command line's commands (``promptr1.commands.*``)."""
