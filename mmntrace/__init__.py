"""mmntrace: trace Linux MMU notifiers."""

from .recording import Recording, load  # noqa: E402,F401

__all__ = ["load", "Recording"]
