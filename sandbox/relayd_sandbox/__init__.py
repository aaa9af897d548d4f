"""Faithful local stand-ins for the services relayd talks to, all on 127.0.0.1.

The tests and ``relayd demo`` drive the real client libraries (huggingface_hub, aligo, git, git-lfs,
OpenSSH) against these servers, so what passes here passes for the same reasons against the real ones.
A distribution of its own (``relayd-sandbox``): an installed relayd carries no fake.
"""

__version__ = "0.1.0"
