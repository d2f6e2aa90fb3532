# Sourced by the GPU scripts: packages the device image lacks, carried by the device tool (its transfers are
# capped at 64 MiB with the tree, so big ones travel split over consecutive calls of one warm machine):
# wheels in .whl/, .whlA/, .whlB/ are installed, and *.tar.xz of an unpacked wheel's files are extracted, into
# /tmp/titaninfer-site (outside the checkout, which the tool re-syncs each call; kept while the machine stays
# warm, 30 s between calls), which goes on PYTHONPATH.
SITE=/tmp/titaninfer-site
for w in .whl .whlA .whlB; do
  if ls "$w"/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$w"/*.whl 2>&1 | grep -v -i warning
  fi
  for t in "$w"/*.tar.xz; do
    if [ -f "$t" ]; then mkdir -p "$SITE" && tar xJf "$t" -C "$SITE"; fi
  done
done
if [ -d "$SITE" ]; then export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$SITE"; fi
