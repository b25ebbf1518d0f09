r"""How the exact engine screens its buffer per query: fp32, or int8 codes with a per-row error bound.

Every query gets, for every buffer row j, an interval :math:`[\ell_j, u_j]` that provably holds the exact
similarity :math:`\hat s_j` (``canonical_dots`` in the working dtype), so the engine recomputes exactly only
the rows whose interval reaches a decision (:mod:`msrl_model.infer.engine`, "Screening"). int8 reads N·D
bytes of the buffer per query instead of 4·N·D (10^6 × 1,536: 1.5 GB instead of 6.1 GB).

**The bound.** Notation: :math:`e_j` a buffer embedding, :math:`q` the query's, u the unit roundoff of the
working dtype, :math:`\gamma = \gamma_{D+2} = (D+2)u / (1-(D+2)u)`.

* int8 rows: :math:`e_j = a_j c_j + \delta_j` with :math:`a_j = \max_i |e_{ji}| / 127` (rounded, stored exactly
  in float64), :math:`c_j \in [-127, 127]^D` and the residual :math:`\delta_j` (exact, real). The query is
  quantised the same way in float64: :math:`q = b\,d + \delta_q`. The screened similarity is
  :math:`\tilde s_j = a_j b\,(c_j \cdot d)`, with :math:`c_j \cdot d` exact in int32
  (:math:`|\cdot| \le 127^2 D < 2^{31}`).
  Then :math:`e_j \cdot q - \tilde s_j = \delta_j \cdot q + a_j c_j \cdot \delta_q`, and the canonical dot is
  within :math:`\gamma_D \lVert e_j\rVert \lVert q\rVert` of :math:`e_j \cdot q`, so by Cauchy–Schwarz

  .. math:: |\hat s_j - \tilde s_j| \le m_j = \alpha_j \lVert\delta_q\rVert + \beta_j \lVert q\rVert,\quad
            \alpha_j = a_j \lVert c_j\rVert,\quad \beta_j = \lVert\delta_j\rVert + 3\gamma \lVert e_j\rVert.

  :math:`\lVert\delta_j\rVert` is bounded from the residual :math:`\hat r_j = \mathrm{fl}(e_j - a_j c_j)` computed
  in the working dtype: per coordinate :math:`|\delta_{ji}| \le |\hat r_{ji}| / (1-u) + u |a_j c_{ji}|`, hence
  :math:`\lVert\delta_j\rVert \le \lVert\hat r_j\rVert / (1-u) + u\,\alpha_j`. Every stored norm is an upper
  bound on the exact one (:meth:`ScreenRows._norm_up`); the float64 products and sums of the per-query
  arithmetic round by ≲ 10^-15 relative.
* fp32 rows (no codes): :math:`\tilde s = E_b q` by one matrix product, :math:`\alpha_j = 0`,
  :math:`\beta_j = 3\gamma\lVert e_j\rVert` (two dot products' worth of rounding, plus one spare).

Every margin is multiplied by ``SLACK`` = 1 + 2^-20, far above the float64 rounding of its evaluation.
The test suite checks the interval against exact similarities on adversarial buffers (duplicated rows,
rows an ulp apart, rows sharing their codes, queries equal to a buffer row).

**Cost** per query: the int32 count :math:`C d` (one read of the N·D codes, ``torch._int_mm``, oneDNN's
s8·s8 GEMM), then five float64 passes over N values. Precompute: the working dtype for the N·D work in
blocks of ``QUANT_ROWS`` rows (no full-size temporaries), float64 only for per-row norms.
"""

from __future__ import annotations

import torch
from torch import Tensor

SCREENS = ("fp32", "int8")  # how the buffer is screened per query (engine docstring, "Screening")
SLACK = 1 + 2.0 ** -20  # relative head-room on every margin, over the float64 evaluation of the bound
QUANT_ROWS = 4096  # rows quantised at a time (working-dtype temporaries: 3 · 4 · 4096 · D bytes in fp32)


class ScreenRows:
    r"""The buffer's screening representation and, per row, the constants :math:`\alpha_j, \beta_j` of its
    error bound (module docstring). Memory: N·D bytes of codes (int8) and 8·N bytes per per-row constant."""

    def __init__(self, n: int, dim: int, screen: str, dtype: torch.dtype, device: torch.device) -> None:
        self.kind = screen
        self.unit = torch.finfo(dtype).eps / 2  # u of the working dtype
        self.gamma = (dim + 2) * self.unit / (1 - (dim + 2) * self.unit)  # γ_{D+2}
        f64 = {"dtype": torch.float64, "device": device}
        self.beta = torch.empty(n, **f64)  # β_j
        if screen == "int8":
            self.codes = torch.empty(n, dim, dtype=torch.int8, device=device)  # c_j
            self.scale = torch.empty(n, **f64)  # a_j
            self.alpha = torch.empty(n, **f64)  # α_j = a_j ‖c_j‖

    def store(self, start: int, e: Tensor) -> None:
        """Record rows start.. of E_b from their embeddings ``e`` (B, D) in the working dtype."""
        for lo in range(0, e.shape[0], QUANT_ROWS):
            block = e[lo:lo + QUANT_ROWS]
            rows = slice(start + lo, start + lo + block.shape[0])
            beta = 3 * self.gamma * self._norm_up(block)
            if self.kind == "int8":
                scale = block.abs().amax(dim=1) / 127  # a_j, (B,) working dtype
                safe = torch.where(scale > 0, scale, torch.ones_like(scale))[:, None]
                codes = torch.div(block, safe).round_().clamp_(-127, 127)  # c_j, integer values
                self.codes[rows] = codes.to(torch.int8)
                alpha = scale.to(torch.float64) * self._norm_up(codes)
                resid = torch.addcmul(block, codes, scale[:, None], value=-1)  # r̂_j = fl(e_j - a_j c_j)
                beta += self._norm_up(resid) / (1 - self.unit) + self.unit * alpha
                self.scale[rows], self.alpha[rows] = scale.to(torch.float64), alpha
            self.beta[rows] = beta * SLACK

    def _norm_up(self, x: Tensor) -> Tensor:
        r"""Upper bounds on the row norms of x (B, D) in the working dtype, as float64: the computed norm
        :math:`\hat n` is within :math:`\gamma \lVert x\rVert + \sqrt{D\,\mathrm{tiny}}` of the exact one (any
        summation order; the second term covers squares that underflow), so
        :math:`\lVert x\rVert \le (\hat n + \sqrt{D\,\mathrm{tiny}}) / (1 - \gamma)`."""
        floor = (x.shape[1] * torch.finfo(x.dtype).tiny) ** 0.5
        return (torch.linalg.vector_norm(x, dim=1).to(torch.float64) + floor) / (1 - self.gamma)

    def bounds(self, e_q: Tensor, emb: Tensor | None) -> tuple[Tensor, Tensor]:
        r"""Lower and upper bounds :math:`\tilde s_j \mp m_j` on the exact similarities, each (Q, N) float64, of
        queries ``e_q`` (Q, D); ``emb`` is E_b for the fp32 screen. One pass over the buffer: 4·N·D bytes
        (fp32) or N·D bytes (int8)."""
        q = e_q.to(torch.float64)
        q_norm = q.norm(dim=1)  # (Q,)
        if self.kind == "fp32":
            low = (e_q @ emb.T).to(torch.float64)  # (Q, N)
            margin = self.beta[None] * (q_norm[:, None] * SLACK)
        else:
            b, d = quantise(q)  # q = b·d + δ_q
            dq_norm = (q - b[:, None] * d).norm(dim=1)
            counts = torch._int_mm(self.codes, d.to(torch.int8).T.contiguous())  # (N, Q) int32 c_j·d, exact
            low = counts.T.to(torch.float64, memory_format=torch.contiguous_format)  # (Q, N)
            low.mul_(self.scale[None]).mul_(b[:, None])  # s̃ = a_j b (c_j·d)
            margin = self.beta[None] * (q_norm[:, None] * SLACK)
            margin.addcmul_(self.alpha[None], dq_norm[:, None] * SLACK)
        high = low + margin
        return low.sub_(margin), high


def quantise(x: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-row int8 of x (B, D) float64: x = a[:, None]·c + δ with a = max|x|/127 (0 for a zero row),
    c = round(x / a) in [-127, 127] (returned as float64 integer values)."""
    scale = x.abs().amax(dim=1) / 127
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, torch.round(x / safe[:, None]).clamp_(-127, 127)


__all__ = ["SCREENS", "ScreenRows", "quantise"]
