"""The compiler: HWIR (schema, load/save, validation), frontends (torch, ONNX), passes, ONNX export.

    ir = compile_model("runs/basicmotions-rhel", "emulator", samples)   # → fold_norm … drc
    save_ir(ir, "model.yaml")                                           # + model.npz
    export_onnx(model_or_ir, "model.onnx"); from_onnx("model.onnx")     # the same HWIR
"""

from .capabilities import Capabilities
from .errors import IRError
from .frontend_checkpoint import from_checkpoint, from_model
from .frontend_onnx import from_onnx
from .interpret import run, trace
from .ir import HWIR, SCHEMA_VERSION, Finding, Format, Node, Range, Saturation, load_ir, save_ir
from .onnx_export import export_onnx, to_onnx
from .passes import DesignRuleError, calibrate, check_design_rules, choose_formats, drc, fold_norm, place
from .pipeline import compile_model, target_capabilities, to_hwir

__all__ = ["HWIR", "SCHEMA_VERSION", "Capabilities", "DesignRuleError", "Finding", "Format", "IRError",
           "Node", "Range", "Saturation", "calibrate", "check_design_rules", "choose_formats",
           "compile_model", "drc", "export_onnx", "fold_norm", "from_checkpoint", "from_model",
           "from_onnx", "load_ir", "place", "run", "save_ir", "target_capabilities", "to_hwir",
           "to_onnx", "trace"]
