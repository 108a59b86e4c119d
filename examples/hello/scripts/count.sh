#!/bin/sh
# Each job gets a fresh copy of the project: count what it sees.
echo "workspace $GITHUB_WORKSPACE holds $(find . -type f | wc -l) files"
