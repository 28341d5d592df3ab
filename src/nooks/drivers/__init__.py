"""Drivers that ship with nooks."""
