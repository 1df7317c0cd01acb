"""The dashboard of `orbatch serve`: server-rendered pages of batches and the fleet, tested in a real browser."""

from jobs.api.pages.assets import mount_static
from jobs.api.pages.render import error_page, wants_page
from jobs.api.pages.routes import router

__all__ = ["error_page", "mount_static", "router", "wants_page"]
