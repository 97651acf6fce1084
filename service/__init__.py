"""The job service for medical-event submissions: its domain, storage and messaging adapters,
use cases, the composition root (`bootstrap`), the HTTP API and the `medevents` command."""

from importlib.metadata import PackageNotFoundError, version

try:
    # The one version of the package, the image and the OpenAPI document: pyproject.toml's
    # `[project] version`, read from the installed distribution's metadata.
    __version__ = version("medevents")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
