"""The training configuration; callers import from here (the module moved to pixpro_of/config/schema.py)."""
from pixpro_of.config.schema import *  # noqa: F401,F403
