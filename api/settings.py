"""The settings moved to `eventkeep.settings` (every entry point reads them, not only the API's);
the HTTP layer's modules and older imports find them here too."""

from eventkeep.settings import Mode, Settings

__all__ = ["Mode", "Settings"]
