"""sink: a fast SMTP sink with an append-only spool."""

__version__ = "0.1.0"
