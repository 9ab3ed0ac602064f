"""Test doubles: the tiny random model, the fake OpenAI-compatible server, scripted backends and agents.

Library code never imports this package (``tests/test_layers.py`` checks it). The command line reaches
the doubles only through lazy registry entries (``--model tiny``, ``--env-llm scripted``/``echo``), so
that a user's smoke test works without the test suite.
"""
