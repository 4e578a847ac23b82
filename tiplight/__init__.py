"""tiplight: on-policy distillation of language models with pluggable token selection (TIP)."""

__version__ = "0.1.0"
