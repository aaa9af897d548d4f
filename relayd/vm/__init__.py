"""The VM: where files land before the push, driven through an executor (local, or over SSH)."""
