"""ViT-22B image classifier (praxis BaseModel) and model size presets.

  image [B, H, W, 3] -> patch_embed -> tokens [B, T, D] -> encoder (L blocks)
  -> final_ln -> map_head -> pooled [B, D] -> head -> logits [B, C]

No class token and no padding tokens (every image has T = (H/P)^2 real
tokens), so the encoder gets all-zero paddings. Pre-training uses a sigmoid
cross-entropy over multi-hot labels with the head kernel zero-initialized and
its bias at -10, so every sigmoid starts near 0 (the ViT-G recipe in
big_vision, assumed for ViT-22B; both are fields).

`classifier_config` is the one place that wires a `ModelSize` into the layer
templates; experiments call it rather than building the templates by hand.
`ViTClassifier.setup` propagates only model_dims and num_classes (so an
override of either on the config stays consistent across children).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jax import numpy as jnp
from praxis import base_layer
from praxis import base_model
from praxis import pax_fiddle
from praxis import py_utils
from praxis import pytypes
from praxis.layers import checkpoint_policy
from praxis.layers import transformers

from vit22b_pax import metrics as metrics_lib
from vit22b_pax import recipe
from vit22b_pax.layers import map_head
from vit22b_pax.layers import norms
from vit22b_pax.layers import parallel_block
from vit22b_pax.layers import patch_embedding
from vit22b_pax.layers import sequential_block

NestedMap = py_utils.NestedMap
JTensor = pytypes.JTensor
SplitDimsMapping = pytypes.SplitDimsMapping
WeightHParams = base_layer.WeightHParams
WeightInit = base_layer.WeightInit
LayerTpl = pax_fiddle.Config[base_layer.BaseLayer]
template_field = base_layer.template_field
AutodiffCheckpointType = checkpoint_policy.AutodiffCheckpointType

LOSS_TYPES = ('sigmoid', 'softmax')


@dataclasses.dataclass(frozen=True)
class ModelSize:
  """Architecture sizes of a ViT.

  Attributes:
    model_dims: D, the residual stream width.
    num_layers: L, the number of encoder blocks.
    hidden_dims: F, the MLP hidden width.
    num_heads: N, attention heads.
    dim_per_head: H, per-head query/key/value size.
    patch_size: P, square patch side in pixels.
    image_size: Square input side in pixels (pre-training resolution).
  """

  model_dims: int
  num_layers: int
  hidden_dims: int
  num_heads: int
  dim_per_head: int
  patch_size: int
  image_size: int

  @property
  def grid_size(self) -> int:
    """Patches per image side, image_size // patch_size."""
    return self.image_size // self.patch_size

  @property
  def num_tokens(self) -> int:
    """T, tokens per image (no class token)."""
    return self.grid_size**2


# Dehghani et al. 2023, Table 1 (ViT-22B) and Zhai et al. 2022 (ViT-e,
# ViT-G); all at 224 px with patch 14 -> 256 tokens. The small presets are
# ours, for CPU work.
PRESETS: dict[str, ModelSize] = {
    'vit22b': ModelSize(6144, 48, 24576, 48, 128, 14, 224),
    'vit_e': ModelSize(1792, 56, 15360, 16, 112, 14, 224),
    'vit_g': ModelSize(1664, 48, 8192, 16, 104, 14, 224),
    # ViT-B widths at the paper's 256 tokens: a CPU/GPU benchmark size.
    'mid': ModelSize(768, 12, 3072, 12, 64, 14, 224),
    # Trains on 32 px images (8 x 8 = 64 tokens) on a laptop CPU.
    'small': ModelSize(192, 6, 768, 3, 64, 4, 32),
    # Unit tests: 16 px images, 4 x 4 = 16 tokens.
    'tiny': ModelSize(32, 2, 64, 2, 16, 4, 16),
}


class ClassifierHead(base_layer.BaseLayer):
  """Linear classifier logits = x @ w + b.

  Attributes:
    input_dims: D, feature width.
    num_classes: C, number of classes.
    zero_init_kernel: Initialize 'w' to zeros (big_vision's head_zeroinit);
      False uses the layer's params_init.
    bias_init: Initial value of every entry of 'b'. -10 makes every sigmoid
      start at ~4.5e-5 (the multi-label prior of a huge label set).
  """

  input_dims: int = 0
  num_classes: int = 0
  zero_init_kernel: bool = recipe.HEAD_ZERO_INIT
  bias_init: float = recipe.HEAD_BIAS_INIT

  class WeightSharding(base_layer.BaseLayer.WeightSharding):
    """Weight split-dims mappings.

    Attributes:
      wt: Mapping of 'w' [D, C]; 'b' [C] uses its second entry.
    """

    wt: SplitDimsMapping = None

  class ActivationSharding(base_layer.BaseLayer.ActivationSharding):
    """Activation split-dims mappings.

    Attributes:
      out: Mapping of the logits [B, C].
    """

    out: SplitDimsMapping = None

  def setup(self) -> None:
    if self.input_dims <= 0 or self.num_classes <= 0:
      raise ValueError(
          'ClassifierHead needs positive input_dims and num_classes, got '
          f'{self.input_dims} and {self.num_classes}.'
      )
    wt = self.weight_split_dims_mapping.wt
    if self.mesh_shape is None:
      wt = None
    self.create_variable(
        'w',
        WeightHParams(
            shape=[self.input_dims, self.num_classes],
            init=WeightInit.Constant(0.0) if self.zero_init_kernel else None,
            mesh_shape=self.mesh_shape,
            tensor_split_dims_mapping=wt,
        ),
    )
    self.create_variable(
        'b',
        WeightHParams(
            shape=[self.num_classes],
            init=WeightInit.Constant(self.bias_init),
            mesh_shape=self.mesh_shape,
            tensor_split_dims_mapping=None if wt is None else [wt[1]],
        ),
    )

  def __call__(self, inputs: JTensor) -> JTensor:
    """Maps features [B, D] to logits [B, C] in this layer's fprop_dtype."""
    inputs = self._cast_to_fprop_dtype(inputs)
    logits = jnp.einsum('BD,DC->BC', inputs, self.theta.w) + self.theta.b
    return base_layer.maybe_shard(
        logits, self.activation_split_dims_mapping.out, self.mesh_axis_names
    )


class ViTClassifier(base_model.BaseModel):
  """ViT-22B-style image classifier with multi-label metrics.

  Children: 'patch_embed', 'encoder', 'final_ln', 'map_head', 'head', so the
  classifier parameters are params/head/w [D, C] and params/head/b [C].

  Attributes:
    model_dims: D; set on every child in setup.
    num_classes: C; set on the head in setup.
    patch_embed_tpl: Patch embedding (image_size, patch_size set by
      `classifier_config`).
    encoder_tpl: praxis StackedTransformer or StackedTransformerRepeated
      whose block template is a ParallelBlock or SequentialBlock.
    final_ln_tpl: Norm applied to the encoder output (dim set in setup);
      default ViT-22B's LayerNorm (`norms.layer_norm`).
    map_head_tpl: Multihead attention pooling head (input_dims set here).
    head_tpl: Linear classifier (input_dims, num_classes set here).
    loss_type: 'sigmoid' (per-class sigmoid cross-entropy over multi-hot
      labels, pre-training) or 'softmax' (softmax cross-entropy against the
      labels normalized to sum to 1, e.g. single-label fine-tuning).
    image_field: Input batch key of the images [B, H, W, 3].
    label_field: Input batch key of the multi-hot labels [B, C].
    weight_field: Input batch key of the example weights [B]; all ones when
      the batch does not have it.
    map_in_training: Also compute the batch mAP in training steps (it sorts
      the [B, C] logits per class: cheap on small runs, a real cost at JFT
      scale, B = 65,536 x C = 29,593). When False, training steps omit the
      'map' metric; eval steps always report it.
  """

  model_dims: int = 0
  num_classes: int = 0
  patch_embed_tpl: LayerTpl = template_field(patch_embedding.PatchEmbedding)
  encoder_tpl: LayerTpl = template_field(transformers.StackedTransformer)
  final_ln_tpl: LayerTpl = template_field(norms.layer_norm)
  map_head_tpl: LayerTpl = template_field(map_head.MAPHead)
  head_tpl: LayerTpl = template_field(ClassifierHead)
  loss_type: str = recipe.LOSS
  image_field: str = 'image'
  label_field: str = 'labels'
  weight_field: str = 'weight'
  map_in_training: bool = True

  def setup(self) -> None:
    if self.model_dims <= 0 or self.num_classes <= 0:
      raise ValueError(
          'ViTClassifier needs positive model_dims and num_classes, got '
          f'{self.model_dims} and {self.num_classes}.'
      )
    if self.loss_type not in LOSS_TYPES:
      raise ValueError(
          f'ViTClassifier.loss_type must be one of {LOSS_TYPES}, got '
          f'{self.loss_type!r}.'
      )
    d = self.model_dims
    self.create_child(
        'patch_embed', self.patch_embed_tpl.clone().set(model_dims=d)
    )
    encoder_p = self.encoder_tpl.clone()
    stack_p = encoder_p
    if issubclass(encoder_p.cls, transformers.StackedTransformerRepeated):
      stack_p = encoder_p.block
    stack_p.model_dims = d
    self.create_child('encoder', encoder_p)
    self.create_child('final_ln', self.final_ln_tpl.clone().set(dim=d))
    self.create_child('map_head', self.map_head_tpl.clone().set(input_dims=d))
    self.create_child(
        'head',
        self.head_tpl.clone().set(input_dims=d, num_classes=self.num_classes),
    )

  def compute_predictions(self, input_batch: NestedMap) -> NestedMap:
    """Runs the network.

    Args:
      input_batch: NestedMap with `image_field` float [B, H, W, 3].

    Returns:
      NestedMap(logits=[B, C] float32, pre_logits=[B, D] pooled features, the
      image embedding that few-shot probes use).
    """
    images = input_batch[self.image_field]
    if images.ndim != 4:
      raise ValueError(
          f'ViTClassifier expects {self.image_field!r} as [B, H, W, C], got '
          f'shape {images.shape}.'
      )
    images = self._cast_to_fprop_dtype(images)
    tokens = self.patch_embed(images)
    # A ViT has no padding tokens; the stack still wants paddings [B, T].
    paddings = jnp.zeros(tokens.shape[:2], dtype=tokens.dtype)
    encoded = self.final_ln(self.encoder(tokens, paddings))
    pooled = self.map_head(encoded)
    logits = self.head(pooled).astype(jnp.float32)
    return NestedMap(logits=logits, pre_logits=pooled)

  def _example_weights(self, input_batch: NestedMap, batch: int) -> JTensor:
    if self.weight_field in input_batch:
      weights = input_batch[self.weight_field].astype(jnp.float32)
      if weights.shape != (batch,):
        raise ValueError(
            f'{self.weight_field!r} must have shape ({batch},), got '
            f'{weights.shape}.'
        )
      return weights
    return jnp.ones((batch,), jnp.float32)

  def compute_loss(
      self, predictions: NestedMap, input_batch: NestedMap
  ) -> tuple[dict[str, tuple[JTensor, JTensor]], NestedMap]:
    """Loss and metrics of the batch; weight-0 examples count for nothing.

    Args:
      predictions: Output of `compute_predictions`.
      input_batch: NestedMap with `label_field` [B, C] and optionally
        `weight_field` [B].

    Returns:
      (metrics, per_example_out). metrics maps 'loss', 'precision_at_1' and
      'map' (see map_in_training) to (value, weight) pairs (praxis
      WeightedScalars) weighted by the batch's total example weight; the
      loss is the weighted mean over examples of the per-example loss summed
      over classes (`metrics.sigmoid_xent`). 'map' is the mean average precision of this
      batch (classes without positives excluded); averaging it over eval
      batches approximates, but is not, the eval-set mAP, which
      `metrics.np_mean_average_precision` computes from per_example_out.
      per_example_out holds logits [B, C], labels [B, C] and weight [B].
    """
    logits = predictions.logits.astype(jnp.float32)
    labels = input_batch[self.label_field].astype(jnp.float32)
    if labels.shape != logits.shape:
      raise ValueError(
          f'{self.label_field!r} must be multi-hot [B, C] = {logits.shape}, '
          f'got {labels.shape}.'
      )
    weights = self._example_weights(input_batch, logits.shape[0])
    total_weight = jnp.sum(weights)
    if self.loss_type == 'sigmoid':
      loss = metrics_lib.sigmoid_xent(logits, labels, weights)
    else:
      loss = metrics_lib.softmax_xent(logits, labels, weights)
    p_at_1 = metrics_lib.precision_at_1(logits, labels, weights)
    weighted_scalars = NestedMap(
        loss=(loss, total_weight),
        precision_at_1=(p_at_1, total_weight),
    )
    if self.do_eval or self.map_in_training:
      ap, has_pos = metrics_lib.average_precision_per_class(
          logits, labels, weights
      )
      num_scored = jnp.sum(has_pos.astype(jnp.float32))
      mean_ap = jnp.sum(ap * has_pos) / jnp.maximum(num_scored, 1.0)
      # A batch with no positive label has no mAP; give it no weight.
      map_weight = jnp.where(num_scored > 0, total_weight, 0.0)
      weighted_scalars.map = (mean_ap, map_weight)
    per_example_out = NestedMap(logits=logits, labels=labels, weight=weights)
    return weighted_scalars, per_example_out


_POLICY_ALIASES = {
    # jax.checkpoint_policies names -> praxis' enum.
    'nothing_saveable': AutodiffCheckpointType.SAVE_NOTHING,
    'everything_saveable': AutodiffCheckpointType.SAVE_EVERYTHING,
    'dots_saveable': AutodiffCheckpointType.SAVE_DOT_ONLY,
    'checkpoint_dots': AutodiffCheckpointType.SAVE_DOT_ONLY,
    'dots_with_no_batch_dims_saveable': (
        AutodiffCheckpointType.SAVE_DOT_WITH_NO_BATCH_DIM
    ),
    'checkpoint_dots_with_no_batch_dims': (
        AutodiffCheckpointType.SAVE_DOT_WITH_NO_BATCH_DIM
    ),
}


def remat_checkpoint_type(
    policy: str | AutodiffCheckpointType | None,
) -> AutodiffCheckpointType | None:
  """Maps a remat policy name to praxis' AutodiffCheckpointType.

  Args:
    policy: None (no rematerialization), an AutodiffCheckpointType, its value
      (e.g. 'save_qkv_out_proj'), or a jax.checkpoint_policies name
      ('nothing_saveable', 'dots_saveable',
      'dots_with_no_batch_dims_saveable', 'everything_saveable').

  Returns:
    The enum member, or None for no remat.
  """
  if policy is None or isinstance(policy, AutodiffCheckpointType):
    return policy
  if policy in _POLICY_ALIASES:
    return _POLICY_ALIASES[policy]
  try:
    return AutodiffCheckpointType(policy)
  except ValueError:
    names = sorted(
        list(_POLICY_ALIASES) + [t.value for t in AutodiffCheckpointType]
    )
    raise ValueError(
        f'Unknown remat_policy {policy!r}; use None or one of {names}.'
    ) from None


def classifier_config(
    size: ModelSize,
    num_classes: int,
    *,
    parallel: bool = True,
    use_qk_norm: bool = True,
    use_qkv_bias: bool = False,
    use_mlp_bias: bool = True,
    ln_tpl: LayerTpl | None = None,
    scan: bool = False,
    remat_policy: str | AutodiffCheckpointType | None = 'nothing_saveable',
    fprop_dtype: Any = jnp.float32,
    dtype: Any = jnp.float32,
    head_bias_init: float = recipe.HEAD_BIAS_INIT,
    head_zero_init: bool = recipe.HEAD_ZERO_INIT,
    dropout: float = 0.0,
    droppath: float = 0.0,
    loss_type: str = recipe.LOSS,
    map_in_training: bool = True,
    attention_diagnostics: bool = False,
    collective_matmul: str = 'off',
    name: str = 'vit_classifier',
) -> pax_fiddle.Config[ViTClassifier]:
  """Builds the ViTClassifier config for a size preset.

  Args:
    size: Architecture sizes (e.g. PRESETS['vit22b']); use
      dataclasses.replace(size, image_size=448) to fine-tune at another
      resolution.
    num_classes: C.
    parallel: ParallelBlock (ViT-22B) if True, else SequentialBlock.
    use_qk_norm: QK normalization in every attention (blocks and MAP head).
    use_qkv_bias: Biases on q/k/v projections (ViT-22B: off).
    use_mlp_bias: Biases on the MLP dense layers (ViT-22B: on).
    ln_tpl: Template of every norm of the model: the blocks' LayerNorms,
      the QK-norms, the final norm and the MAP head's norm (each layer sets
      dim). None: ViT-22B's LayerNorm (`norms.layer_norm()`: no bias, scale
      used directly, float32 statistics, epsilon 1e-6). E.g.
      `norms.rms_norm()` for RMSNorm, `norms.layer_norm(use_bias=True)` for
      biases on the norms.
    scan: Use StackedTransformerRepeated (one scanned block, always
      rematerialized with the policy) instead of an unrolled
      StackedTransformer.
    remat_policy: Rematerialization policy (see `remat_checkpoint_type`).
      None: no remat when unrolled, save everything when scanned.
    fprop_dtype: Activation dtype (jnp.bfloat16 on accelerators); the
      classifier head, logits and loss run in float32 regardless.
    dtype: Parameter dtype.
    head_bias_init: Initial classifier bias (-10 for sigmoid pre-training,
      0 is usual for softmax fine-tuning).
    head_zero_init: Zero-initialize the classifier kernel.
    dropout: Dropout probability inside the blocks (attention probabilities,
      MLP hidden, branch outputs).
    droppath: Stochastic depth at the last block (praxis scales it linearly
      with depth, 0 at the first).
    loss_type: 'sigmoid' or 'softmax' (see ViTClassifier.loss_type).
    map_in_training: See ViTClassifier.map_in_training.
    attention_diagnostics: Every attention (blocks and MAP head) adds its
      max-logit and entropy summaries (`AttentionCore.diagnostics`).
    collective_matmul: The parallel blocks' `collective_matmul` ('off',
      'unidirectional' or 'bidirectional'); takes effect once
      sharding.set_sharding has split the heads over a 'model' axis.
      Parallel blocks only.
    name: Model name.

  Returns:
    pax_fiddle.Config[ViTClassifier].
  """
  if size.image_size % size.patch_size:
    raise ValueError(
        f'image_size ({size.image_size}) must be a multiple of patch_size '
        f'({size.patch_size}).'
    )
  if size.hidden_dims % size.num_heads and parallel:
    raise ValueError(
        f'hidden_dims ({size.hidden_dims}) must be divisible by num_heads '
        f'({size.num_heads}) for the parallel block.'
    )
  if collective_matmul != 'off' and not parallel:
    raise ValueError(
        f'collective_matmul={collective_matmul!r} needs the parallel block '
        '(its fused projections); the sequential block has none.'
    )
  policy = remat_checkpoint_type(remat_policy)
  if parallel:
    block_cls = parallel_block.ParallelBlock
  else:
    block_cls = sequential_block.SequentialBlock
  if ln_tpl is None:
    ln_tpl = norms.layer_norm()

  def options(p):
    """Sets the block_base.BlockOptions fields the blocks and head share."""
    p.set(
        use_qk_norm=use_qk_norm,
        use_qkv_bias=use_qkv_bias,
        use_mlp_bias=use_mlp_bias,
        ln_tpl=ln_tpl.clone(),
    )
    p.attention_tpl.qk_norm_tpl = ln_tpl.clone()
    p.attention_tpl.diagnostics = attention_diagnostics
    return p

  block_p = options(pax_fiddle.Config(block_cls))
  if parallel:
    block_p.collective_matmul = collective_matmul
  stack_p = pax_fiddle.Config(
      transformers.StackedTransformer,
      num_layers=size.num_layers,
      model_dims=size.model_dims,
      hidden_dims=size.hidden_dims,
      num_heads=size.num_heads,
      dim_per_head=size.dim_per_head,
      dropout_prob=dropout,
      residual_droppath_prob=droppath,
      transformer_layer_params_tpl=block_p,
  )
  if scan:
    stack_p.num_layers = 1
    # Praxis scales droppath by layer index, which a scan cannot vary.
    if droppath:
      raise ValueError('droppath > 0 needs scan=False (per-layer rates).')
    encoder_p = pax_fiddle.Config(
        transformers.StackedTransformerRepeated,
        block=stack_p,
        x_times=size.num_layers,
        checkpoint_policy=policy or AutodiffCheckpointType.SAVE_EVERYTHING,
    )
  else:
    encoder_p = stack_p
    if policy is not None:
      stack_p.remat = True
      stack_p.checkpoint_policy = policy
  return pax_fiddle.Config(
      ViTClassifier,
      name=name,
      dtype=dtype,
      fprop_dtype=fprop_dtype,
      model_dims=size.model_dims,
      num_classes=num_classes,
      loss_type=loss_type,
      map_in_training=map_in_training,
      patch_embed_tpl=pax_fiddle.Config(
          patch_embedding.PatchEmbedding,
          image_size=size.image_size,
          patch_size=size.patch_size,
      ),
      encoder_tpl=encoder_p,
      final_ln_tpl=ln_tpl.clone(),
      map_head_tpl=options(
          pax_fiddle.Config(
              map_head.MAPHead,
              hidden_dims=size.hidden_dims,
              num_heads=size.num_heads,
              dim_per_head=size.dim_per_head,
          )
      ),
      head_tpl=pax_fiddle.Config(
          ClassifierHead,
          zero_init_kernel=head_zero_init,
          bias_init=head_bias_init,
          # float32 logits: with the bias near -10, bfloat16's 8-bit mantissa
          # would quantize them in steps of 0.06; the head costs ~0.001% of
          # a ViT-22B step's FLOPs.
          fprop_dtype=jnp.float32,
      ),
  )
