//! `swarmkit vm ...`: guest images for the qemu backend.

use std::path::PathBuf;
use std::time::Instant;

use ::testbed::vm::image::{self, BuildOptions};
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum VmCmd {
    /// Build (or reuse from the cache) the guest image: a kernel and an initramfs
    Build {
        /// Uncompressed vmlinux or a bzImage with an xz payload (default: Debian's linux-image-amd64)
        #[arg(long, requires = "modules")]
        kernel: Option<PathBuf>,
        /// Module tree for --kernel: a ROOT with lib/modules/VERSION, or that directory itself
        #[arg(long, requires = "kernel")]
        modules: Option<PathBuf>,
        /// Also place vmlinux and initramfs.img in this directory
        #[arg(long)]
        out: Option<PathBuf>,
        /// Look for a newer linux-image-amd64 (otherwise the one already unpacked is reused)
        #[arg(long)]
        refresh_kernel: bool,
    },
    /// Boot COUNT guests of the image at once with INITRD as their only userspace (whose init
    /// must power off) and print the seconds until all are off: bench/run.sh's baseline
    #[command(name = "bare-boot", hide = true)]
    BareBoot {
        #[arg(long)]
        initrd: PathBuf,
        #[arg(long, default_value_t = 3)]
        count: usize,
    },
}

pub async fn run(cmd: VmCmd) -> anyhow::Result<i32> {
    match cmd {
        VmCmd::Build {
            kernel,
            modules,
            out,
            refresh_kernel,
        } => {
            let started = Instant::now();
            let opts = BuildOptions {
                kernel,
                modules,
                out,
                refresh_kernel,
                ..Default::default()
            };
            let img = tokio::task::spawn_blocking(move || image::build(&opts)).await??;
            println!(
                "image {} ({}kernel {}) in {:.2}s",
                img.hash,
                if img.cached { "cached, " } else { "" },
                img.kernel_version,
                started.elapsed().as_secs_f64()
            );
            println!("  kernel    {}", img.vmlinux.display());
            println!("  initramfs {}", img.initramfs.display());
            if let Some(v) = &img.volume {
                println!("  volume    {}", v.display());
            }
            Ok(0)
        }
        VmCmd::BareBoot { initrd, count } => {
            let took = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                let img = image::build(&BuildOptions::default())?;
                Ok(testbed::vm::qemu::bare_boots(&img, &initrd, count)?)
            })
            .await??;
            println!("{:.2}", took.as_secs_f64());
            Ok(0)
        }
    }
}
