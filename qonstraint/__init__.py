__version__ = "0.1.0"

from . import model, baselines  # registers the presets and vit_spt_lsa_tiny with timm
