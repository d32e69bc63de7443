#!/usr/bin/env bash
# Installs the nightly tooling of the miri, ThreadSanitizer and fuzz steps, each part only when
# missing (quiet when everything is in place):
#
#   ci/nightly.sh [miri] [tsan] [fuzz]      (no argument: all three)
#
#   miri   the nightly toolchain (minimal profile) with the miri and rust-src components
#   tsan   the nightly toolchain with rust-src (-Zbuild-std)
#   fuzz   the nightly toolchain and cargo-fuzz (cargo +nightly install cargo-fuzz --locked, into
#          ~/.cargo/bin)
#
# Exits nonzero with the reason when a part cannot be installed; ci/miri.sh, ci/tsan.sh and
# scripts/fuzz.sh then fail when CI is set and print SKIPPED otherwise.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"

die() {
  echo "nightly: $*" >&2
  exit 1
}

parts=("$@")
[ "${#parts[@]}" -gt 0 ] || parts=(miri tsan fuzz)
components=()
fuzz=0
for part in "${parts[@]}"; do
  case "$part" in
    miri) components+=(miri rust-src) ;;
    tsan) components+=(rust-src) ;;
    fuzz) fuzz=1 ;;
    *) die "unknown part '$part' (known: miri, tsan, fuzz)" ;;
  esac
done

command -v rustup >/dev/null || die "rustup not found: it installs the nightly toolchain"
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "nightly: installing the nightly toolchain (minimal profile)"
  rustup toolchain install nightly --profile minimal >/dev/null 2>&1 ||
    die "the nightly toolchain cannot be installed (rustup toolchain install nightly --profile minimal failed)"
fi
missing=()
installed=$(rustup component list --toolchain nightly --installed 2>/dev/null) ||
  die "rustup cannot list the nightly toolchain's components"
for c in "${components[@]}"; do
  grep -q "^$c\(-\|$\)" <<<"$installed" || [[ " ${missing[*]} " == *" $c "* ]] || missing+=("$c")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "nightly: adding ${missing[*]} to the nightly toolchain"
  rustup component add --toolchain nightly "${missing[@]}" >/dev/null 2>&1 ||
    die "the nightly components ${missing[*]} cannot be installed (a nightly without miri happens: rustup component add --toolchain nightly ${missing[*]})"
fi
if [ "$fuzz" = 1 ] && ! cargo fuzz --version >/dev/null 2>&1; then
  echo "nightly: installing cargo-fuzz"
  cargo +nightly install cargo-fuzz --locked --quiet ||
    die "cargo-fuzz cannot be installed (cargo +nightly install cargo-fuzz --locked failed)"
fi
