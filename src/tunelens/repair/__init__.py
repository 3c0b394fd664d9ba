"""tunelens repair: restore what the fine-tune broke. Methods register by name (see core.register);
importing this package registers the built-in ones, then the plug-in methods (tunelens.plugins: entry points
`tunelens.repairs` and TUNELENS_PLUGINS)."""

from .core import REPAIRS, Repair, RepairResult, get, make_options, register, repair
from . import dare, graft, interpolate, linear, task_arithmetic, ties  # noqa: F401
from . import safelora, safemerge  # noqa: F401

__all__ = ["REPAIRS", "Repair", "RepairResult", "get", "make_options", "register", "repair"]

from .. import plugins  # noqa: E402  (last: a plug-in imports the names above)

plugins.load(plugins.REPAIRS)
