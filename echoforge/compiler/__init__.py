"""The compiler: HWIR (schema, load/save, validation), frontends (torch, ONNX), passes, ONNX export.

    ir = compile_model("runs/basicmotions-rhel", "emulator", samples)   # → fold_norm … drc
    save_ir(ir, "model.yaml")                                           # + model.npz
    export_onnx(model_or_ir, "model.onnx"); from_onnx("model.onnx")     # the same HWIR
"""

import importlib

# Public name → submodule. Loaded on first use (PEP 562) so that `echoforge --help` and the other
# subcommands do not pay for onnx and torch.
_HOMES = {
    "Capabilities": "capabilities", "IRError": "errors", "from_checkpoint": "frontend_checkpoint",
    "from_model": "frontend_checkpoint", "from_onnx": "frontend_onnx", "run": "interpret",
    "trace": "interpret", "export_onnx": "onnx_export", "to_onnx": "onnx_export",
    "compile_model": "pipeline", "target_capabilities": "pipeline", "to_hwir": "pipeline",
    **dict.fromkeys(("HWIR", "SCHEMA_VERSION", "Finding", "Format", "Node", "Range", "Saturation",
                     "load_ir", "save_ir"), "ir"),
    **dict.fromkeys(("DesignRuleError", "calibrate", "check_design_rules", "choose_formats", "drc",
                     "fold_norm", "place"), "passes"),
}


def __getattr__(name):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)


__all__ = ["HWIR", "SCHEMA_VERSION", "Capabilities", "DesignRuleError", "Finding", "Format", "IRError",
           "Node", "Range", "Saturation", "calibrate", "check_design_rules", "choose_formats",
           "compile_model", "drc", "export_onnx", "fold_norm", "from_checkpoint", "from_model",
           "from_onnx", "load_ir", "place", "run", "save_ir", "target_capabilities", "to_hwir",
           "to_onnx", "trace"]
