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

__all__ = [
    "Errno",
    "Interface",
    "InterfaceSpec",
    "MethodSpec",
    "Ordinary",
    "Tracked",
    "declare",
    "load",
    "posted",
]
