"""Evaluation metrics (architecture §4 "Metrics"): survival (C-index, Kaplan–Meier, log-rank) and
classification (macro AUC, macro F1). Survival functions take ``censorship`` (1 = censored).

    from msrl_model.stats import c_index, kaplan_meier, logrank_test, auc_macro_ovr, f1_macro
"""

from msrl_model.stats.classification import auc_macro_ovr, f1_macro
from msrl_model.stats.survival import c_index, kaplan_meier, logrank_test

__all__ = ["auc_macro_ovr", "c_index", "f1_macro", "kaplan_meier", "logrank_test"]
