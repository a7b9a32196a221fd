{
  description = "swarmkit: Docker Swarm networking you can run, watch and test";

  # Not built on the project's CI machines (they cannot fetch nixpkgs); see vms/README.md for
  # what was and was not verified.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";

  outputs =
    { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # Kernel modules the dataplane needs on a node (IPVS, overlays, nftables, IPsec ESP).
      nodeKernelModules = [
        "ip_vs"
        "ip_vs_rr"
        "ip_vs_wrr"
        "ip_vs_sh"
        "vxlan"
        "veth"
        "bridge"
        "br_netfilter"
        "nf_conntrack"
        "nf_tables"
        "nft_nat"
        "nft_chain_nat"
        "nft_masq"
        "nft_numgen"
        "nft_ct"
        "nft_fib_ipv4"
        "xfrm_user"
        "af_key"
        "esp4"
        "gcm"
        "ghash_generic"
        "ctr"
        "seqiv"
        "echainiv"
        "authenc"
        "jitterentropy_rng"
        "drbg"
        "qemu_fw_cfg"
      ];

      # One NixOS guest for the qemu backend. It keeps the contract of swarmkit's own image
      # (vms/README.md): hostname and underlay address from the kernel command line, SSH host
      # key and authorized key from QEMU's firmware config, and a console line once sshd runs.
      guestConfig =
        { config, lib, pkgs, modulesPath, ... }:
        {
          imports = [
            "${modulesPath}/installer/netboot/netboot-minimal.nix"
            self.nixosModules.node
          ];
          system.stateVersion = "24.11";
          services.swarmkit-node = {
            enable = true;
            # Started over SSH by the host's `__vmhost` daemon, as on swarmkit's own image.
            startAgent = false;
          };
          networking.useDHCP = false;
          # The contract names the underlay NIC eth0 and the management NIC eth1.
          networking.usePredictableInterfaceNames = false;
          networking.hostName = "";
          services.getty.autologinUser = lib.mkForce null;
          documentation.enable = false;
          boot.kernelParams = [ "console=ttyS0" ];

          systemd.services.swarmkit-guest-setup = {
            description = "swarmkit guest contract: hostname, addresses, SSH keys";
            wantedBy = [ "multi-user.target" ];
            before = [ "sshd.service" ];
            requiredBy = [ "sshd.service" ];
            after = [ "systemd-modules-load.service" ];
            path = [
              pkgs.iproute2
              pkgs.coreutils
              pkgs.gnused
              pkgs.hostname
            ];
            serviceConfig.Type = "oneshot";
            serviceConfig.RemainAfterExit = true;
            script = ''
              arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^sk\.$1=//p" | head -n1; }
              hostname "$(arg hostname)"
              ip link set lo up
              ip link set eth0 up && ip addr add "$(arg addr)" dev eth0
              ip link set eth1 up && ip addr add "$(arg mgmt)" dev eth1
              fw=/sys/firmware/qemu_fw_cfg/by_name/opt/swarmkit
              install -d -m 0700 /etc/ssh/swarmkit /root/.ssh
              install -m 0600 $fw/host_key/raw /etc/ssh/swarmkit/host_key
              install -m 0600 $fw/authorized_keys/raw /root/.ssh/authorized_keys
            '';
          };
          services.openssh.hostKeys = lib.mkForce [ ];
          services.openssh.extraConfig = "HostKey /etc/ssh/swarmkit/host_key";
          systemd.services.swarmkit-ready = {
            description = "Tell the host on the console that sshd is up";
            wantedBy = [ "multi-user.target" ];
            after = [ "sshd.service" ];
            serviceConfig.Type = "oneshot";
            script = "echo 'swarmkit-init: ready for ssh' > /dev/ttyS0";
          };
        };
    in
    {
      packages = forAllSystems (pkgs: {
        swarmkit = pkgs.rustPlatform.buildRustPackage {
          pname = "swarmkit";
          version = "0.1.0";
          src = pkgs.lib.cleanSource ./.;
          cargoLock.lockFile = ./Cargo.lock;
          nativeBuildInputs = [ pkgs.makeWrapper ];
          # The tests need root, network namespaces and QEMU: they run in `checks`, not here.
          doCheck = false;
          cargoBuildFlags = [ "-p" "swarmkit" ];
          postInstall = ''
            wrapProgram $out/bin/swarmkit --prefix PATH : ${
              pkgs.lib.makeBinPath [
                pkgs.nftables
                pkgs.ipvsadm
                pkgs.iproute2
                pkgs.kmod
                pkgs.curl
                pkgs.qemu_kvm
              ]
            }
          '';
          meta = {
            description = "Docker Swarm networking (overlays, IPVS/nftables load balancing, routing mesh) you can run, watch and test";
            license = pkgs.lib.licenses.asl20;
            mainProgram = "swarmkit";
            platforms = pkgs.lib.platforms.linux;
          };
        };
        default = self.packages.${pkgs.system}.swarmkit;

        # kernel + initrd + cmdline of the NixOS guest, in the layout SWARMKIT_VM_IMAGE takes.
        nixos-guest-image =
          let
            guest = nixpkgs.lib.nixosSystem {
              inherit (pkgs) system;
              modules = [ guestConfig ];
            };
            build = guest.config.system.build;
          in
          pkgs.runCommand "swarmkit-nixos-guest" { } ''
            mkdir -p $out
            ln -s ${build.kernel}/${guest.config.system.boot.loader.kernelFile} $out/kernel
            ln -s ${build.netbootRamdisk}/initrd $out/initrd
            echo "init=${build.toplevel}/init ${toString guest.config.boot.kernelParams}" > $out/cmdline
          '';
      });

      nixosModules.node =
        { config, lib, pkgs, ... }:
        let
          cfg = config.services.swarmkit-node;
        in
        {
          options.services.swarmkit-node = {
            enable = lib.mkEnableOption "a swarmkit node (kernel modules, sshd and the agent)";
            package = lib.mkOption {
              type = lib.types.package;
              default = self.packages.${pkgs.stdenv.hostPlatform.system}.swarmkit;
              defaultText = lib.literalExpression "swarmkit.packages.\${system}.swarmkit";
              description = "The swarmkit package whose agent runs here.";
            };
            startAgent = lib.mkOption {
              type = lib.types.bool;
              default = true;
              description = ''
                Run the agent as a systemd unit. Off when a `swarmkit cluster up` drives the
                machine over SSH and starts the agent itself.
              '';
            };
            cluster = lib.mkOption {
              type = lib.types.str;
              default = "default";
              description = "Name of the cluster this node belongs to.";
            };
            nodeName = lib.mkOption {
              type = lib.types.str;
              default = config.networking.hostName;
              defaultText = lib.literalExpression "config.networking.hostName";
              description = "Hostname the node registers with.";
            };
            nodeAddress = lib.mkOption {
              type = lib.types.str;
              example = "192.168.0.11";
              description = "Underlay IPv4 address of this node (its VXLAN endpoint).";
            };
            managerAddress = lib.mkOption {
              type = lib.types.str;
              default = "127.0.0.1:2377";
              description = ''
                host:port of the manager. The default is the port `swarmkit cluster up`
                forwards back to the manager over its SSH session.
              '';
            };
            mesh = lib.mkOption {
              type = lib.types.enum [
                "sandbox"
                "node"
              ];
              default = "sandbox";
              description = ''
                Where the routing mesh balances published ports: in the ingress sandbox, as
                Docker does, or in this machine's own IPVS (`ipvsadm -Ln` on the node shows
                it; the agent then owns the machine's IPVS table, so only for machines that
                are nothing but swarmkit nodes).
              '';
            };
            loadBalancer = lib.mkOption {
              type = lib.types.enum [
                "ipvs"
                "nftables"
              ];
              default = "ipvs";
              description = "Service load balancer.";
            };
            authorizedKeys = lib.mkOption {
              type = lib.types.listOf lib.types.str;
              default = [ ];
              description = "SSH keys allowed to log in as root (the cluster's client key).";
            };
          };

          config = lib.mkIf cfg.enable {
            boot.kernelModules = nodeKernelModules;
            boot.kernel.sysctl."net.ipv4.ip_forward" = 1;
            # The agent owns its nftables tables; the NixOS firewall would filter VXLAN
            # (udp/4789) and published ports.
            networking.firewall.enable = false;
            networking.nftables.enable = true;
            services.openssh = {
              enable = true;
              settings = {
                PermitRootLogin = "prohibit-password";
                PasswordAuthentication = false;
                KbdInteractiveAuthentication = false;
              };
            };
            users.users.root.openssh.authorizedKeys.keys = cfg.authorizedKeys;
            environment.systemPackages = [
              cfg.package
              pkgs.ipvsadm
              pkgs.nftables
              pkgs.iproute2
              pkgs.curl
            ];
            systemd.tmpfiles.rules = [ "d /run/netns 0755 root root -" ];
            systemd.services.swarmkit-agent = lib.mkIf cfg.startAgent {
              description = "swarmkit agent for cluster ${cfg.cluster}";
              wantedBy = [ "multi-user.target" ];
              wants = [ "network-online.target" ];
              after = [ "network-online.target" ];
              path = [
                pkgs.nftables
                pkgs.ipvsadm
                pkgs.iproute2
                pkgs.kmod
              ];
              environment = {
                SWARMKIT_NODE_NS = "self";
                SWARMKIT_NODE_ADDR = cfg.nodeAddress;
                SWARMKIT_MANAGER_TCP = cfg.managerAddress;
                SWARMKIT_LB = cfg.loadBalancer;
                SWARMKIT_MESH = cfg.mesh;
                SWARMKIT_OWNER = cfg.cluster;
                # Batches go through libnftables in-process; NixOS has no global library path.
                SWARMKIT_LIBNFTABLES = "${pkgs.nftables}/lib/libnftables.so.1";
              };
              serviceConfig = {
                ExecStart = "${lib.getExe cfg.package} --cluster ${cfg.cluster} __agent --node ${cfg.nodeName}";
                Restart = "always";
                RestartSec = 1;
                # Tasks are the agent's children; stop them with it.
                KillMode = "control-group";
              };
            };
          };
        };

      # `nix run .#cluster` (as root): three NixOS guests under the qemu backend, driven by
      # the same binary. Extra arguments go to `cluster up`.
      apps = forAllSystems (pkgs: {
        cluster = {
          type = "app";
          program = toString (
            pkgs.writeShellScript "swarmkit-nixos-cluster" ''
              export SWARMKIT_VM_IMAGE=${self.packages.${pkgs.system}.nixos-guest-image}
              exec ${pkgs.lib.getExe self.packages.${pkgs.system}.swarmkit} \
                cluster up --name nixos --backend qemu --nodes 3 "$@"
            ''
          );
        };
      });

      # The routing walkthrough on the netns backend. It needs root and network namespaces,
      # so it runs in a NixOS VM test rather than the build sandbox.
      checks = forAllSystems (pkgs: {
        routing-walkthrough = pkgs.testers.runNixOSTest {
          name = "swarmkit-routing-walkthrough";
          nodes.machine =
            { ... }:
            {
              environment.systemPackages = [
                self.packages.${pkgs.system}.swarmkit
                pkgs.curl
              ];
              networking.nftables.enable = true;
              virtualisation.memorySize = 2048;
              virtualisation.cores = 2;
            };
          testScript = ''
            machine.wait_for_unit("multi-user.target")
            machine.succeed("swarmkit walkthrough routing --backend netns >&2")
          '';
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt-rfc-style);
    };
}
