"""Test doubles: the tiny random model, the fake OpenAI-compatible server, scripted backends and agents.

Library code never imports this package (``tests/test_layers.py`` checks it). Importing it registers the doubles
by name: the env LLMs ``scripted`` and ``echo`` and the agent model ``tiny``. The test suite imports it
(``tests/conftest.py``); on the command line, ``--plugins promptr1.testing`` makes ``--model tiny`` and
``--env-llm echo`` available for a smoke test.
"""

from __future__ import annotations

from promptr1.llm_backends import BACKENDS, register_backend
from promptr1.llm_backends.model_cache import MODELS

for _name, _target in (("scripted", "promptr1.testing.scripted:ScriptedBackend"),
                       ("echo", "promptr1.testing.scripted:EchoBackend")):
    if _name not in BACKENDS:
        register_backend(_name, _target)
if "tiny" not in MODELS:
    MODELS.register("tiny", "promptr1.testing.tiny_model:tiny_model_path")
