"""nanopilot: autonomous, closed-loop X-ray nanodiffraction with Bluesky."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nanopilot")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
