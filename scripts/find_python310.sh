#!/usr/bin/env bash
# Prints the path of a working Python 3.10 interpreter, or fails saying where
# it looked. paxml/praxis 1.4.0 need TensorFlow 2.9 and lingvo 0.12.7, which
# have no wheels past Python 3.10.
set -u
searched=()
try() {
  local cand="$1"
  searched+=("$cand")
  if out=$("$cand" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) \
      && [ "$out" = "3.10" ]; then
    command -v "$cand" 2>/dev/null || echo "$cand"
    exit 0
  fi
}
if command -v python3.10 >/dev/null 2>&1; then try python3.10; fi
root="${PYENV_ROOT:-$HOME/.pyenv}"
for cand in $(ls -d "$root"/versions/3.10*/bin/python3.10 2>/dev/null | sort -V -r); do
  try "$cand"
done
{
  echo "error: no working Python 3.10 interpreter found."
  echo "searched: python3.10 on PATH, then $root/versions/3.10*/bin/python3.10"
  [ ${#searched[@]} -gt 0 ] && echo "tried (none ran as 3.10): ${searched[*]}"
  echo "paxml/praxis 1.4.0 need Python 3.10 (TensorFlow 2.9, lingvo 0.12.7)."
  echo "install one, e.g. 'pyenv install 3.10' or your OS package python3.10,"
  echo "or point PYTHON310=/path/to/python3.10 at it: make PYTHON310=... test"
} >&2
exit 1
