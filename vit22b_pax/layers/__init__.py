"""ViT-22B praxis layers: blocks, MAP head, patch embedding.

  ParallelBlock     y = x + Attn(LN(x)) + MLP(LN(x)), fused projections.
  SequentialBlock   x = x + Attn(LN1(x)); y = x + MLP(LN2(x)).
  MAPHead           attention pooling with a learned probe: [B, T, D] -> [B, D].
  PatchEmbedding    [B, H, W, C] -> [B, T, D] with learned 'pos_emb' [T, D].
  resample_pos_emb  [T, D] -> [new_grid^2, D] (bilinear, align corners).
  layer_norm, rms_norm  the norm templates (praxis LayerNorm / RmsNorm).
  GELU              praxis' GELU, the tanh form's backward from x alone.

Both blocks plug into praxis StackedTransformer(.transformer_layer_params_tpl)
and StackedTransformerRepeated.
"""

from vit22b_pax.layers import attention_core
from vit22b_pax.layers import block_base
from vit22b_pax.layers import gelu
from vit22b_pax.layers import map_head
from vit22b_pax.layers import mlp
from vit22b_pax.layers import norms
from vit22b_pax.layers import parallel_block
from vit22b_pax.layers import patch_embedding
from vit22b_pax.layers import sequential_block
from vit22b_pax.layers import weights

AttentionCore = attention_core.AttentionCore
GELU = gelu.GELU
MAPHead = map_head.MAPHead
Mlp = mlp.Mlp
ParallelBlock = parallel_block.ParallelBlock
PatchEmbedding = patch_embedding.PatchEmbedding
SequentialBlock = sequential_block.SequentialBlock
layer_norm = norms.layer_norm
resample_pos_emb = patch_embedding.resample_pos_emb
rms_norm = norms.rms_norm
