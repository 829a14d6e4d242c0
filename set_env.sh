# Set up (first time) and activate the project's virtual environment.
# Usage: source set_env.sh
# Idempotent: the install step is skipped while requirements.txt is unchanged.
_posefree_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)"
_posefree_venv="${POSEFREE_VENV:-$_posefree_root/.venv}"
_posefree_ok=1
if [ ! -x "$_posefree_venv/bin/python" ]; then
  echo "posefree: creating virtual environment in $_posefree_venv"
  python3 -m venv "$_posefree_venv" || _posefree_ok=0
fi
if [ "$_posefree_ok" = 1 ]; then
  _posefree_stamp="$_posefree_venv/.requirements.sha256"
  _posefree_hash="$(sha256sum "$_posefree_root/requirements.txt" | cut -d' ' -f1)"
  if [ ! -f "$_posefree_stamp" ] || [ "$(cat "$_posefree_stamp")" != "$_posefree_hash" ]; then
    echo "posefree: installing pinned requirements (first time takes a few minutes)"
    if "$_posefree_venv/bin/python" -m pip install --quiet --upgrade pip \
      && "$_posefree_venv/bin/python" -m pip install --quiet -r "$_posefree_root/requirements.txt"; then
      echo "$_posefree_hash" > "$_posefree_stamp"
    else
      echo "posefree: installing requirements failed; see the pip output above" >&2
      _posefree_ok=0
    fi
  fi
fi
if [ "$_posefree_ok" = 1 ]; then
  # shellcheck disable=SC1091
  . "$_posefree_venv/bin/activate"
  export PYTHONPATH="$_posefree_root${PYTHONPATH:+:$PYTHONPATH}"
fi
unset _posefree_venv _posefree_stamp _posefree_hash
[ "$_posefree_ok" = 1 ]
