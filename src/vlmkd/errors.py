"""One exception family. The CLI turns any `VlmkdError` into one line on stderr and exit code 2."""


class VlmkdError(Exception):
    """A user-facing error: the message says what is wrong and what to do."""


class ConfigError(VlmkdError):
    """A config file, key or value is wrong."""


class DataError(VlmkdError):
    """A dataset file, folder, list line or label is wrong."""


class ArtifactError(VlmkdError):
    """A cached artifact is missing, stale or corrupt."""


class BackendError(VlmkdError):
    """A model backend (VLM server, transformers model, CLIP) failed or is misconfigured."""


class StorageError(VlmkdError):
    """Reading a dataset from remote storage failed (unreachable, gone, refused): not a bad image, so never
    skipped under data.on_bad_image=skip."""
