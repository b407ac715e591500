"""`qunlearn audit`: recovery attacks (quantization, relearning, precision) on an unlearned checkpoint, with verdicts."""

from qunlearn.audit.run import AuditInputs, AuditSettings, run_audit
from qunlearn.audit.verdict import recovery, verdict

__all__ = ["AuditInputs", "AuditSettings", "recovery", "run_audit", "verdict"]
