"""mmserve plugins: the plugin contract, shared neural blocks and the built-in plugins.

A plugin module writes ``from plugins import hookimpl`` and implements the hooks in
``plugins.hookspecs``.
"""

import pluggy

PROJECT_NAME = "mmserve"

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = ["PROJECT_NAME", "hookimpl"]
