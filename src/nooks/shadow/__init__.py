"""Shadow drivers: a class-generic engine and one spec per driver class."""

from nooks.shadow.engine import Answered, ClassSpec, NotInLog, Recovery, Shadow, Strategy

__all__ = ["Answered", "ClassSpec", "NotInLog", "Recovery", "Shadow", "Strategy"]
