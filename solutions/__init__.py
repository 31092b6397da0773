"""Reference implementations for the course "Positional Encoding in Transformers, from sinusoids to YaRN".

Every chapter of the book imports from here, and every exercise is graded against it. The package-level
names below are a stable API (see DESIGN.md); each submodule holds one idea:

* `sinusoidal`, `learned`: absolute encodings;
* `t5`, `transformer_xl`, `deberta`, `alibi`: relative encodings and biases;
* `rope`, `rope_scaling`, `rope_cache`: rotary embeddings, every way of stretching them, and the cos/sin cache
  that grows at run time;
* `mla`: DeepSeek's Multi-head Latent Attention with decoupled RoPE;
* `mrope`, `rope2d`, `long_context`: positions for images and video (Qwen2-VL's M-RoPE and Qwen3-VL's
  interleaved layout, axial and mixed 2-D RoPE for vision transformers) and today's long-context layer designs
  (Llama 4's NoPE-layer temperature, Gemma 3's local/global bases);
* `attention`: the plain attention every other piece plugs into.
"""

from .alibi import alibi_bias, alibi_slopes, ntk_alibi_slopes
from .attention import causal_mask, reference_attention
from .deberta import (
    deberta_log_bucket_position,
    deberta_position_index,
    deberta_relative_positions,
    deberta_scale_factor,
    disentangled_attention_scores,
    disentangled_score_terms,
)
from .learned import LearnedPositionalEmbedding
from .long_context import gemma3_layer_bases, llama4_attention_scale, llama4_rope_layers
from .mla import (
    MLACache,
    MLAConfig,
    MultiHeadLatentAttention,
    kv_cache_elements_per_token,
    rope_absorbed_score_matrix,
)
from .mrope import mrope_cos_sin, mrope_pair_axes, mrope_position_ids
from .rope import (
    apply_rope,
    permute_qk_weight_to_half_split,
    permute_qk_weight_to_interleaved,
    rope_cos_sin,
    rope_inv_freq,
)
from .rope_cache import RopeCache, rerotate_keys
from .rope2d import (
    axial_rope_freqs,
    mixed_rope_cos_sin,
    mixed_rope_freqs,
    rope2d_cos_sin,
    rope2d_positions,
)
from .rope_scaling import (
    ROPE_SCALING_METHODS,
    RotaryEmbedding,
    rope_scaling,
    yarn_attention_factor,
    yarn_softmax_scale,
)
from .sinusoidal import sinusoidal_encoding, sinusoidal_shift_matrix
from .t5 import T5RelativeBias, t5_relative_position_bucket
from .transformer_xl import (
    TransformerXLRelativeAttention,
    naive_relative_position_scores,
    relative_position_scores,
    relative_shift,
    transformer_xl_position_encoding,
    transformer_xl_score_terms,
)

__all__ = [
    "alibi_bias",
    "alibi_slopes",
    "ntk_alibi_slopes",
    "causal_mask",
    "reference_attention",
    "deberta_log_bucket_position",
    "deberta_position_index",
    "deberta_relative_positions",
    "deberta_scale_factor",
    "disentangled_attention_scores",
    "disentangled_score_terms",
    "LearnedPositionalEmbedding",
    "MLACache",
    "MLAConfig",
    "MultiHeadLatentAttention",
    "kv_cache_elements_per_token",
    "rope_absorbed_score_matrix",
    "gemma3_layer_bases",
    "llama4_attention_scale",
    "llama4_rope_layers",
    "mrope_cos_sin",
    "mrope_pair_axes",
    "mrope_position_ids",
    "axial_rope_freqs",
    "mixed_rope_cos_sin",
    "mixed_rope_freqs",
    "rope2d_cos_sin",
    "rope2d_positions",
    "apply_rope",
    "permute_qk_weight_to_half_split",
    "permute_qk_weight_to_interleaved",
    "rope_cos_sin",
    "rope_inv_freq",
    "RopeCache",
    "rerotate_keys",
    "ROPE_SCALING_METHODS",
    "RotaryEmbedding",
    "rope_scaling",
    "yarn_attention_factor",
    "yarn_softmax_scale",
    "sinusoidal_encoding",
    "sinusoidal_shift_matrix",
    "T5RelativeBias",
    "t5_relative_position_bucket",
    "TransformerXLRelativeAttention",
    "naive_relative_position_scores",
    "relative_position_scores",
    "relative_shift",
    "transformer_xl_position_encoding",
    "transformer_xl_score_terms",
]
