"""The MSRL networks and losses (paper §3, architecture §4)."""

from msrl_model.nn.baselines import GatedABMIL, SNNBaseline
from msrl_model.nn.config import ConfigError, MSRLConfig
from msrl_model.nn.genomics import (SNN, GenomicsEncoder, Inductor, PathwayDecoder, SNNBlock, gather_groups,
                                    pathway_scores)
from msrl_model.nn.graph import (GCN, GSL, KNN_GRAPHS, GraphMode, cosine_knn_adjacency, euclidean_knn_adjacency,
                                gsl_adjacency_dense, gsl_adjacency_sparse, symmetric_normalised_edges)
from msrl_model.nn.heads import ClassificationHead, SurvivalHead, SurvivalOutput, survival_from_logits, task_head
from msrl_model.nn.losses import (classification_loss, f_align, fused_loss, g_align, info_nce, inter_loss,
                                  intra_loss, nll_survival_loss, sparsity_balanced_bce,
                                  sparsity_balanced_bce_sparse)
from msrl_model.nn.msrl import MSRLNet, PretrainNet, SlideBatch, TaskSpec
from msrl_model.nn.slide_encoder import SlideEncoder, grid_positions, pad_bags, sincos_2d, subsample_patches

__all__ = [
    "GatedABMIL", "SNNBaseline", "ConfigError", "MSRLConfig", "SNN", "GenomicsEncoder", "Inductor",
    "PathwayDecoder", "SNNBlock", "gather_groups", "pathway_scores", "GCN", "GSL", "KNN_GRAPHS", "GraphMode",
    "cosine_knn_adjacency", "euclidean_knn_adjacency", "gsl_adjacency_dense", "gsl_adjacency_sparse",
    "symmetric_normalised_edges", "ClassificationHead", "SurvivalHead", "SurvivalOutput",
    "survival_from_logits", "task_head", "classification_loss", "f_align", "fused_loss", "g_align",
    "info_nce", "inter_loss", "intra_loss", "nll_survival_loss", "sparsity_balanced_bce",
    "sparsity_balanced_bce_sparse", "MSRLNet", "PretrainNet", "SlideBatch", "TaskSpec", "SlideEncoder",
    "grid_positions", "pad_bags", "sincos_2d", "subsample_patches",
]
