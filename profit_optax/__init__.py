"""profit_optax: PROFIT, the proximal fine-tuning optimizer, for JAX and Optax.

PROFIT (Chakravarthy et al., arXiv 2412.01930) fine-tunes a converged model on a
nearby distribution while keeping what it knew: every step explores with a
reference optimizer, then takes the main optimizer's step from the anchor with
the new gradient stripped of its component against the exploration.
"""

from profit_optax._src.ftp import FTPState as FTPState
from profit_optax._src.ftp import ftp as ftp
from profit_optax._src.l2sp import L2SPState as L2SPState
from profit_optax._src.l2sp import l2sp as l2sp
from profit_optax._src.profit import ProfitDiagnostics as ProfitDiagnostics
from profit_optax._src.profit import ProfitState as ProfitState
from profit_optax._src.profit import find_profit_state as find_profit_state
from profit_optax._src.profit import get_diagnostics as get_diagnostics
from profit_optax._src.profit import profit as profit
from profit_optax._src.spd import SPDState as SPDState
from profit_optax._src.spd import spd as spd
from profit_optax._src.step import ProfitStepOutput as ProfitStepOutput
from profit_optax._src.step import profit_step as profit_step
from profit_optax._src.warmup import ProfitWarmupState as ProfitWarmupState
from profit_optax._src.warmup import profit_warmup as profit_warmup

__version__ = "0.2.0"

__all__ = [
  "FTPState",
  "L2SPState",
  "ProfitDiagnostics",
  "ProfitState",
  "ProfitStepOutput",
  "ProfitWarmupState",
  "SPDState",
  "__version__",
  "find_profit_state",
  "ftp",
  "get_diagnostics",
  "l2sp",
  "profit",
  "profit_step",
  "profit_warmup",
  "spd",
]
