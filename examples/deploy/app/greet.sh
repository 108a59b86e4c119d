#!/bin/sh
# The "application" this example builds and deploys: it greets, and says which version it is.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
version=$(cat "$here/VERSION" 2>/dev/null || cat "$here/../VERSION")
echo "hello ${1:-world}, from greet $version"
