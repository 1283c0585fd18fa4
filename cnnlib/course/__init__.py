"""Instructor tooling: clean notebooks, generate exercises from solutions, grade submissions.

This package knows notebooks, not models. Its command line is ``cnn-course`` (see ``cli.py``).
"""
