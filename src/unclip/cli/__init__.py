"""Thin command-line front end (``unclip ...``). Sub-commands are imported lazily."""
