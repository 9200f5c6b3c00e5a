"""Compiler passes: each a pure function HWIR → new HWIR, one per file, run in this order."""

from .calibrate import calibrate
from .choose_formats import choose_formats
from .drc import DesignRuleError, check_design_rules, drc
from .fold_norm import fold_norm
from .place import place

__all__ = ["DesignRuleError", "calibrate", "check_design_rules", "choose_formats", "drc", "fold_norm",
           "place"]
