"""Newsletter publishing pipeline: Markdown issue -> responsive email -> subscribers -> archive."""

__version__ = "0.1.0"
