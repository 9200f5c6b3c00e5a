"""compile_model: any source → HWIR → fold_norm → calibrate → choose_formats → place → drc."""

from __future__ import annotations

from pathlib import Path

from ..models.hssm import HSSM
from ..targets import capabilities
from .capabilities import Capabilities
from .frontend_checkpoint import from_checkpoint, from_model
from .frontend_onnx import from_onnx
from .ir import HWIR, load_ir
from .passes import calibrate, choose_formats, drc, fold_norm, place


def to_hwir(source) -> HWIR:
    """An HWIR from an HWIR, an HSSM, or a path: .onnx, .yaml (a saved HWIR), else a checkpoint
    file or run directory."""
    if isinstance(source, HWIR):
        return source
    if isinstance(source, HSSM):
        return from_model(source)
    path = Path(source)
    if path.suffix == ".onnx":
        return from_onnx(path)
    if path.suffix in (".yaml", ".yml"):
        return load_ir(path)
    return from_checkpoint(path)


def target_capabilities(target: str | Capabilities) -> Capabilities:
    """A target's capabilities, by name from the targets registry or as given."""
    return target if isinstance(target, Capabilities) else capabilities(target)


def compile_model(source, target: str | Capabilities, sample_data, *, word_bits: int | None = None,
                  headroom_bits: float = 1.0) -> HWIR:
    """Compile `source` for `target`, calibrating on `sample_data` (batch, time, features).

    Raises IRError for an unusable source and DesignRuleError if the target cannot run the result.
    """
    caps = target_capabilities(target)
    ir = fold_norm(to_hwir(source))
    ir = calibrate(ir, sample_data)
    ir = choose_formats(ir, caps, word_bits, headroom_bits)
    return drc(place(ir, caps), caps)
