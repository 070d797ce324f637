# shellcheck shell=bash
# Sourced from the checkout root by run.sh and test.sh. Takes a fresh Debian 12 machine to the point
# where .venv/bin/dmalab works and QEMU (and the guest image) are built; a second run installs and
# builds nothing:
#   1. Debian packages that are missing (checked with dpkg-query first; apt runs only if needed),
#   2. .venv in the checkout, created if absent,
#   3. `pip install -e '.[test]'` when pyproject.toml changed since the last install,
#   4. `dmalab build all` (cached under ~/.cache/dmalab, $XDG_CACHE_HOME/dmalab or $DMALAB_CACHE).
# QEMU's own build dependencies are installed by `dmalab build` itself.

DMALAB_SETUP_PACKAGES=(python3 python3-venv python3-dev gcc libc6-dev make zstd git ca-certificates)
# The runner image (docs/lava.md) is built with Debian's podman (rootful, runc) and mmdebstrap.
DMALAB_SETUP_PACKAGES+=(podman runc mmdebstrap uidmap fuse-overlayfs slirp4netns)
# LAVA's dispatcher, run from its unpacked packages (docs/lava.md): cpio for the ramdisk overlay,
# libmagic for python-magic.
DMALAB_SETUP_PACKAGES+=(cpio libmagic1)

dmalab_missing_packages() {
    local pkg status
    for pkg in "$@"; do
        status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
        [[ $status == ii* ]] || printf '%s\n' "$pkg"
    done
}

dmalab_setup() {
    local missing=() want have python
    mapfile -t missing < <(dmalab_missing_packages "${DMALAB_SETUP_PACKAGES[@]}")
    if ((${#missing[@]})); then
        if [[ $(id -u) -ne 0 ]]; then
            echo "setup: missing Debian packages; as root run:" \
                "apt-get install --no-install-recommends ${missing[*]}" >&2
            return 3
        fi
        echo "setup: installing ${missing[*]}" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || return 3
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >&2 || return 3
    fi

    if [[ ! -x .venv/bin/python ]]; then
        python=/usr/bin/python3
        [[ -x $python ]] || python=python3
        echo "setup: creating .venv" >&2
        "$python" -m venv .venv || return 3
    fi

    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    have=$(cat .venv/.dmalab-installed 2>/dev/null || true)
    if [[ $want != "$have" || ! -x .venv/bin/dmalab ]]; then
        echo "setup: pip install -e '.[test]'" >&2
        .venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]' >&2 || return 3
        echo "$want" >.venv/.dmalab-installed
    fi

    .venv/bin/dmalab build all >&2
}

dmalab_setup
