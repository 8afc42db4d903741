"""equal: build instruction-tuning data cheaply and well."""

from equal._validation import as_generator, check_embeddings, l2_normalize
from equal.errors import ConfigError, ConvergenceWarning, DataError, EqualError, LLMError

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ConvergenceWarning",
    "DataError",
    "EqualError",
    "LLMError",
    "__version__",
    "as_generator",
    "check_embeddings",
    "l2_normalize",
]
