"""Errors a plugin raises for bad input; the server maps each to its HTTP status."""

from __future__ import annotations


class InputError(ValueError):
    """The request's input is unusable; the message names the problem. HTTP 400."""

    status_code = 400


class UnsupportedMediaType(InputError):
    """The upload's type is not one the task accepts. HTTP 415."""

    status_code = 415


class PayloadTooLarge(InputError):
    """The upload, or its decoded size, is over a configured limit. HTTP 413."""

    status_code = 413


class UnprocessableInput(InputError):
    """The input parses but its content is outside what the task accepts (e.g. pitches out
    of range). HTTP 422."""

    status_code = 422
