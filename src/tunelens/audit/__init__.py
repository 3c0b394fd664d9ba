"""tunelens audit: base vs tuned on the same items — every gain and every cost, with its uncertainty.

Suites register by name (see core.register); importing this package registers the built-in ones (every module
in this folder is imported: a new suite is a new file), then the plug-in suites (tunelens.plugins: entry points
`tunelens.suites` and TUNELENS_PLUGINS).
"""

from .. import plugins
from .core import SUITES, AuditContext, Suite, SuiteResult, register

plugins.import_builtins(__name__, __path__)

from .runner import LEDGER_SCHEMA, check_tokenizers, run_audit

__all__ = ["SUITES", "AuditContext", "Suite", "SuiteResult", "register", "LEDGER_SCHEMA",
           "check_tokenizers", "run_audit"]

plugins.load(plugins.SUITES)  # last: a plug-in imports the names above
