"""Runnable studies of jaxreg. Run each from the repository root as a module:

    python -m examples.mnist1d_study

They share the helpers in :mod:`examples.helpers`.
"""
