"""hymba-deploy: NVIDIA Hymba from PyTorch to ONNX to TensorRT, with numerical parity at each step."""

from .cache import HybridMambaAttentionDynamicCache
from .checkpoint import load_model
from .config import HymbaConfig, preset
from .errors import HymbaDeployError
from .model import HymbaForCausalLM

__version__ = "0.1.0"

__all__ = ["HybridMambaAttentionDynamicCache", "HymbaConfig", "HymbaDeployError", "HymbaForCausalLM",
           "load_model", "preset", "__version__"]
