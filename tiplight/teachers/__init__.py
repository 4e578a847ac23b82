"""Where the teacher lives: a local model (``model.teacher: <hub id or directory>``, colocated or sharded with
the student) or a ``ServedTeacher`` behind an inference server (``model.teacher: {class_path: ...}``)."""

from tiplight.teachers.base import (
    Pending,
    ServedTeacher,
    Span,
    get_teacher,
    list_teachers,
    register_teacher,
    spans,
)
from tiplight.teachers.transport import Endpoint, TeacherServerError
from tiplight.teachers.vllm import VLLMHidden, VLLMTopK

__all__ = [
    "Endpoint",
    "Pending",
    "ServedTeacher",
    "Span",
    "TeacherServerError",
    "VLLMHidden",
    "VLLMTopK",
    "get_teacher",
    "list_teachers",
    "register_teacher",
    "spans",
]
