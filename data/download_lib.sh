#!/usr/bin/env bash
# Shared helper: resumable, checksummed download (sourced by the data scripts).
#   fetch URL OUT ALGO SUM   ALGO: md5 | sha1 | sha256 | none (prints the sha256 instead)
# Downloads into OUT.part (resuming with curl -C - or wget -c), verifies, then renames:
# OUT only ever holds a complete, verified file. An existing verified OUT is kept.

checksum_of() {  # ALGO FILE
  case "$1" in
    md5) md5sum "$2" | cut -d' ' -f1 ;;
    sha1) sha1sum "$2" | cut -d' ' -f1 ;;
    sha256|none) sha256sum "$2" | cut -d' ' -f1 ;;
    *) echo "unknown checksum algorithm $1" >&2; return 2 ;;
  esac
}

fetch() {
  local url="$1" out="$2" algo="$3" want="$4"
  if [[ -f "$out" && "$algo" != none && "$(checksum_of "$algo" "$out")" == "$want" ]]; then
    echo "ok (cached): $out"; return 0
  fi
  mkdir -p "$(dirname "$out")"
  if command -v curl >/dev/null; then
    curl -fL --retry 5 --retry-delay 3 -C - -o "$out.part" "$url" || {
      echo "error: download of $url failed" >&2; return 1; }
  elif command -v wget >/dev/null; then
    wget -c -t 5 -O "$out.part" "$url" || { echo "error: download of $url failed" >&2; return 1; }
  else
    echo "error: neither curl nor wget is installed" >&2; return 1
  fi
  local got; got="$(checksum_of "$algo" "$out.part")"
  if [[ "$algo" == none ]]; then
    echo "warning: no pinned checksum for $url; its sha256 is $got" >&2
  elif [[ "$got" != "$want" ]]; then
    echo "error: $algo of $url is $got, expected $want (kept as $out.part; delete it to retry)" >&2
    return 1
  fi
  mv -f "$out.part" "$out"
  echo "ok: $out"
}
