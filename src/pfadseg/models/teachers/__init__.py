"""Frozen ImageNet teachers; importing the backbone modules registers them in TEACHERS."""

from . import efficientnet_lite, resnet  # noqa: F401  (register "efficientnet_lite0", "resnet18")
from .base import TEACHERS, Teacher, available_teachers, build_teacher, register_teacher

__all__ = ["TEACHERS", "Teacher", "available_teachers", "build_teacher", "register_teacher"]
