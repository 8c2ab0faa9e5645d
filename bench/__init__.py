"""Benchmarks of Jarvis: supersede, Stop, disconnect, streaming cost, scale and endurance.

``python -m bench`` measures Jarvis under ``jarvis serve`` against a scripted
fake Ollama, beside a reference server built the way the replaced design was
built, and writes the table to docs/benchmarks.md. ``--quick`` is the CI smoke
run: it fails only when something crashes, never on slow numbers.
"""
