"""Command-line tools (`python -m vit22b_pax.tools.NAME`), started quietly.

TensorFlow 2.9 logs from C++ as soon as it is imported: oneDNN notices and
one warning per CUDA library it cannot load (dso_loader: libcudart,
libcuda, cuInit), all irrelevant on a CPU machine. Its C++ logging level
is read once, from TF_CPP_MIN_LOG_LEVEL, when TensorFlow loads, so it must
be set before the first `import tensorflow`. Python imports this package
before the module `python -m vit22b_pax.tools.NAME` names, so setting it
here (silence_startup(), called at the bottom) quiets every tool whatever
its own import order.

What stays visible: TensorFlow errors, absl warnings, Python warnings
other than third-party deprecation notices, and anything a tool prints.
A user's own TF_CPP_MIN_LOG_LEVEL or --verbosity wins.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from typing import Iterator, Pattern
import warnings

# 2: TensorFlow's C++ logs at ERROR and above only.
TF_LOG_LEVEL = '2'
# The process environment before silence_startup() changed it: child
# processes get this one, so their own logs stay complete.
ORIGINAL_ENVIRON = dict(os.environ)
# What paxml's experiment registry prints to stderr for every class it
# registers (with print: absl logging is not set up at import time).
REGISTRY_LINE = re.compile(r'Registered experiment `[^`]*`')


def silence_startup() -> None:
  """Hides TensorFlow's C++ start-up logs and third-party deprecations."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', TF_LOG_LEVEL)
  # Deprecation notices raised from inside third-party packages (TF, jax,
  # lingvo, ...): nothing a user of the tool can act on. Ours stay visible.
  for category in (DeprecationWarning, PendingDeprecationWarning,
                   FutureWarning):
    warnings.filterwarnings(
        'ignore', category=category, module=r'(?!vit22b_pax(\.|$))'
    )


def absl_warnings_only() -> None:
  """Makes WARNING the default absl verbosity of an absl.app program.

  absl's app.run raises the verbosity to INFO when --verbosity was not
  given; setting the flag here (before app.run) keeps paxml's, lingvo's and
  jax's INFO start-up lines out, while --verbosity=0 on the command line
  still wins because flags are parsed after this. Call it in the program's
  `if __name__ == '__main__':` block.
  """
  from absl import logging  # pylint: disable=g-import-not-at-top

  logging.set_verbosity(logging.WARNING)


class _DropLines(io.TextIOBase):
  """A text stream that forwards every line but those matching a pattern."""

  def __init__(self, stream, pattern: Pattern[str]):
    super().__init__()
    self._stream = stream
    self._pattern = pattern
    self._pending = ''

  def write(self, text: str) -> int:
    self._pending += text
    *lines, self._pending = self._pending.split('\n')
    for line in lines:
      if not self._pattern.fullmatch(line):
        self._stream.write(line + '\n')
    return len(text)

  def flush(self) -> None:
    if self._pending and not self._pattern.fullmatch(self._pending):
      self._stream.write(self._pending)
    self._pending = ''
    self._stream.flush()


@contextlib.contextmanager
def without_registry_lines() -> Iterator[None]:
  """Drops paxml's 'Registered experiment `...`' lines from stderr.

  Wrap the import of an experiment module: every other line written to
  stderr in the block (warnings, tracebacks printed there) passes through.
  """
  filtered = _DropLines(sys.stderr, REGISTRY_LINE)
  with contextlib.redirect_stderr(filtered):
    try:
      yield
    finally:
      filtered.flush()


def resolve_experiment(name: str):
  """Returns the experiment class named `name` (full or class name).

  Raises:
    absl.app.UsageError: no such experiment (names the closest).
  """
  # Imported here: --help stays fast (paxml imports TensorFlow and lingvo).
  # pylint: disable=g-import-not-at-top
  from absl import app
  from paxml import experiment_registry
  from vit22b_pax import knobs

  with without_registry_lines():
    from vit22b_pax import experiments

    if '.' in name:
      __import__(name.rsplit('.', 1)[0])
  # pylint: enable=g-import-not-at-top
  if '.' in name:
    cls = experiment_registry.get(name)
  else:
    cls = experiments.registered().get(name)
  if cls is None:
    names = sorted(experiments.registered())
    close = knobs.closest_name(name.rsplit('.', 1)[-1], names)
    raise app.UsageError(
        f'Unknown experiment {name!r}'
        + (f'; did you mean {close!r}?' if close else '')
        + f' Registered: {", ".join(names)}'
    )
  return cls


silence_startup()
