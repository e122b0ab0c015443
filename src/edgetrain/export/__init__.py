"""Export a trained run's model: ``pt2`` (torch.export), ``onnx``, ``torchscript`` or
``safetensors``, from its final, best or last weights (``edgetrain export RUN``)."""

from edgetrain.export.api import QUANTIZE, WHICH, ExportResult, export_run
from edgetrain.export.formats import FORMATS

__all__ = ["FORMATS", "QUANTIZE", "WHICH", "ExportResult", "export_run"]
