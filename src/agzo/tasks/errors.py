"""The one exception type that task loading raises for bad or missing data.

It subclasses ValueError so callers that already catch ValueError keep working, while a
CLI can catch exactly this type and print the message alone (no traceback): every message
names the file, line and field involved, which is all a user needs to fix the data.
"""

from __future__ import annotations


class TaskDataError(ValueError):
    """Task data is missing, malformed, or too small for the requested splits."""
