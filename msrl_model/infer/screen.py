r"""How the exact engine screens its buffer per query: fp32, or int8 codes with a per-row error bound.

Every screened similarity comes with a margin that provably contains the exact one, so the engine
recomputes exactly only rows whose margin reaches the decision (the derivation of the bound is in
:mod:`msrl_model.infer.engine`, "Screening"). int8 reads N·D bytes of the buffer per query instead of
4·N·D.
"""

from __future__ import annotations

import torch
from torch import Tensor

SCREENS = ("fp32", "int8")  # how the buffer is screened per query (engine docstring, "Screening")
SLACK = 1 + 2.0 ** -20  # relative head-room on every margin, over the float64 evaluation of the bound
QUANT_ROWS = 8192  # rows quantised at a time (float64 temporaries: 8 · 8192 · D bytes)


class ScreenRows:
    r"""The buffer's screening representation and, per row, the constants of its error bound.

    Each query's screened similarities :math:`\tilde s_j` and margins :math:`m_j` satisfy
    :math:`|\hat s_j - \tilde s_j| \le m_j`, :math:`\hat s_j` the exact similarity (``canonical_dots``
    in the working dtype). With :math:`m_j = \alpha_j \lVert\delta_q\rVert + \beta_j \lVert q\rVert`
    (times ``SLACK``): fp32, :math:`\alpha_j = 0` and :math:`\beta_j = 3\gamma\lVert e_j\rVert`; int8,
    :math:`\alpha_j = a_j\lVert c_j\rVert`, :math:`\beta_j = \lVert\delta_j\rVert + 3\gamma\lVert e_j\rVert`
    (:mod:`msrl_model.infer.engine`, "Screening"). Memory: N·D bytes of codes (int8) and 8·N bytes per per-row constant.
    """

    def __init__(self, n: int, dim: int, screen: str, dtype: torch.dtype, device: torch.device) -> None:
        self.kind = screen
        unit = torch.finfo(dtype).eps / 2
        self.gamma = (dim + 2) * unit / (1 - (dim + 2) * unit)  # γ_{D+2}: one dot product's rounding, relative
        f64 = {"dtype": torch.float64, "device": device}
        self.beta = torch.empty(n, **f64)
        if screen == "int8":
            self.codes = torch.empty(n, dim, dtype=torch.int8, device=device)  # c_j
            self.scale = torch.empty(n, **f64)  # a_j
            self.alpha = torch.empty(n, **f64)  # a_j ‖c_j‖

    def store(self, start: int, e: Tensor) -> None:
        """Record rows start.. of E_b from their embeddings ``e`` (B, D)."""
        for lo in range(0, e.shape[0], QUANT_ROWS):
            block = e[lo:lo + QUANT_ROWS].to(torch.float64)  # exact: every working dtype embeds in float64
            rows = slice(start + lo, start + lo + block.shape[0])
            beta = 3 * self.gamma * block.norm(dim=1)
            if self.kind == "int8":
                scale, codes = quantise(block)
                self.codes[rows], self.scale[rows] = codes, scale
                self.alpha[rows] = scale * codes.to(torch.float64).norm(dim=1)
                beta += (block - scale[:, None] * codes).norm(dim=1)  # ‖δ_j‖
            self.beta[rows] = beta * SLACK

    def screen(self, e_q: Tensor, emb: Tensor | None) -> tuple[Tensor, Tensor]:
        """Screened similarities and margins, each (N, Q) float64, of queries ``e_q`` (Q, D); ``emb`` is
        E_b for the fp32 screen. One pass over the buffer: 4·N·D bytes (fp32) or N·D bytes (int8)."""
        q = e_q.to(torch.float64)
        q_norm = q.norm(dim=1)  # (Q,)
        if self.kind == "fp32":
            sims = (emb @ e_q.T).to(torch.float64)
            return sims, self.beta[:, None] * q_norm
        b, d = quantise(q)  # q = b·d + δ_q
        dq_norm = (q - b[:, None] * d).norm(dim=1)
        counts = torch._int_mm(self.codes, d.T.contiguous())  # (N, Q) int32 c_j·d, exact: |·| ≤ 127²·D < 2³¹
        sims = counts.to(torch.float64) * self.scale[:, None] * b
        return sims, (self.alpha[:, None] * dq_norm + self.beta[:, None] * q_norm) * SLACK


def quantise(x: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-row int8: x (B, D) float64 = a[:, None]·c + δ with a = max|x|/127 (0 for a zero row),
    c = round(x / a) in [-127, 127]."""
    scale = x.abs().amax(dim=1) / 127
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round(x / safe[:, None]).clamp_(-127, 127).to(torch.int8)
    return scale, codes


__all__ = ["SCREENS", "ScreenRows", "quantise"]
