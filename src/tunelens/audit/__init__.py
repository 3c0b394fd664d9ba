"""tunelens audit: base vs tuned on the same items — every gain and every cost, with its uncertainty.

Suites register by name (see core.register); importing this package registers the built-in ones, then the
plug-in suites (tunelens.plugins: entry points `tunelens.suites` and TUNELENS_PLUGINS).
"""

from . import calibration, compatibility, context, forgetting, over_refusal, robustness, safety, task  # noqa: F401
from .core import SUITES, AuditContext, Suite, SuiteResult, register
from .runner import DEFAULT_SUITES, LEDGER_SCHEMA, check_tokenizers, run_audit

__all__ = ["SUITES", "AuditContext", "Suite", "SuiteResult", "register", "DEFAULT_SUITES", "LEDGER_SCHEMA",
           "check_tokenizers", "run_audit"]

from .. import plugins  # noqa: E402  (last: a plug-in imports the names above)

plugins.load(plugins.SUITES)
