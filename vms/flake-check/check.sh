#!/bin/sh
# Offline checks of flake.nix (nixpkgs cannot be fetched here): the file parses, its outputs
# have the expected shape, and the node module yields the agent unit it should, all evaluated
# against a tiny stand-in for nixpkgs' lib. This does NOT build anything.
set -eu
cd "$(dirname "$0")"
nix-instantiate --parse ../../flake.nix >/dev/null
echo "flake.nix parses"
nix-instantiate --eval --strict outputs.nix
nix-instantiate --eval --strict node-module.nix
