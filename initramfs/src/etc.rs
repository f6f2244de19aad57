//! The appliance's `/etc`: its users and groups (hostd maps socket peers to roles by group),
//! and hostd's configuration.

/// `/etc/passwd`: root only; operators are root on the console.
pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n";

/// `/etc/group`: hostd's socket group and its appliance-admin group (docs/HOSTD.md).
pub const GROUP: &str = "root:x:0:\nhostd:x:990:\nhostd-admin:x:991:\n";

/// `/etc/hostd/hostd.toml`: state on the data disk (the root filesystem is RAM), the first
/// core for housekeeping and the rest for guests, 1 GiB kept for the host. No VF counts:
/// the factory suite and the lab tests expect the PFs without VFs at boot (a box's own
/// config gives them; the VF lab test adds them and restarts hostd, as an operator would).
pub const HOSTD_TOML: &str = "\
# hostd on the appliance (written by the initramfs builder; docs/HOSTD.md).
state_dir = \"/data/hostd\"

[cores]
housekeeping = \"0\"

[memory]
host_reserve_mib = 1024

# VFs per SR-IOV PF, set when hostd starts (docs/HOSTD.md, \"VF assignment\"), e.g.
# [sriov.num_vfs]
# \"0000:01:00.0\" = 4
";

/// Every file, by its path in the image.
pub const FILES: &[(&str, &str)] = &[
    ("etc/passwd", PASSWD),
    ("etc/group", GROUP),
    ("etc/hostd/hostd.toml", HOSTD_TOML),
];
