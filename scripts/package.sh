#!/usr/bin/env bash
# Build the Debian package: target/debian/xmpp-lb_VERSION-1_ARCH.deb.
#
#     bash scripts/package.sh                 # the release build, as shipped
#     bash scripts/package.sh --profile NAME  # another Cargo profile
#     bash scripts/package.sh --profile dev --no-build   # the dev binary already built (tests)
#
# The man pages and shell completions come from the command line's own definition (the hidden
# `xmpp-lb man` and `xmpp-lb completions` commands) of the binary just built, so they always
# describe that binary; cargo-deb then packs the assets listed in Cargo.toml
# ([package.metadata.deb]).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
build=yes
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile=${2:?--profile needs a name}; shift 2 ;;
    # Pack the binary the profile already built (tests/package.rs packs the tests' own).
    --no-build) build=no; shift ;;
    *) echo "usage: $0 [--profile NAME] [--no-build]" >&2; exit 2 ;;
  esac
done
command -v cargo-deb >/dev/null || { echo "cargo-deb is missing: bash scripts/install-deps.sh" >&2; exit 1; }

if [ "$build" = yes ]; then
  cargo build --locked --profile "$profile" --bin xmpp-lb
fi
case "$profile" in
  dev) dir=debug ;;
  *) dir=$profile ;;
esac
target=${CARGO_TARGET_DIR:-target}
bin="$target/$dir/xmpp-lb"

assets=target/package
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions"
"$bin" man "$assets/man"
"$bin" completions bash > "$assets/completions/xmpp-lb.bash"
"$bin" completions zsh > "$assets/completions/_xmpp-lb"
"$bin" completions fish > "$assets/completions/xmpp-lb.fish"

# The last line of output is the path of the package.
cargo deb --no-build --locked --profile "$profile" --fast --output "$target/debian/"
