"""The PyTorch side: `graphfix.export()` (export, repair, prove) and `graphfix.verify()` (compare with a module).

torch is imported lazily, inside the functions: graphfix runs without it.
"""

from graphfix.exporting.export import ExportError, ExportReport, export

__all__ = ["ExportError", "ExportReport", "export"]
