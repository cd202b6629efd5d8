"""Shared pytest setup: simulated CPU devices for multi-device tests.

Must run before jax is imported anywhere in the test process.
"""

import os

_FLAG = '--xla_force_host_platform_device_count=8'
if _FLAG not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + _FLAG).strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# TensorFlow must not grab the (absent) GPU or all host memory.
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
