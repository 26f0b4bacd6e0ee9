//! The kernel's neighbour table, read when we must send to a peer whose MAC we have not
//! seen (the client role's first packet). Lookups are rare and rate-limited by the
//! caller, never on the per-packet path.

use std::net::IpAddr;

use crate::wire::net::MacAddr;

fn parse_mac(s: &str) -> Option<MacAddr> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    (parts.next().is_none() && mac != [0; 6]).then_some(mac)
}

/// IPv4 via `/proc/thread-self/net/arp` (this thread's network namespace); IPv6 via
/// `ip -6 neigh` (run in this thread's namespace, which the child inherits).
pub fn lookup(ip: IpAddr) -> Option<MacAddr> {
    match ip {
        IpAddr::V4(v4) => {
            let table = std::fs::read_to_string("/proc/thread-self/net/arp").ok()?;
            parse_arp(&table, &v4.to_string())
        }
        IpAddr::V6(v6) => {
            let out = std::process::Command::new("ip")
                .args(["-6", "neigh", "show", "to", &v6.to_string()])
                .output()
                .ok()?;
            parse_ip_neigh(&String::from_utf8_lossy(&out.stdout))
        }
    }
}

/// Finds a complete entry (flags 0x2) for `ip` in /proc/net/arp text.
fn parse_arp(table: &str, ip: &str) -> Option<MacAddr> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let flags = u32::from_str_radix(f.get(2)?.trim_start_matches("0x"), 16).ok()?;
        (f.first() == Some(&ip) && flags & 0x2 != 0)
            .then(|| parse_mac(f.get(3)?))
            .flatten()
    })
}

/// Takes the `lladdr` of the first usable `ip neigh` line.
fn parse_ip_neigh(text: &str) -> Option<MacAddr> {
    text.lines().find_map(|line| {
        if line.contains("FAILED") || line.contains("INCOMPLETE") {
            return None;
        }
        let mut it = line.split_whitespace();
        it.by_ref().find(|w| *w == "lladdr")?;
        parse_mac(it.next()?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tables() {
        let arp = "IP address       HW type     Flags       HW address            Mask     Device\n\
                   10.99.0.2        0x1         0x2         02:aa:bb:cc:dd:ee     *        qn-veth-s\n\
                   10.99.0.3        0x1         0x0         00:00:00:00:00:00     *        qn-veth-s\n";
        assert_eq!(
            parse_arp(arp, "10.99.0.2"),
            Some([2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee])
        );
        assert_eq!(parse_arp(arp, "10.99.0.3"), None);
        assert_eq!(parse_arp(arp, "10.99.0.9"), None);
        let n = "fd99::2 dev qn-veth-s lladdr 02:00:00:00:00:02 REACHABLE\n";
        assert_eq!(parse_ip_neigh(n), Some([2, 0, 0, 0, 0, 2]));
        assert_eq!(parse_ip_neigh("fd99::2 dev x FAILED\n"), None);
        assert_eq!(parse_mac("zz:00:00:00:00:01"), None);
    }
}
