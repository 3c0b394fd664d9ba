"""tunelens repair: restore what the fine-tune broke. Methods register by name (see core.register);
importing this package registers the built-in ones (every module in this folder but the sweep runner: a new
method is a new file), then the plug-in methods (tunelens.plugins: entry points `tunelens.repairs` and
TUNELENS_PLUGINS)."""

from .. import plugins
from .core import REPAIRS, Repair, RepairResult, get, make_options, register, repair

plugins.import_builtins(__name__, __path__, skip=("sweep",))  # the sweep registers nothing and loads the audit

__all__ = ["REPAIRS", "Repair", "RepairResult", "get", "make_options", "register", "repair"]

plugins.load(plugins.REPAIRS)  # last: a plug-in imports the names above
