//! Human output: tables that fit 80 columns (the front panel's serial console), state
//! colours only on a terminal (and never with NO_COLOR).

use std::io::IsTerminal;
use std::time::{Duration, UNIX_EPOCH};

use hostd_proto::{
    Actor, Event, EventKind, FastpathState, FastpathStatus, HostStatus, InstanceInfo,
    InstanceState, InstanceSummary, Inventory, Principal, Quota, Response, StackInfo, TemplateInfo,
    TemplateSummary,
};

/// Width of the front panel's console.
pub const WIDTH: usize = 80;

fn colour_on() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// A state word, coloured on a terminal.
pub fn state(state: InstanceState) -> String {
    let word = state.as_str();
    if !colour_on() {
        return word.to_owned();
    }
    let code = match state {
        InstanceState::Running => "32",
        InstanceState::Down | InstanceState::Error => "31",
        InstanceState::Starting | InstanceState::Stopping | InstanceState::Paused => "33",
        InstanceState::Defined | InstanceState::Stopped => return word.to_owned(),
    };
    format!("\x1b[{code}m{word}\x1b[0m")
}

/// A fast-path state word, coloured on a terminal like the instances' states.
fn fastpath_state(state: FastpathState) -> String {
    let word = state.as_str();
    let code = match state {
        FastpathState::Running => "32",
        FastpathState::Failed => "31",
        FastpathState::Starting | FastpathState::Restarting => "33",
        FastpathState::Disabled => return word.to_owned(),
    };
    if !colour_on() {
        return word.to_owned();
    }
    format!("\x1b[{code}m{word}\x1b[0m")
}

/// Visible width (escape sequences do not count).
fn width(cell: &str) -> usize {
    let mut n = 0;
    let mut in_escape = false;
    for c in cell.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, _) => n += 1,
        }
    }
    n
}

fn cut(cell: &str, max: usize) -> String {
    if width(cell) <= max || cell.contains('\x1b') {
        return cell.to_owned();
    }
    let mut out: String = cell.chars().take(max.saturating_sub(1)).collect();
    out.push('~');
    out
}

/// A table with one header line; the `flex` column is cut so every line fits [`WIDTH`].
pub fn table(headers: &[&str], rows: &[Vec<String>], flex: usize) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(width(cell));
        }
    }
    let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
    if total > WIDTH {
        let others = total - widths[flex];
        widths[flex] = WIDTH.saturating_sub(others).max(headers[flex].len());
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let cell = cut(cell, widths[i]);
            text.push_str(&cell);
            if i + 1 < cells.len() {
                text.push_str(&" ".repeat(widths[i] - width(&cell) + 2));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
    out
}

/// `2026-11-21 23:10:01` (UTC).
pub fn time(ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    let text = humantime::format_rfc3339_seconds(t).to_string();
    text.trim_end_matches('Z').replace('T', " ")
}

fn opt(s: &Option<hostd_proto::Name>) -> String {
    s.as_deref().unwrap_or("-").to_owned()
}

fn instances(list: &[InstanceSummary]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            vec![
                i.id.to_string(),
                i.name.to_string(),
                state(i.state),
                opt(&i.stack),
                opt(&i.group),
                format!("{}@{}", i.template, i.template_version),
                i.vcpus.to_string(),
                i.ram_mib.to_string(),
                i.vfs.to_string(),
                if i.ha { "on" } else { "-" }.to_owned(),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no instances (create one: hostctl create NAME --template probe)\n".into();
    }
    table(
        &[
            "ID", "NAME", "STATE", "STACK", "GROUP", "TEMPLATE", "CPU", "MIB", "VF", "HA",
        ],
        &rows,
        1,
    )
}

fn instance(i: &InstanceInfo) -> String {
    let mut out = format!(
        "name:       {} (id i-{})\nstate:      {} since {}\nreason:     {}\n",
        i.name,
        i.id,
        state(i.state),
        time(i.state_since_ms),
        i.state_reason
    );
    out.push_str(&format!(
        "template:   {}@{}\nstack:      {}\ngroup:      {}\n",
        i.template,
        i.template_version,
        opt(&i.stack),
        opt(&i.group)
    ));
    let cores: Vec<u16> = i.cores.iter().copied().collect();
    out.push_str(&format!(
        "vcpus:      {} on cores {}\nram:        {} MiB{}\ndisk:       {} GiB\n",
        i.vcpus,
        crate::cpulist::format(&cores),
        i.ram_mib,
        if i.hugepages { " (huge pages)" } else { "" },
        i.disk_gib
    ));
    out.push_str(&format!(
        "ha:         {}{}\nvmm pid:    {}\nconsole:    {}\ncreated:    {}\n",
        if i.ha { "on" } else { "off" },
        if i.ha_failures > 0 {
            format!(" ({} recent failures)", i.ha_failures)
        } else {
            String::new()
        },
        i.vmm_pid.map_or("-".into(), |p| p.to_string()),
        i.console_log,
        time(i.created_ms)
    ));
    if !i.vfs.is_empty() {
        let rows: Vec<Vec<String>> = i
            .vfs
            .iter()
            .map(|v| {
                vec![
                    v.port.to_string(),
                    v.index.map_or("-".into(), |n| n.to_string()),
                    v.addr.as_deref().unwrap_or("-").to_owned(),
                    guest(v.addr.is_some(), v.guest_addr.as_deref()),
                    v.mac.as_deref().unwrap_or("-").to_owned(),
                    if v.vlan == 0 {
                        "-".into()
                    } else {
                        format!("{}/{}", v.vlan, v.vlan_qos)
                    },
                    format!("{}-{}", v.min_tx_mbps, v.max_tx_mbps),
                ]
            })
            .collect();
        out.push_str("vfs:\n");
        out.push_str(&table(
            &[
                "PORT", "VF", "ADDRESS", "GUEST", "MAC", "VLAN/QOS", "MBIT/S",
            ],
            &rows,
            2,
        ));
    }
    out
}

/// Where the guest sees a VF: its address without the domain, `sim` for a simulated VF
/// held but not passed, `-` when none is held.
fn guest(held: bool, at: Option<&str>) -> String {
    match (held, at) {
        (_, Some(at)) => at.strip_prefix("0000:").unwrap_or(at).to_owned(),
        (true, None) => "sim".into(),
        (false, None) => "-".into(),
    }
}

fn host_status(s: &HostStatus) -> String {
    format!(
        "hostd up {} s{}\ninstances:  {} ({} running, {} stopped, {} starting/stopping, {} failed)\n\
         guest cores: {} free of {}\nguest RAM:  {} of {} MiB reserved (host: {} MiB, {} MiB kept)\n\
         huge pages: {} reserved of {} ({} KiB each)\nVFs:        {} free of {}\n",
        s.uptime_s,
        if s.sim { " (simulated hardware)" } else { "" },
        s.instances.total,
        s.instances.running,
        s.instances.stopped,
        s.instances.transitioning,
        s.instances.failed,
        s.cores.guest_free,
        s.cores.guest_total,
        s.memory.reserved_mib,
        s.memory.guest_budget_mib,
        s.memory.total_mib,
        s.memory.host_reserve_mib,
        s.hugepages.reserved_pages,
        s.hugepages.total_pages,
        s.hugepages.page_kib,
        s.vfs.free,
        s.vfs.total
    )
}

fn inventory(inv: &Inventory) -> String {
    let mut out = format!(
        "cpus:         {} online{}\nhousekeeping: {}\nguest:        {}\nfast path:    {}\n",
        inv.cpus,
        if inv.sim { " (simulated NIC)" } else { "" },
        inv.housekeeping_cores,
        inv.guest_cores,
        if inv.fastpath_cores.is_empty() {
            "-"
        } else {
            &inv.fastpath_cores
        }
    );
    for owner in &inv.core_owners {
        out.push_str(&format!(
            "  core {} held by {}\n",
            owner.core, owner.instance
        ));
    }
    out.push_str(&format!(
        "memory:       {} MiB, {} MiB for guests, {} MiB reserved\n",
        inv.memory.total_mib, inv.memory.guest_budget_mib, inv.memory.reserved_mib
    ));
    let rows: Vec<Vec<String>> = inv
        .ports
        .iter()
        .map(|p| {
            vec![
                p.port.to_string(),
                p.pf.to_string(),
                p.driver.to_string(),
                p.numa_node.map_or("-".into(), |n| n.to_string()),
                format!("{}/{}", p.num_vfs, p.total_vfs),
                p.reserved_vfs.to_string(),
                p.assigned_vfs.to_string(),
                p.device.to_string(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push_str(&table(
            &[
                "PORT", "PF", "DRIVER", "NODE", "VFS", "RESERVED", "IN USE", "DEVICE",
            ],
            &rows,
            7,
        ));
    }
    let owners: Vec<Vec<String>> = inv
        .vf_owners
        .iter()
        .map(|o| {
            vec![
                o.vf.to_string(),
                format!("{} VF {}", o.port, o.index),
                o.instance.to_string(),
                guest(true, o.guest_addr.as_deref()),
            ]
        })
        .collect();
    if !owners.is_empty() {
        out.push_str(&table(&["VF", "PORT", "INSTANCE", "GUEST"], &owners, 2));
    }
    out
}

/// A count in at most 7 columns: `12345`, `123.4k`, `12.3M`, `1.2G`.
fn count(n: u64) -> String {
    match n {
        0..=99_999 => n.to_string(),
        100_000..=9_999_999 => format!("{:.1}k", n as f64 / 1e3),
        10_000_000..=9_999_999_999 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.1}G", n as f64 / 1e9),
    }
}

/// `label` then `text`, wrapped at spaces to [`WIDTH`] with the continuation lines indented
/// under the text: a failure's reason is the one thing the operator must read whole.
fn wrapped(label: &str, text: &str) -> String {
    let indent = " ".repeat(label.chars().count());
    let mut out = String::new();
    let mut line = label.to_owned();
    let mut empty = true;
    for word in text.split(' ') {
        if !empty && line.chars().count() + 1 + word.chars().count() > WIDTH {
            out.push_str(&line);
            out.push('\n');
            line = indent.clone();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    out.push_str(&line);
    out.push('\n');
    out
}

fn fastpath(f: &FastpathStatus) -> String {
    let mut out = format!(
        "fast path:  {} since {}\n",
        fastpath_state(f.state),
        time(f.since_ms)
    );
    out.push_str(&wrapped("reason:     ", &f.reason));
    if f.state == FastpathState::Disabled && f.config.is_empty() {
        return out;
    }
    let cores: Vec<u16> = f.cores.iter().copied().collect();
    out.push_str(&format!(
        "pid:        {}\ncores:      {}\nconfig:     {}\ncontrol:    {}\nexits:      {}{}\n",
        f.pid.map_or("-".into(), |p| p.to_string()),
        if cores.is_empty() {
            "-".into()
        } else {
            crate::cpulist::format(&cores)
        },
        f.config,
        f.control_socket,
        f.exits,
        match f.restart_in_ms {
            Some(ms) => format!(", next start in {:.1} s", ms as f64 / 1000.0),
            None => String::new(),
        }
    ));
    if let Some(err) = &f.stats_error {
        out.push_str(&wrapped("counters:   ", err));
    }
    if f.ports.is_empty() {
        return out;
    }
    let rows: Vec<Vec<String>> = f
        .ports
        .iter()
        .map(|p| {
            vec![
                p.name.to_string(),
                count(p.rx_packets),
                count(p.rx_bytes),
                count(p.tx_packets),
                count(p.tx_bytes),
                count(p.dropped()),
                format!("{}/{}", count(p.lane_rx_packets), count(p.lane_tx_packets)),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "PORT",
            "RX PKTS",
            "RX BYTES",
            "TX PKTS",
            "TX BYTES",
            "DROPS",
            "LANE RX/TX",
        ],
        &rows,
        0,
    ));
    for p in f.ports.iter().filter(|p| !p.drops.is_empty()) {
        let reasons: Vec<String> = p
            .drops
            .iter()
            .map(|(reason, n)| format!("{} {n}", reason.as_str()))
            .collect();
        out.push_str(&cut(
            &format!("drops on {}: {}", p.name, reasons.join(", ")),
            WIDTH,
        ));
        out.push('\n');
    }
    out
}

fn templates(list: &[TemplateSummary]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|t| {
            vec![
                t.name.to_string(),
                t.latest_version.to_string(),
                t.instances.to_string(),
                t.description.to_string(),
            ]
        })
        .collect();
    table(&["NAME", "LATEST", "INSTANCES", "DESCRIPTION"], &rows, 3)
}

fn template(t: &TemplateInfo) -> String {
    let s = &t.spec;
    format!(
        "template:   {}@{} (created {})\ndescription: {}\nkernel:     {}\ninitramfs:  {}\ncmdline:    {}\n\
         vcpus:      {}\nram:        {} MiB{}\ndisk:       {} GiB\nvfs:        {}\nha:         {}\nstop timeout: {} ms\n",
        t.name,
        t.version,
        time(t.created_ms),
        s.description,
        s.kernel,
        s.initramfs.as_deref().unwrap_or("-"),
        s.cmdline,
        s.vcpus,
        s.ram_mib,
        if s.hugepages { " (huge pages)" } else { "" },
        s.disk_gib,
        s.vfs,
        if s.ha { "on" } else { "off" },
        s.graceful_stop_timeout_ms
    )
}

fn principal(p: &Principal) -> String {
    match p {
        Principal::User(u) => format!("user:{u}"),
        Principal::Group(g) => format!("group:{g}"),
        Principal::Uid(u) => format!("uid:{u}"),
        Principal::Gid(g) => format!("gid:{g}"),
    }
}

fn limit(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn quota(q: &Quota) -> [String; 4] {
    [
        limit(q.instances.map(u64::from)),
        limit(q.vcpus.map(u64::from)),
        limit(q.ram_mib),
        limit(q.vfs.map(u64::from)),
    ]
}

fn stacks(list: &[StackInfo]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            let [i, c, r, v] = quota(&s.quota);
            vec![
                s.name.to_string(),
                format!("{}/{i}", s.usage.instances),
                format!("{}/{c}", s.usage.vcpus),
                format!("{}/{r}", s.usage.ram_mib),
                format!("{}/{v}", s.usage.vfs),
                s.admins.iter().map(principal).collect::<Vec<_>>().join(","),
            ]
        })
        .collect();
    table(
        &["STACK", "INSTANCES", "VCPUS", "RAM MIB", "VFS", "ADMINS"],
        &rows,
        5,
    )
}

/// One event as a line.
pub fn event(e: &Event) -> String {
    let who = match &e.actor {
        Actor::User { uid, name, .. } if !name.is_empty() => format!("{name}"),
        Actor::User { uid, .. } => format!("uid {uid}"),
        Actor::Hostd => "hostd".into(),
        Actor::Ha => "ha".into(),
    };
    let what = match &e.kind {
        EventKind::State { from, to } => format!("{} -> {}", from.as_str(), to.as_str()),
        EventKind::Created => "created".into(),
        EventKind::Deleted => "deleted".into(),
        EventKind::Renamed { .. } => "renamed".into(),
        EventKind::Regrouped => "regrouped".into(),
        EventKind::Resized => "resized".into(),
        EventKind::HaChanged => "ha".into(),
        EventKind::Rebooted { .. } => "rebooted".into(),
        EventKind::Adopted { .. } => "adopted".into(),
        EventKind::TemplateCreated { .. } | EventKind::TemplateDeleted { .. } => "template".into(),
        EventKind::StackChanged => "stack".into(),
        EventKind::HostdStarted => "started".into(),
        EventKind::VfAssigned { vf } => format!("vf {vf} assigned"),
        EventKind::VfReleased { vf } => format!("vf {vf} released"),
        EventKind::Fastpath { from, to } => format!("{} -> {}", from.as_str(), to.as_str()),
    };
    let subject = match (&e.instance, &e.kind) {
        (Some(i), _) => i.name.to_string(),
        (None, EventKind::Fastpath { .. }) => "fastpath".to_owned(),
        (None, _) => "-".to_owned(),
    };
    let line = format!("{} {subject} {what} [{who}] {}", time(e.time_ms), e.reason);
    cut(&line, WIDTH)
}

/// A response for people.
pub fn response(response: &Response) -> String {
    match response {
        Response::Hello(info) => format!(
            "hostd {} (protocol {}){}\nyou: uid {}, {:?}{}\n",
            info.hostd_version,
            info.protocol_version,
            if info.sim { ", simulated hardware" } else { "" },
            info.uid,
            info.role,
            if info.stacks.is_empty() {
                String::new()
            } else {
                format!(
                    " of {}",
                    info.stacks
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        ),
        Response::HostStatus(s) => host_status(s),
        Response::Inventory(inv) => inventory(inv),
        Response::Instances(list) => instances(list),
        Response::Instance(i) => instance(i),
        Response::Templates(list) => templates(list),
        Response::Template(t) => template(t),
        Response::Stacks(list) => stacks(list),
        Response::Stack(s) => stacks(std::slice::from_ref(s)),
        Response::Events(page) => page.events.iter().map(|e| event(e) + "\n").collect(),
        Response::Subscribed => String::new(),
        Response::ConsoleAttached(_) => String::new(),
        Response::Done => "done\n".into(),
        Response::Fastpath(f) => fastpath(f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_fit_80_columns_by_cutting_the_flex_column() {
        let rows = vec![
            vec!["a".into(), "x".repeat(200)],
            vec!["bb".into(), "short".into()],
        ];
        let out = table(&["K", "TEXT"], &rows, 1);
        assert!(out.lines().all(|l| l.chars().count() <= WIDTH), "{out}");
        assert!(out.lines().nth(1).unwrap().ends_with('~'));
        assert_eq!(out.lines().nth(2).unwrap(), "bb  short");
        assert_eq!(time(0), "1970-01-01 00:00:00");
    }

    #[test]
    fn the_fast_path_fits_80_columns_with_big_counters() {
        use hostd_proto::fastpath::DropReason;
        let mut ports = hostd_proto::heapless::Vec::new();
        for n in ["uplink-with-a-long-name", "vm1"] {
            let mut port = hostd_proto::FastpathPort {
                name: hostd_proto::name(n),
                rx_packets: 123_456_789_012,
                rx_bytes: u64::MAX,
                tx_packets: 99_999,
                tx_bytes: 100_000,
                lane_rx_packets: 12_345_678,
                lane_tx_packets: 7,
                ..Default::default()
            };
            port.drops.push((DropReason::AclIn, 5)).unwrap();
            port.drops.push((DropReason::Vlan, 2)).unwrap();
            ports.push(port).unwrap();
        }
        let status = FastpathStatus {
            state: FastpathState::Running,
            reason: hostd_proto::text("pid 812 running on cores 1, 2 ports"),
            since_ms: 0,
            pid: Some(812),
            cores: [1].into_iter().collect(),
            config: hostd_proto::bounded("/etc/hostd/fastpath.toml"),
            control_socket: hostd_proto::bounded("/run/hostd/fastpath.sock"),
            exits: 0,
            restart_in_ms: None,
            ports,
            stats_error: None,
        };
        let out = fastpath(&status);
        assert!(out.lines().all(|l| l.chars().count() <= WIDTH), "{out}");
        assert!(out.contains("123.5G"), "{out}");
        assert!(out.contains("\nvm1 "), "{out}");
        assert!(out.contains("drops on vm1: acl_in 5, vlan 2"), "{out}");
        assert_eq!(count(99_999), "99999");
        let long = "fastpath pid 13710 was killed by signal 9 (SIGKILL); restart in 1000 ms \
                    (exit 1 of 3)";
        let text = wrapped("reason:     ", long);
        assert_eq!(
            text,
            "reason:     fastpath pid 13710 was killed by signal 9 (SIGKILL); restart in 1000\n            ms (exit 1 of 3)\n"
        );
        assert_eq!(count(100_000), "100.0k");
    }
}
