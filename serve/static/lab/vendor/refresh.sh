#!/usr/bin/env bash
# Refresh the Lab's vendored front-end libraries from the npm registry, at the pinned versions
# below: `npm pack` fetches each package's tarball (checked against the registry's integrity
# hash), and only the files the Lab loads, plus the package's licence, are copied next to this
# script. pip users then need neither Node nor a CDN. Run it after changing a version and commit
# the result: serve/static/lab/vendor/refresh.sh
set -euo pipefail
cd "$(dirname "$0")"
LEAFLET=1.9.4
GEOMAN=2.20.2  # @geoman-io/leaflet-geoman-free (MIT), Leaflet's drawing and editing plugin

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "leaflet@$LEAFLET" "@geoman-io/leaflet-geoman-free@$GEOMAN" >/dev/null)

rm -rf leaflet leaflet-geoman
mkdir -p leaflet/images leaflet-geoman
tar -xzf "$work/leaflet-$LEAFLET.tgz" -C "$work" && mv "$work/package" "$work/leaflet"
cp "$work/leaflet/dist/leaflet.js" "$work/leaflet/dist/leaflet.css" "$work/leaflet/LICENSE" leaflet/
cp "$work"/leaflet/dist/images/*.png leaflet/images/
tar -xzf "$work/geoman-io-leaflet-geoman-free-$GEOMAN.tgz" -C "$work" && mv "$work/package" "$work/geoman"
cp "$work/geoman/dist/leaflet-geoman.min.js" "$work/geoman/dist/leaflet-geoman.css" "$work/geoman/LICENSE" leaflet-geoman/

# the source maps are not shipped: drop the comments that would make a browser ask for them
sed -i '/^\/\/# sourceMappingURL=/d' leaflet/leaflet.js leaflet-geoman/leaflet-geoman.min.js
sed -i 's#/\*\# sourceMappingURL=[^*]*\*/##' leaflet/leaflet.css leaflet-geoman/leaflet-geoman.css

cat > VERSIONS <<TXT
leaflet $LEAFLET (BSD-2-Clause) https://www.npmjs.com/package/leaflet
@geoman-io/leaflet-geoman-free $GEOMAN (MIT) https://www.npmjs.com/package/@geoman-io/leaflet-geoman-free
TXT
echo "vendored: $(tr '\n' ';' < VERSIONS)"
