#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: installs what the tests
# need (as root, from Debian's packages and crates.io), checks formatting and
# lints, then runs the whole workspace's tests.
#
#   bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
need_apt=()
command -v qemu-img >/dev/null || need_apt+=(qemu-utils)
command -v mkfs.ext4 >/dev/null || need_apt+=(e2fsprogs)
command -v npm >/dev/null || need_apt+=(nodejs npm)   # Azurite, for the rha-azure page-blob tests
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]} (needed by the disk-image tests)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
# Azurite (the Azure Storage emulator) for the rha-azure page-blob tests,
# into target/azurite, once (the tests install it there too when missing).
if [ ! -x target/azurite/node_modules/.bin/azurite-blob ] && ! command -v azurite-blob >/dev/null; then
  echo "installing azurite into target/azurite (needed by the rha-azure page-blob tests)"
  mkdir -p target/azurite
  npm install --prefix target/azurite --no-audit --no-fund azurite@3
fi
# QEMU itself, for the local switchover VM tests (rha-core/tests/cloud_local.rs).
# qemu-utils comes from bookworm-backports here, so qemu-system-x86 must come
# from there too (bookworm's own one conflicts with it). The backports source
# is a private list of ours, made from the system's deb822 list; the system's
# own list is never edited.
if ! command -v qemu-system-x86_64 >/dev/null; then
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
  backports=/etc/apt/sources.list.d/rha-backports.sources
  if [ ! -e "$backports" ] && [ -r /etc/apt/sources.list.d/debian.sources ]; then
    # The stanza whose Suites include the release itself (not -security):
    # keep its Types, URIs, Components and Signed-By.
    stanza=$(awk -v rel="$codename" '
      BEGIN { RS = ""; FS = "\n" }
      { keep = 0; out = ""
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^Suites:/) { n = split($i, w, /[ \t]+/); for (j = 2; j <= n; j++) if (w[j] == rel) keep = 1 }
          else if ($i ~ /^(Types|URIs|Components|Signed-By):/) out = out $i "\n"
        }
        if (keep) { printf "%s", out; exit }
      }' /etc/apt/sources.list.d/debian.sources)
    if [ -n "$stanza" ]; then
      echo "adding $backports (${codename}-backports, for qemu-system-x86)"
      printf '# Added by rha scripts/test.sh for qemu-system-x86 (matches qemu-utils from backports).\n%s\nSuites: %s-backports\n' \
        "$stanza" "$codename" | as_root tee "$backports" >/dev/null
    fi
  fi
  echo "installing qemu-system-x86 and ovmf from ${codename}-backports (needed by the local VM tests)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -t "${codename}-backports" qemu-system-x86 ovmf \
    || echo "warning: could not install qemu-system-x86; the local VM tests will only write launch definitions"
fi
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy

# A clean build gains nothing from incremental compilation caches: they only
# cost time and disk (set CARGO_INCREMENTAL=1 to keep them while developing).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --workspace --no-fail-fast 2>&1 | tee target/test-output.txt

# The Python bindings (rha-py): a fresh virtual environment, `pip install
# ./rha-py` from source (maturin; the dev profile, and the features that make
# its dependencies the ones cargo test just compiled), then the pytest suite,
# which also runs the example and `mypy --strict` on it against the stubs.
echo "== Python bindings: fresh venv, pip install ./rha-py, pytest"
py_started=$(date +%s)
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  echo "installing python3-venv (needed by the rha-py tests)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv python3-pip
fi
venv="${CARGO_TARGET_DIR:-target}/py-venv"
case "$venv" in /*) ;; *) venv="$PWD/$venv" ;; esac
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "maturin>=1.9,<2" pytest mypy
export PATH="$venv/bin:$PATH"   # the maturin backend runs `maturin` from PATH
MATURIN_PEP517_ARGS="--profile dev --features reuse-test-build --strip" "$venv/bin/python" -m pip install -q --disable-pip-version-check \
  --no-build-isolation ./rha-py
(cd rha-py && "$venv/bin/python" -m pytest -q -p no:cacheprovider tests) 2>&1 | tee target/pytest-output.txt
echo "rha-py: $(( $(date +%s) - py_started )) s (install and pytest)"

# One closing line for the whole run (the last crate's own line may be a doc-test binary with no tests).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;/) p += $i; if ($(i+1) ~ /^failed;/) f += $i } }
     /^[0-9]+ (passed|failed)/ && FILENAME ~ /pytest/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "all tests: %d passed, %d failed\n", p, f }' target/test-output.txt target/pytest-output.txt
