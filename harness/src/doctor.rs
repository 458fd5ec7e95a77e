//! `unlost doctor`: which capabilities this machine has and which plan
//! features each enables.

use std::path::Path;

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

/// One capability check.
pub struct Capability {
    pub name: &'static str,
    pub present: bool,
    pub enables: &'static str,
    pub hint: &'static str,
}

/// Probes the machine.
pub fn capabilities() -> Vec<Capability> {
    let root = nix::unistd::geteuid().is_root();
    let userns = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .is_ok_and(|s| s.trim() != "0");
    vec![
        Capability {
            name: "unlost-broker binary",
            present: crate::driver::kafka::broker_binary().is_ok(),
            enables: "broker: builtin",
            hint: "cargo build -p unlost-broker, or set UNLOST_BROKER_BIN",
        },
        Capability {
            name: "root",
            present: root,
            enables: "drop-kernel-caches; namespaces without a user namespace",
            hint: "run as root",
        },
        Capability {
            name: "user namespaces",
            present: userns,
            enables: "the network sandbox when not root",
            hint: "sysctl user.max_user_namespaces > 0",
        },
        Capability {
            name: "nft (nftables)",
            present: on_path("nft"),
            enables: "partition, packet-loss",
            hint: "apt-get install nftables",
        },
        Capability {
            name: "/dev/fuse",
            present: Path::new("/dev/fuse").exists(),
            enables: "storage.lazyfs, power-loss, disk-error",
            hint: "load the fuse module",
        },
        Capability {
            name: "kcat",
            present: on_path("kcat"),
            enables: "ci/demo and tests (not needed by runs)",
            hint: "apt-get install kcat",
        },
    ]
}

/// Prints the report; the exit code is 0.
pub fn report() -> i32 {
    println!(
        "{:<24}{:<9}{:<44}how to get it",
        "capability", "present", "enables"
    );
    for c in capabilities() {
        println!(
            "{:<24}{:<9}{:<44}{}",
            c.name,
            if c.present { "yes" } else { "NO" },
            c.enables,
            if c.present { "" } else { c.hint }
        );
    }
    println!("\nprocess faults (kill, pause, restart, consumer-crash) need nothing beyond the broker binary.");
    println!("partition and packet-loss need nft; power-loss and disk-error need /dev/fuse; drop-kernel-caches needs real root.");
    0
}
