"""Shadow drivers: a class-generic engine, and the base of every class's spec."""

from nooks.shadow.engine import Recovery, Shadow
from nooks.shadow.spec import NOT_IN_LOG, Answer, Busy, ClassSpec, Strategy

__all__ = ["NOT_IN_LOG", "Answer", "Busy", "ClassSpec", "Recovery", "Shadow", "Strategy"]
