__version__ = "0.1.0"

from . import model  # registers the presets with timm
