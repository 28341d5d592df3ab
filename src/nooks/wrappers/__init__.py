"""Wrappers: interface declarations and the argument/result checks derived from them."""

from nooks.wrappers.declare import (
    Errno,
    Interface,
    InterfaceSpec,
    MethodSpec,
    Ordinary,
    Tracked,
    declare,
    load,
    posted,
)
from nooks.wrappers.meaning import Handle, Meaning, changes, closes, once, opens

__all__ = [
    "Errno",
    "Handle",
    "Interface",
    "InterfaceSpec",
    "Meaning",
    "MethodSpec",
    "Ordinary",
    "Tracked",
    "changes",
    "closes",
    "declare",
    "load",
    "once",
    "opens",
    "posted",
]
