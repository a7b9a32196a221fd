let
  flake = import ../../flake.nix;
  lib = {
    genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
  };
  nixpkgs = { inherit lib; legacyPackages.x86_64-linux = { system = "x86_64-linux"; }; };
  self = flake.outputs { inherit self nixpkgs; };
in {
  top = builtins.attrNames self;
  packages = builtins.attrNames self.packages.x86_64-linux;
  apps = builtins.attrNames self.apps.x86_64-linux;
  checks = builtins.attrNames self.checks.x86_64-linux;
  module = builtins.isFunction self.nixosModules.node;
  inputs = builtins.attrNames flake.inputs;
}
