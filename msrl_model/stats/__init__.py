"""Evaluation metrics (architecture §4 "Metrics"): survival (C-index, Kaplan–Meier, log-rank) and
classification (macro AUC, macro F1), and paired comparisons of two methods across folds and by a
paired bootstrap over cases (:mod:`msrl_model.stats.paired`). Survival functions take
``censorship`` (1 = censored).

    from msrl_model.stats import c_index, kaplan_meier, logrank_test, auc_macro_ovr, f1_macro
"""

from msrl_model.stats.classification import auc_macro_ovr, f1_macro
from msrl_model.stats.paired import (
    PairedFold, auc_terms, c_index_terms, corrected_resampled_ttest, paired_bootstrap)
from msrl_model.stats.survival import c_index, kaplan_meier, logrank_test

__all__ = ["PairedFold", "auc_macro_ovr", "auc_terms", "c_index", "c_index_terms", "corrected_resampled_ttest",
           "f1_macro", "kaplan_meier", "logrank_test", "paired_bootstrap"]
