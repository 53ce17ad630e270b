"""Errors the core raises for bad input; each message says what went wrong and what to do instead."""


class DMD2Error(Exception):
    """Base class of every error this pack raises on purpose."""
