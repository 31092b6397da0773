"""Transformer-XL relative attention.

Dai, Yang, Yang, Carbonell, Le, Salakhutdinov, "Transformer-XL: Attentive Language Models Beyond a
Fixed-Length Context", 2019 (arXiv 1901.02860). Section 3.3 drops the absolute encoding added to the
input and writes the attention score with only the *distance* i - j in it:

    A^rel_{i,j} = E_xi^T Wq^T Wk,E E_xj        (a) content-based addressing
                + E_xi^T Wq^T Wk,R R_{i-j}     (b) content-dependent positional bias
                + u^T Wk,E E_xj                (c) global content bias
                + v^T Wk,R R_{i-j}             (d) global positional bias

R is the fixed sinusoidal table of Vaswani et al.; Wk,R is learned. u and v are learned vectors standing
in for the query in (c) and (d): in the absolute formulation that query would be U_i, which knows the
absolute position i. Section 3.2 adds the segment-level recurrence: the previous segment's hidden states
(the "memory") are concatenated to the keys and values and receive no gradient (the SG(.) of section 3.3).

Gathering one R_{i-j} per (i, j) pair (`naive_relative_position_scores`) costs q_len * k_len vectors.
Appendix B instead scores every query against every row of R once, with R ordered by *descending*
distance, and then slides each row into place (`relative_shift`). Every convention here follows the
released code (kimiyoung/transformer-xl, pytorch/mem_transformer.py): R's column layout and row order,
u and v per head, the 1/sqrt(d_head) scale on the whole score, the causal mask offset by the memory.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._checks import require_base, require_even_dim, require_positive_int
from .attention import causal_mask
from .sinusoidal import sinusoidal_frequencies


def transformer_xl_position_encoding(
    k_len: int, dim: int, base: float = 10000.0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Transformer-XL's R: ``[k_len, dim]``, row m encodes the distance ``k_len - 1 - m`` (section 3.3).

    The frequencies are those of Vaswani et al. 2017, section 3.5 (`sinusoidal_frequencies`). Two layout
    choices follow the released code (``PositionalEmbedding`` and ``arange(klen - 1, -1, -1)``):

    * columns are ``[sin block | cos block]``, not interleaved as in `sinusoidal_encoding`. R only ever meets
      the learned W_k,R, so a column permutation of R is absorbed by permuting W_k,R's columns: both layouts
      give the same family of models, but a trained checkpoint works only with the layout it was trained on.
    * rows run from distance k_len - 1 down to 0: the order `relative_shift` expects (Appendix B).

    Angles are formed in float64 and rounded once to ``dtype``.
    """
    require_positive_int(k_len, "k_len")
    distances = torch.arange(k_len - 1, -1, -1, dtype=torch.float64)
    angles = distances[:, None] * sinusoidal_frequencies(dim, base)  # also validates dim (even) and base
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1).to(dtype)


def relative_shift(x: torch.Tensor) -> torch.Tensor:
    """Re-index scores against descending-distance R into scores indexed by (query i, key j) (Appendix B).

    ``x`` is ``[..., q_len, k_len]``, ``x[..., i, m]`` = query i scored against R's row m, i.e. distance
    ``k_len - 1 - m``. Queries are the last q_len of the k_len keys (query i sits at ``mem_len + i`` with
    ``mem_len = k_len - q_len``), so the wanted entry (i, j), distance ``mem_len + i - j``, is
    ``x[..., i, j + q_len - 1 - i]``: row i has to slide left by ``q_len - 1 - i``.

    The trick: prepend a zero column (``[..., q_len, k_len + 1]``), read the same buffer as
    ``[..., k_len + 1, q_len]``, drop its first row (q_len numbers), and read the rest as ``[..., q_len, k_len]``.
    Output (i, j) then sits at flat offset ``q_len + i * k_len + j = i * (k_len + 1) + 1 + (j + q_len - 1 - i)``
    of the padded buffer: padded row i, i.e. ``x[..., i, j + q_len - 1 - i]``, exactly as wanted whenever
    ``j <= mem_len + i`` -- the causal region. Right of that boundary the read runs on into the next padded
    row (a pad zero, or a score of query i + 1): those entries are GARBAGE, and the causal mask must
    remove them. Returns a tensor of ``x``'s shape.
    """
    if x.dim() < 2:
        raise ValueError(f"relative_shift needs [..., q_len, k_len]; got shape {tuple(x.shape)}")
    *lead, q_len, k_len = x.shape
    if q_len > k_len:
        raise ValueError(f"relative_shift needs q_len <= k_len (queries are the last keys); got {q_len} > {k_len}")
    padded = torch.cat([x.new_zeros(*lead, q_len, 1), x], dim=-1)
    padded = padded.reshape(*lead, k_len + 1, q_len)
    return padded[..., 1:, :].reshape(*lead, q_len, k_len)


def _check_head_shapes(q: torch.Tensor, r: torch.Tensor, bias: torch.Tensor, bias_name: str) -> None:
    if q.dim() != 4:
        raise ValueError(f"q must be [batch, heads, q_len, d_head]; got shape {tuple(q.shape)}")
    if r.dim() != 3 or r.shape[0] != q.shape[1] or r.shape[2] != q.shape[3]:
        raise ValueError(f"r must be [heads={q.shape[1]}, k_len, d_head={q.shape[3]}]; got {tuple(r.shape)}")
    if bias.shape != (q.shape[1], q.shape[3]):
        raise ValueError(f"{bias_name} must be [heads, d_head] = {(q.shape[1], q.shape[3])}; got {tuple(bias.shape)}")
    if q.shape[2] > r.shape[1]:
        raise ValueError(f"q_len must be <= k_len (rows of r); got {q.shape[2]} > {r.shape[1]}")


def relative_position_scores(q: torch.Tensor, r: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Terms (b) + (d) of section 3.3, computed the efficient way of Appendix B: ``[batch, heads, q_len, k_len]``.

    ``q`` is ``[batch, heads, q_len, d_head]`` (W_q E_xi), ``r`` is ``[heads, k_len, d_head]`` (W_k,R R with R
    in descending-distance order, `transformer_xl_position_encoding`), ``v`` is ``[heads, d_head]``.
    (b) + (d) = (W_q E_xi + v)^T W_k,R R_{i-j}: one matmul against all k_len rows, then `relative_shift`.
    Unscaled. Entries outside the causal region are garbage: the caller masks them.
    """
    _check_head_shapes(q, r, v, "v")
    return relative_shift((q + v[:, None, :]) @ r.transpose(-1, -2))


def naive_relative_position_scores(q: torch.Tensor, r_by_distance: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Terms (b) + (d) of section 3.3 straight from the definition: the O(q_len * k_len) oracle.

    ``r_by_distance[h, delta]`` is head h's W_k,R R_delta for delta = 0 .. k_len - 1 (ascending: the flip of
    the table `relative_position_scores` takes). Query i sits at position ``k_len - q_len + i``; for every
    (i, j) the vector R_{i-j} is gathered explicitly (a ``[heads, q_len, k_len, d_head]`` tensor) and dotted
    with ``q_i + v``. Future keys (i - j < 0) have no R; their entries are 0. Unscaled.
    """
    _check_head_shapes(q, r_by_distance, v, "v")
    q_len, k_len = q.shape[2], r_by_distance.shape[1]
    query_positions = torch.arange(k_len - q_len, k_len, device=q.device)
    distance = query_positions[:, None] - torch.arange(k_len, device=q.device)[None, :]
    per_pair = r_by_distance[:, distance.clamp(min=0)]  # [heads, q_len, k_len, d_head]: R_{i-j} per (i, j)
    scores = torch.einsum("bhid,hijd->bhij", q + v[:, None, :], per_pair)
    return scores.masked_fill(~causal_mask(q_len, k_len, device=q.device), 0.0)


def transformer_xl_score_terms(
    q: torch.Tensor,
    k: torch.Tensor,
    r: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The four terms (a), (b), (c), (d) of section 3.3, each ``[batch, heads, q_len, k_len]``, for plotting.

    ``k`` is ``[batch, heads, k_len, d_head]`` (W_k,E E_xj over memory and segment), ``u`` is ``[heads, d_head]``;
    the other arguments are as in `relative_position_scores`. Each term is multiplied by ``scale`` (default
    ``1/sqrt(d_head)``, as the released code scales AC + BD), so ``a + b + c + d`` are the logits the softmax
    sees on the causal region. (b) and (d) are set to 0 outside it, where no R_{i-j} exists.
    """
    _check_head_shapes(q, r, v, "v")
    _check_head_shapes(q, r, u, "u")
    if k.dim() != 4 or k.shape[:2] != q.shape[:2] or k.shape[2:] != r.shape[1:]:
        raise ValueError(f"k must be [batch, heads, k_len, d_head] matching q and r; got {tuple(k.shape)}")
    batch, heads, q_len, d_head = q.shape
    scale = 1.0 / math.sqrt(d_head) if scale is None else scale
    valid = causal_mask(q_len, k.shape[2], device=q.device)
    keys_t = k.transpose(-1, -2)
    a = q @ keys_t
    c = (u[:, None, :] @ keys_t).expand(batch, heads, q_len, -1)  # one value per key, same for every query
    b = relative_shift(q @ r.transpose(-1, -2))
    d = relative_shift((v[:, None, :] @ r.transpose(-1, -2)).expand(batch, heads, q_len, -1))
    b, d = b.masked_fill(~valid, 0.0), d.masked_fill(~valid, 0.0)
    return a * scale, b * scale, c * scale, d * scale


class TransformerXLRelativeAttention(nn.Module):
    """One Transformer-XL attention sublayer (section 3.3), the released ``RelPartialLearnableMultiHeadAttn``.

    Parameters follow the paper's names: ``w_q``, ``w_k_e`` (W_k,E), ``w_v``, ``w_k_r`` (W_k,R; ``r_net`` in the
    released code), ``w_o``, and per-head ``u``, ``v`` (``r_w_bias``, ``r_r_bias``), all bias-free. The released
    model shares u and v across layers; here one module owns its own. Residual, LayerNorm and dropout are left
    to the caller. ``forward(hidden, mems)`` maps ``[batch, seq, d_model]`` (plus optional memory
    ``[batch, mem_len, d_model]``) to ``[batch, seq, d_model]``; ``naive=True`` uses the O(n^2) gather.
    """

    def __init__(self, d_model: int, n_heads: int, d_head: int | None = None, base: float = 10000.0):
        super().__init__()
        require_even_dim(d_model, "d_model")  # R has d_model columns, in (sin, cos) pairs
        require_positive_int(n_heads, "n_heads")
        if d_head is None:
            if d_model % n_heads:
                raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}; pass d_head")
            d_head = d_model // n_heads
        require_positive_int(d_head, "d_head")
        require_base(base)
        self.d_model, self.n_heads, self.d_head, self.base = d_model, n_heads, d_head, float(base)
        inner = n_heads * d_head
        self.w_q = nn.Linear(d_model, inner, bias=False)
        self.w_k_e = nn.Linear(d_model, inner, bias=False)
        self.w_v = nn.Linear(d_model, inner, bias=False)
        self.w_k_r = nn.Linear(d_model, inner, bias=False)
        self.w_o = nn.Linear(inner, d_model, bias=False)
        # The released training script draws u and v from N(0, 0.02^2) (init_std).
        self.u = nn.Parameter(0.02 * torch.randn(n_heads, d_head))
        self.v = nn.Parameter(0.02 * torch.randn(n_heads, d_head))

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.n_heads, self.d_head).transpose(1, 2)

    def project(self, hidden: torch.Tensor, mems: torch.Tensor | None = None):
        """Return ``q, k, values, r`` in head layout (section 3.3's W_q, W_k,E, W_v, W_k,R applied).

        ``q``: ``[batch, heads, seq, d_head]``; ``k``, ``values``: ``[batch, heads, mem_len + seq, d_head]`` over
        ``[mems; hidden]``; ``r``: ``[heads, mem_len + seq, d_head]`` over descending distances. The memory is
        detached: section 3.2's stop-gradient, so no gradient reaches the previous segment.
        """
        if hidden.dim() != 3 or hidden.shape[-1] != self.d_model or hidden.shape[1] == 0:
            raise ValueError(f"hidden must be [batch, seq >= 1, d_model={self.d_model}]; got {tuple(hidden.shape)}")
        context = hidden
        if mems is not None:
            if mems.dim() != 3 or mems.shape[0] != hidden.shape[0] or mems.shape[-1] != self.d_model:
                raise ValueError(
                    f"mems must be [batch={hidden.shape[0]}, mem_len, d_model={self.d_model}]; got {tuple(mems.shape)}"
                )
            context = torch.cat([mems.detach().to(hidden.dtype), hidden], dim=1)
        k_len = context.shape[1]
        table = transformer_xl_position_encoding(k_len, self.d_model, self.base, dtype=hidden.dtype).to(hidden.device)
        r = self.w_k_r(table).view(k_len, self.n_heads, self.d_head).transpose(0, 1)
        return (
            self._split_heads(self.w_q(hidden)),
            self._split_heads(self.w_k_e(context)),
            self._split_heads(self.w_v(context)),
            r,
        )

    def _masked_scores(self, q, k, r, naive: bool) -> torch.Tensor:
        # (a) + (c) share the keys: (q + u)^T k, as the released "AC"; (b) + (d) share R: the released "BD".
        content = (q + self.u[:, None, :]) @ k.transpose(-1, -2)
        if naive:
            position = naive_relative_position_scores(q, r.flip(1), self.v)
        else:
            position = relative_position_scores(q, r, self.v)
        scores = (content + position) / math.sqrt(self.d_head)
        # Queries are the last seq positions of mem_len + seq keys: exactly `causal_mask`'s alignment. It also
        # removes relative_shift's garbage triangle.
        return scores.masked_fill(~causal_mask(q.shape[2], k.shape[2], device=q.device), float("-inf"))

    def attention_scores(self, hidden: torch.Tensor, mems: torch.Tensor | None = None, naive: bool = False):
        """The logits ``[batch, heads, seq, mem_len + seq]`` fed to the softmax: A^rel / sqrt(d_head) (section 3.3).

        Entries outside the causal mask are -inf.
        """
        q, k, _, r = self.project(hidden, mems)
        return self._masked_scores(q, k, r, naive)

    def score_terms(self, hidden: torch.Tensor, mems: torch.Tensor | None = None):
        """The four scaled terms (a), (b), (c), (d) of section 3.3 for this module (`transformer_xl_score_terms`)."""
        q, k, _, r = self.project(hidden, mems)
        return transformer_xl_score_terms(q, k, r, self.u, self.v)

    def forward(self, hidden: torch.Tensor, mems: torch.Tensor | None = None, naive: bool = False) -> torch.Tensor:
        """``[batch, seq, d_model]`` -> ``[batch, seq, d_model]``: masked softmax of A^rel, then W_o (section 3.3)."""
        q, k, values, r = self.project(hidden, mems)
        weights = torch.softmax(self._masked_scores(q, k, r, naive), dim=-1)
        attended = (weights @ values).transpose(1, 2).reshape(hidden.shape[0], hidden.shape[1], -1)
        return self.w_o(attended)
