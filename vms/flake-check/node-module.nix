let
  flake = import ../../flake.nix;
  lib = {
    genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
    mkEnableOption = d: { enable = d; };
    mkOption = x: x;
    types = { package = "package"; bool = "bool"; str = "str"; enum = x: x; listOf = x: x; };
    literalExpression = x: x;
    mkIf = c: x: x;
    getExe = x: "${x.name}/bin/swarmkit";
  };
  pkgs = { system = "x86_64-linux"; stdenv.hostPlatform.system = "x86_64-linux";
    ipvsadm = "ipvsadm"; nftables = "nft"; iproute2 = "ip"; curl = "curl"; kmod = "kmod"; };
  nixpkgs = { inherit lib; legacyPackages.x86_64-linux = pkgs; };
  self = flake.outputs { inherit self nixpkgs; };
  cfg = { enable = true; package = { name = "/nix/store/x-swarmkit"; }; startAgent = true; cluster = "c1";
          nodeName = "node1"; nodeAddress = "192.168.0.11"; managerAddress = "127.0.0.1:2377";
          loadBalancer = "ipvs"; mesh = "node"; authorizedKeys = []; };
  m = self.nixosModules.node { config = { services.swarmkit-node = cfg; networking.hostName = "n"; }; inherit lib pkgs; };
in {
  options = builtins.attrNames m.options.services.swarmkit-node;
  exec = m.config.systemd.services.swarmkit-agent.serviceConfig.ExecStart;
  env = m.config.systemd.services.swarmkit-agent.environment;
  modules = builtins.length m.config.boot.kernelModules;
}
