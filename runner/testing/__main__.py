"""`python -m runner.testing`: the scripted OpenAI-compatible server, standalone."""

from .server import main

main()
