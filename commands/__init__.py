"""The top floor: the ``promptr1`` command line (``train``, ``sft``, ``eval``, ``chat``, ``play``, ...), each
command parsing its settings, assembling the layers below and reporting."""
