"""vlmkd: distill large vision-language models into small, fast vision models."""

from vlmkd.errors import ConfigError, DataError, VlmkdError

__version__ = "0.1.0"
__all__ = ["ConfigError", "DataError", "VlmkdError", "__version__"]
