"""relayd: a resumable, hash-verified relay for model files."""

__version__ = "0.1.0"
