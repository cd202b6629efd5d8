"""Independent float64 numpy references and helpers for the layer tests.

The references are written from the equations (Dehghani et al. 2023;
big_vision MAPHead), with separate q, k, v, MLP-in, attention-out and MLP-out
matmuls. Shared by the per-module test files; not a test itself.
"""

import math

import jax
import numpy as np
from praxis import base_layer
from praxis import pax_fiddle
from praxis.layers import transformers
import scipy.special

from vit22b_pax.layers import norms

# (name, overrides of the ViT-22B defaults); every bias/norm flag is flipped
# in at least one case. The norm flags describe the reference's norms;
# block_config turns them into the layers' norm templates.
FLAG_CASES = (
    ('defaults', {}),
    ('no_qk_norm', dict(use_qk_norm=False)),
    ('all_biases', dict(use_qkv_bias=True, use_ln_bias=True)),
    ('rmsnorm', dict(ln_centering=False, qk_norm_type='rmsnorm')),
    # Only the QK-norm is RMSNorm: the two templates are independent.
    ('rmsnorm_qk_only', dict(qk_norm_type='rmsnorm', ln_epsilon=1e-3)),
    ('no_biases_exact_gelu', dict(use_mlp_bias=False, gelu_approximate=False)),
    (
        'qkv_bias_only',
        dict(
            use_qkv_bias=True,
            use_mlp_bias=False,
            use_qk_norm=False,
            ln_epsilon=1e-3,
        ),
    ),
)

DEFAULT_FLAGS = dict(
    use_qk_norm=True,
    qk_norm_type='layernorm',
    use_qkv_bias=False,
    use_ln_bias=False,
    ln_centering=True,
    use_mlp_bias=True,
    ln_epsilon=1e-6,
    gelu_approximate=True,
)


def norm_tpl(centering, use_bias, epsilon):
  """The layers' norm template for the reference's norm flags."""
  if centering:
    return norms.layer_norm(use_bias=use_bias, epsilon=epsilon)
  if use_bias:
    raise ValueError('RMSNorm (praxis RmsNorm) has no bias.')
  return norms.rms_norm(epsilon=epsilon)


def block_config(cls, d=16, f=64, n=4, dim_per_head=None, **overrides):
  """Config of block/head `cls` and the flag dict the references read."""
  flags = dict(DEFAULT_FLAGS, **overrides)
  p = pax_fiddle.Config(
      cls,
      name='layer',
      input_dims=d,
      hidden_dims=f,
      num_heads=n,
      dim_per_head=dim_per_head,
      use_qk_norm=flags['use_qk_norm'],
      use_qkv_bias=flags['use_qkv_bias'],
      use_mlp_bias=flags['use_mlp_bias'],
  )
  p.ln_tpl = norm_tpl(
      flags['ln_centering'], flags['use_ln_bias'], flags['ln_epsilon']
  )
  p.attention_tpl.qk_norm_tpl = norm_tpl(
      flags['qk_norm_type'] == 'layernorm',
      flags['use_ln_bias'],
      flags['ln_epsilon'],
  )
  p.activation_tpl.approximate = flags['gelu_approximate']
  flags['head_dim'] = dim_per_head or d // n
  return p, flags


def inputs_and_paddings(b=2, t=6, d=16, seed=0):
  """Random float32 tokens [B, T, D]; example 1 has its last 2 padded."""
  rng = np.random.RandomState(seed)
  x = rng.randn(b, t, d).astype(np.float32)
  paddings = np.zeros((b, t), np.float32)
  paddings[1, -2:] = 1.0
  return x, paddings


def init(layer, *args, seed=1, **kwargs):
  with base_layer.JaxContext.new_context():
    return layer.init(jax.random.PRNGKey(seed), *args, **kwargs)


def apply(layer, variables, *args, **kwargs):
  with base_layer.JaxContext.new_context():
    return layer.apply(variables, *args, **kwargs)


def count(tree, names=None):
  """Number of parameters (only leaves called one of `names` if given)."""
  return sum(
      math.prod(a.shape)
      for path, a in jax.tree_util.tree_flatten_with_path(tree)[0]
      if names is None or path[-1].key in names
  )


def flat_shapes(tree):
  """{'a/b/c': shape} of a variable tree."""
  return {
      '/'.join(k.key for k in path): tuple(v.shape)
      for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def to_np(tree):
  """Pytree of jax arrays -> pytree of float64 numpy arrays."""
  return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


def perturb(variables, seed, scale=0.3):
  """Adds N(0, scale^2) noise to every parameter (so zero-init biases and
  unit-init norm scales take generic values)."""
  rng = np.random.RandomState(seed)
  return jax.tree_util.tree_map(
      lambda a: (np.asarray(a) + scale * rng.randn(*a.shape)).astype(a.dtype),
      variables,
  )


def layer_norm(x, scale, bias=None, centering=True, eps=1e-6):
  if centering:
    x = x - x.mean(-1, keepdims=True)
  y = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * scale
  return y if bias is None else y + bias


def gelu(x, approximate=True):
  if approximate:
    c = math.sqrt(2 / math.pi)
    return 0.5 * x * (1 + np.tanh(c * (x + 0.044715 * x**3)))
  return 0.5 * x * (1 + scipy.special.erf(x / math.sqrt(2)))


def softmax(x):
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


def attention(q, k, v, key_padding=None, q_norm=None, k_norm=None):
  """q [B,T,N,H], k/v [B,S,N,H]; q_norm/k_norm: callables or None.

  Returns (context [B,T,N,H], logits [B,N,T,S] before masking).
  """
  if q_norm is not None:
    q, k = q_norm(q), k_norm(k)
  h = q.shape[-1]
  logits = np.einsum('btnh,bsnh->bnts', q, k) / math.sqrt(h)
  masked = logits
  if key_padding is not None:
    masked = np.where(key_padding[:, None, None, :] > 0.5, -1e30, logits)
  probs = softmax(masked)
  return np.einsum('bnts,bsnh->btnh', probs, v), logits


def _qk_norms(p, flags):
  """q/k norm callables from params p['attention'] (or None, None)."""
  if not flags['use_qk_norm']:
    return None, None
  centering = flags['qk_norm_type'] == 'layernorm'

  def make(name):
    np_ = p['attention'][name]
    return lambda x: layer_norm(
        x, np_['scale'], np_.get('bias'), centering, flags['ln_epsilon']
    )

  return make('q_norm'), make('k_norm')


def parallel_block(p, x, flags, key_padding=None, return_logits=False):
  """ViT-22B parallel block from fused params p, using unfused matmuls.

  w_in [D, N, 3H + F/N] and w_out [N, H + F/N, D] are sliced into the
  separate Wq, Wk, Wv [D, N, H], W1 [D, F], Wo [N, H, D], W2 [F, D].
  """
  d, n, k_width = p['w_in'].shape
  h = flags['head_dim']
  f = n * (k_width - 3 * h)
  wq, wk, wv = (p['w_in'][:, :, i * h : (i + 1) * h] for i in range(3))
  w1 = p['w_in'][:, :, 3 * h :].reshape(d, f)
  wo = p['w_out'][:, :h, :]
  w2 = p['w_out'][:, h:, :].reshape(f, d)
  ln = p['ln']
  y = layer_norm(x, ln['scale'], ln.get('bias'), flags['ln_centering'],
                 flags['ln_epsilon'])
  q = np.einsum('btd,dnh->btnh', y, wq)
  k = np.einsum('btd,dnh->btnh', y, wk)
  v = np.einsum('btd,dnh->btnh', y, wv)
  m = y @ w1
  # b_in is head-major [N * W]: per head q, k, v biases (if any), then the
  # head's F/N MLP-in biases (if any).
  if flags['use_qkv_bias']:
    b = p['b_in'].reshape(n, -1)
    q, k, v = q + b[:, :h], k + b[:, h : 2 * h], v + b[:, 2 * h : 3 * h]
  if flags['use_mlp_bias']:
    m = m + p['b_in'].reshape(n, -1)[:, -(f // n) :].reshape(f)
  qn, kn = _qk_norms(p, flags)
  ctx, logits = attention(q, k, v, key_padding, qn, kn)
  if return_logits:
    return logits
  out = x + np.einsum('btnh,nhd->btd', ctx, wo) + gelu(
      m, flags['gelu_approximate']) @ w2
  if flags['use_mlp_bias']:
    out = out + p['b_out']
  return out


def mlp(p, x, use_bias, approximate):
  hidden = x @ p['w_in'] + (p['b_in'] if use_bias else 0.0)
  return gelu(hidden, approximate) @ p['w_out'] + (
      p['b_out'] if use_bias else 0.0)


def sequential_block(p, x, flags, key_padding=None, return_logits=False):
  """x = x + Attn(LN1 x); y = x + MLP(LN2 x), separate matmuls."""
  h = flags['head_dim']
  ln = p['ln_atten']
  y = layer_norm(x, ln['scale'], ln.get('bias'), flags['ln_centering'],
                 flags['ln_epsilon'])
  wq, wk, wv = (p['w_qkv'][:, :, i * h : (i + 1) * h] for i in range(3))
  q = np.einsum('btd,dnh->btnh', y, wq)
  k = np.einsum('btd,dnh->btnh', y, wk)
  v = np.einsum('btd,dnh->btnh', y, wv)
  if flags['use_qkv_bias']:
    b = p['b_qkv'].reshape(-1, 3 * h)
    q, k, v = q + b[:, :h], k + b[:, h : 2 * h], v + b[:, 2 * h :]
  qn, kn = _qk_norms(p, flags)
  ctx, logits = attention(q, k, v, key_padding, qn, kn)
  if return_logits:
    return logits
  a = np.einsum('btnh,nhd->btd', ctx, p['w_atten_out'])
  if flags['use_qkv_bias']:
    a = a + p['b_atten_out']
  x = x + a
  ln = p['ln_mlp']
  y = layer_norm(x, ln['scale'], ln.get('bias'), flags['ln_centering'],
                 flags['ln_epsilon'])
  return x + mlp(p['mlp'], y, flags['use_mlp_bias'], flags['gelu_approximate'])


def map_head(p, x, flags, key_padding=None):
  """Probe attends over tokens, then x + MLP(LN(x)); returns [B, D]."""
  h = flags['head_dim']
  b = x.shape[0]
  probe = np.broadcast_to(p['probe'][None], (b, 1, x.shape[-1]))
  q = np.einsum('btd,dnh->btnh', probe, p['w_q'])
  k = np.einsum('btd,dnh->btnh', x, p['w_kv'][:, :, :h])
  v = np.einsum('btd,dnh->btnh', x, p['w_kv'][:, :, h:])
  if flags['use_qkv_bias']:
    b_kv = p['b_kv'].reshape(-1, 2 * h)
    q = q + p['b_q'].reshape(-1, h)
    k = k + b_kv[:, :h]
    v = v + b_kv[:, h:]
  qn, kn = _qk_norms(p, flags)
  ctx, _ = attention(q, k, v, key_padding, qn, kn)
  z = np.einsum('btnh,nhd->btd', ctx, p['w_atten_out'])
  if flags['use_qkv_bias']:
    z = z + p['b_atten_out']
  ln = p['ln']
  y = layer_norm(z, ln['scale'], ln.get('bias'), flags['ln_centering'],
                 flags['ln_epsilon'])
  z = z + mlp(p['mlp'], y, flags['use_mlp_bias'], flags['gelu_approximate'])
  return z[:, 0]


def stack_config(block_p, num_layers, repeated):
  """praxis StackedTransformer (or StackedTransformerRepeated) of block_p."""
  stack = pax_fiddle.Config(
      transformers.StackedTransformer,
      name='stack',
      model_dims=block_p.input_dims,
      hidden_dims=block_p.hidden_dims,
      num_heads=block_p.num_heads,
      dim_per_head=block_p.dim_per_head,
      num_layers=1 if repeated else num_layers,
      transformer_layer_params_tpl=block_p.clone(),
  )
  if not repeated:
    return stack
  return pax_fiddle.Config(
      transformers.StackedTransformerRepeated,
      name='repeated',
      block=stack,
      x_times=num_layers,
  )
