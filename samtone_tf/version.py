"""The version of samtone_tf (setup.cfg reads it here; markers and manifests record it)."""

__version__ = "0.1.0"
