"""tiplight: on-policy distillation of language models with pluggable token selection (TIP)."""

__version__ = "0.1.0"

# Built-in parts register their named data sources on import (``tiplight.sources.register_source``).
from tiplight import toy as _toy  # noqa: F401
