//! libnftables in a process with thousands of descriptors (an agent with a thousand tasks):
//! its socket must land below FD_SETSIZE, or glibc aborts the process on its first select.
//! Alone in its binary, because it fills the process's descriptor table.

use std::os::fd::AsRawFd;

use netcore::netns::NetNs;
use netcore::nft::libnft::{self, Context, reserve_low_descriptors};
use testkit::netns::Namespaces;

#[test]
fn a_context_opens_below_fd_setsize_however_many_descriptors_are_open() {
    testkit::skip_unless!(testkit::needs_root().or_else(|| {
        (!libnft::available()).then(|| "libnftables is not installed".to_string())
    }));
    reserve_low_descriptors(2);
    let crowd: Vec<std::fs::File> = (0..1500)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    assert!(crowd.last().unwrap().as_raw_fd() > 1024);
    let nss = Namespaces::new("libnftfds");
    let ns = NetNs::open(&nss.create("ns")).unwrap();
    // Three in a row: each freed context's descriptor is set aside again for the next.
    for round in 0..3 {
        let mut ctx = Context::open_in(&ns).unwrap_or_else(|| panic!("round {round}: no context"));
        ctx.run(&format!("add table ip t{round}"))
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
    let listed = netcore::nft::run_nft(&ns, &["list", "tables"], None).unwrap();
    for t in ["t0", "t1", "t2"] {
        assert!(listed.contains(&format!("table ip {t}")), "{listed}");
    }
}
