//! The kernel-bypass datapath: an XDP program steers QUIC datagrams by connection ID into
//! AF_XDP sockets, one per worker; each worker sends and receives in UMEM frames through
//! its socket's rings.
//!
//! One kernel concept per file: `if_xdp` (ABI), `syscall` (thin wrappers), `mmap`,
//! `umem` (frames and their ledger), `ring` (the four rings), `socket` (bind modes),
//! `loader` (the BPF program and its maps), `neigh` (kernel neighbour table), `peers`
//! (where replies go on the link, learnt from frames), `datapath` (the `Datapath` implementation), `stats`.
//!
//! Topology: worker `w` binds queue `queues[w % queues.len()]`. Queues with one worker
//! get a UMEM each; queues with several share one UMEM among them (`XDP_SHARED_UMEM`),
//! and the program picks the worker's socket by CID. A packet whose owner is bound to
//! another queue goes to the arrival queue's first socket and is handed over in user
//! space (see `datapath`).

pub mod datapath;
pub mod if_xdp;
pub mod loader;
pub mod mmap;
pub mod neigh;
pub mod peers;
pub mod ring;
pub mod served;
pub mod socket;
pub mod stats;
pub mod syscall;
pub mod umem;

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;

pub use datapath::{LocalIface, XdpDatapath};
pub use loader::{ProgramSettings, XdpMode, XdpProgram};
pub use served::{AddrWatch, ServedChange, ServedSet};
pub use socket::{BindMode, RingSizes, XdpSocket, ZeroCopy};
pub use stats::{KernelSocketStats, ProgramStats, SocketStats};
pub use umem::{FrameCensus, FrameState, Umem};

use crate::wire::steer::CidLayout;
use crate::Side;

#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error(
        "permission denied: {0} (run as root, or grant CAP_NET_ADMIN, CAP_NET_RAW and CAP_BPF)"
    )]
    Permission(String),
    #[error("network interface not found: {0}")]
    IfaceNotFound(String),
    #[error("RX queue {queue} out of range: {iface} has {available} queue(s)")]
    QueueOutOfRange {
        iface: String,
        queue: u32,
        available: u32,
    },
    #[error("the kernel lacks AF_XDP sockets (CONFIG_XDP_SOCKETS): {0}")]
    Unsupported(io::Error),
    #[error("interface busy: {0}")]
    Busy(String),
    #[error("invalid XDP configuration: {0}")]
    Config(String),
    #[error("BPF: {0}")]
    Bpf(String),
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> XdpError {
    move |source| match source.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => XdpError::Permission(format!("{op}: {source}")),
        Some(libc::EAFNOSUPPORT) => XdpError::Unsupported(source),
        _ => XdpError::Io { op, source },
    }
}

/// What to set up.
#[derive(Clone, Debug)]
pub struct XdpConfig {
    /// Interface to attach to (in the calling thread's network namespace).
    pub iface: String,
    /// RX queues to bind; worker `w` takes `queues[w % queues.len()]`.
    pub queues: Vec<u32>,
    /// Number of workers (one socket and one `XdpDatapath` each).
    pub workers: usize,
    pub mode: XdpMode,
    /// UDP ports to steer (the first is the local port we send from).
    pub ports: Vec<u16>,
    /// The one address of the host to steer datagrams to; `None` or an unspecified
    /// address: every address of the host that can arrive through `iface` (for a server,
    /// kept current as the host's change: `XdpSetup::start_watching`).
    /// Datagrams to our ports but another address (a forwarding box's transit traffic)
    /// stay the kernel's.
    pub listen_ip: Option<IpAddr>,
    pub layout: CidLayout,
    pub zero_copy: ZeroCopy,
    /// Bytes per UMEM frame: 2048 or 4096.
    pub frame_size: u32,
    /// Frames per queue's UMEM (a power of two; half go to the fill ring).
    pub frames: u32,
    /// Server role drops Initial packets in datagrams < 1200 bytes in the program.
    pub side: Side,
    /// Back the UMEM with 2 MiB huge pages if available.
    pub huge_pages: bool,
}

impl Default for XdpConfig {
    fn default() -> Self {
        XdpConfig {
            iface: String::new(),
            queues: vec![0],
            workers: 1,
            mode: XdpMode::Auto,
            ports: vec![4433],
            listen_ip: None,
            layout: CidLayout::default(),
            zero_copy: ZeroCopy::Auto,
            frame_size: 4096,
            frames: 4096,
            side: Side::Server,
            huge_pages: false,
        }
    }
}

impl XdpConfig {
    fn validate(&self) -> Result<(), XdpError> {
        let bad = |m: String| Err(XdpError::Config(m));
        if self.workers == 0 || self.workers > loader::MAX_WORKERS as usize {
            return bad(format!("workers must be 1..={}", loader::MAX_WORKERS));
        }
        if self.queues.is_empty() || self.queues.len() > self.workers {
            return bad("need 1..=workers queues".into());
        }
        let mut q = self.queues.clone();
        q.sort_unstable();
        q.dedup();
        if q.len() != self.queues.len() || q.iter().any(|&x| x >= loader::MAX_QUEUES) {
            return bad(format!(
                "queues must be distinct and below {}",
                loader::MAX_QUEUES
            ));
        }
        if self.ports.is_empty() || self.ports.len() > loader::MAX_PORTS as usize {
            return bad(format!("need 1..={} ports", loader::MAX_PORTS));
        }
        if !self.layout.is_valid() {
            return bad(format!("invalid CID layout {:?}", self.layout));
        }
        if !self.frames.is_power_of_two() || self.frames < 64 {
            return bad("frames must be a power of two >= 64".into());
        }
        if self.frame_size != 2048 && self.frame_size != 4096 {
            return bad("frame_size must be 2048 or 4096".into());
        }
        Ok(())
    }
}

/// Sets up the XDP datapath: program, sockets, UMEMs.
pub struct XdpSetup;

impl XdpSetup {
    /// Loads and attaches the program and binds one socket per worker. The returned
    /// program must be kept alive (it detaches on Drop); the datapaths are `Send` and go
    /// to their workers' threads.
    pub fn start(cfg: &XdpConfig) -> Result<(XdpProgram, Vec<XdpDatapath>), XdpError> {
        let (program, paths, _) = Self::start_watching(cfg)?;
        Ok((program, paths))
    }

    /// `start`, plus, when a server serves every address of the host (no `listen_ip`, or
    /// an unspecified one), the watch that keeps the served addresses equal
    /// to the host's as they change (`AddrWatch::refresh`). The datapaths follow it.
    pub fn start_watching(
        cfg: &XdpConfig,
    ) -> Result<(XdpProgram, Vec<XdpDatapath>, Option<AddrWatch>), XdpError> {
        cfg.validate()?;
        let ifindex = syscall::if_nametoindex(&cfg.iface)
            .ok_or_else(|| XdpError::IfaceNotFound(cfg.iface.clone()))?;
        if let Some(available) = syscall::if_rx_queues(&cfg.iface) {
            if let Some(&queue) = cfg.queues.iter().find(|&&q| q >= available) {
                return Err(XdpError::QueueOutOfRange {
                    iface: cfg.iface.clone(),
                    queue,
                    available,
                });
            }
        }
        let mut iface = local_iface(&cfg.iface, cfg.ports[0])?;
        // Probe AF_XDP before loading anything, for a clear error.
        drop(syscall::xdp_socket().map_err(io_err("socket(AF_XDP)"))?);

        let mut prog = XdpProgram::load(&ProgramSettings {
            layout: cfg.layout,
            n_workers: cfg.workers as u32,
            drop_small_initial: cfg.side == Side::Server,
        })?;
        prog.set_ports(&cfg.ports)?;
        // Replies leave from the served address their peer wrote to (`source_for`).
        iface.addrs = served_addrs(cfg, &iface)?;
        let served = ServedSet::of(&iface);
        iface.addrs.clone_from(&served.addrs);
        prog.set_local_addrs(&served.addrs)?;
        let every_address = cfg.side == Side::Server
            && cfg
                .listen_ip
                .is_none_or(|ip| ip.to_canonical().is_unspecified());
        let watch = every_address.then(|| AddrWatch::new(&cfg.iface, cfg.ports[0], served));

        let ring = cfg.frames / 2;
        let sizes = RingSizes {
            fill: ring,
            completion: ring,
            rx: ring,
            tx: ring,
        };
        let handoffs = datapath::handoff_queues(cfg.workers).map_err(io_err("eventfd"))?;
        let mut paths: Vec<Option<XdpDatapath>> = (0..cfg.workers).map(|_| None).collect();
        for &queue in &cfg.queues {
            let qi = cfg.queues.iter().position(|&q| q == queue).unwrap_or(0);
            let members: Vec<u32> = (qi..cfg.workers)
                .step_by(cfg.queues.len())
                .map(|w| w as u32)
                .collect();
            let umem =
                Umem::new(cfg.frame_size, cfg.frames, cfg.huge_pages).map_err(io_err("UMEM"))?;
            let (primary, fc) =
                XdpSocket::bind_primary(&umem, ifindex, queue, sizes, cfg.zero_copy)
                    .map_err(|e| bind_err(e, &cfg.iface, queue))?;
            tracing::info!(iface = %cfg.iface, queue, mode = ?primary.mode(), workers = ?members, "AF_XDP socket bound");
            let mut sockets = vec![primary];
            for _ in 1..members.len() {
                let s = XdpSocket::bind_shared(&sockets[0], ifindex, sizes)
                    .map_err(|e| bind_err(e, &cfg.iface, queue))?;
                sockets.push(s);
            }
            let group = Arc::new(datapath::QueueGroup::new(
                umem,
                fc,
                members.len(),
                sockets[0].mode(),
            ));
            prog.set_queue_owner(queue, members[0], true)?;
            prog.set_queue_workers(queue, &members)?;
            for (member, (socket, &w)) in sockets.into_iter().zip(&members).enumerate() {
                // SAFETY: the fd is owned by `socket`, alive for this call.
                prog.set_xsk(w, unsafe {
                    BorrowedFd::borrow_raw(socket.fd().as_raw_fd())
                })?;
                prog.set_worker(w, queue, true)?;
                paths[w as usize] = Some(XdpDatapath::new(
                    w,
                    cfg.workers as u32,
                    cfg.layout,
                    socket,
                    Arc::clone(&group),
                    member,
                    Arc::clone(&handoffs),
                    iface.clone(),
                    watch.as_ref().map(AddrWatch::shared),
                ));
            }
        }
        let mut paths: Vec<XdpDatapath> = paths.into_iter().flatten().collect();
        if paths.len() != cfg.workers {
            return Err(XdpError::Config("some workers got no queue".into()));
        }
        // Stock the fill rings before traffic arrives.
        for p in &mut paths {
            let _ = crate::io::Datapath::flush(p);
        }
        prog.attach(ifindex, cfg.mode)?;
        Ok((prog, paths, watch))
    }
}

fn bind_err(e: io::Error, iface: &str, queue: u32) -> XdpError {
    match e.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => {
            XdpError::Permission(format!("AF_XDP on {iface} queue {queue}: {e}"))
        }
        Some(libc::EAFNOSUPPORT) => XdpError::Unsupported(e),
        _ => XdpError::Io {
            op: "AF_XDP socket setup",
            source: io::Error::new(e.kind(), format!("{iface} queue {queue}: {e}")),
        },
    }
}

/// Of the host's addresses, those a datagram arriving on an interface with `own` may be
/// to: loopback addresses never arrive on a NIC (the kernel drops them as martians), nor
/// do other interfaces' link-local ones, so only the interface's own of those stay.
fn reachable_through(own: &[IpAddr], host: Vec<IpAddr>) -> Vec<IpAddr> {
    host.into_iter()
        .filter(|a| !(a.is_loopback() || is_link_local(a)) || own.contains(a))
        .collect()
}

fn is_link_local(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => v.is_link_local(),
        IpAddr::V6(v) => (v.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// The destination addresses the program steers: the configured one, which must be the
/// host's, or all of the host's (IPv4 and IPv6 alike, whichever family the unspecified
/// address names).
fn served_addrs(cfg: &XdpConfig, iface: &LocalIface) -> Result<Vec<IpAddr>, XdpError> {
    let served = match cfg.listen_ip.map(|ip| ip.to_canonical()) {
        Some(ip) if !ip.is_unspecified() => {
            if !iface.addrs.contains(&ip) {
                return Err(XdpError::Config(format!(
                    "{ip} is not an address of this host"
                )));
            }
            vec![ip]
        }
        _ => iface.addrs.clone(),
    };
    if served.is_empty() {
        return Err(XdpError::Config(format!(
            "no IP address to serve on {}",
            cfg.iface
        )));
    }
    Ok(served)
}

/// The interface's MAC, the first IPv4 and first non-link-local IPv6 of its addresses,
/// its MTU, and the host's addresses (all interfaces': VIPs on `lo`, VLAN devices above
/// the interface and bridge or bond masters receive through it too).
pub fn local_iface(name: &str, port: u16) -> Result<LocalIface, XdpError> {
    let mac = syscall::if_hwaddr(name).map_err(io_err("SIOCGIFHWADDR"))?;
    let mtu = syscall::if_mtu(name).map_err(io_err("SIOCGIFMTU"))?;
    let own = syscall::if_addrs(Some(name)).map_err(io_err("getifaddrs"))?;
    let addrs = reachable_through(&own, syscall::if_addrs(None).map_err(io_err("getifaddrs"))?);
    let ifindex =
        syscall::if_nametoindex(name).ok_or_else(|| XdpError::IfaceNotFound(name.to_string()))?;
    // The defaults: the interface's own first, else the host's (a bond or bridge port, or
    // a VLAN's lower device, may have none of its own).
    let first_v4 = |list: &[IpAddr]| {
        list.iter().find_map(|a| match a {
            IpAddr::V4(v) => Some(*v),
            _ => None,
        })
    };
    let first_v6 = |list: &[IpAddr]| {
        list.iter().find_map(|a| match a {
            IpAddr::V6(v) if !is_link_local(a) => Some(*v),
            _ => None,
        })
    };
    let v4 = first_v4(&own).or_else(|| first_v4(&addrs));
    let v6 = first_v6(&own).or_else(|| first_v6(&addrs));
    Ok(LocalIface {
        mac,
        v4,
        v6,
        addrs,
        port,
        mtu,
        ifindex,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_defines() -> std::collections::HashMap<String, u64> {
        let h = include_str!("../../../../bpf/quench_xdp.h");
        h.lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                (it.next()? == "#define").then_some(())?;
                let name = it.next()?.to_string();
                let v = it.next()?;
                let v = if let Some(hex) = v.strip_prefix("0x") {
                    u64::from_str_radix(hex, 16).ok()?
                } else {
                    v.parse().ok()?
                };
                Some((name, v))
            })
            .collect()
    }

    #[test]
    fn rust_and_c_constants_agree() {
        let d = header_defines();
        let want: &[(&str, u64)] = &[
            ("QUENCH_MAX_WORKERS", loader::MAX_WORKERS.into()),
            ("QUENCH_MAX_QUEUES", loader::MAX_QUEUES.into()),
            ("QUENCH_MAX_PORTS", loader::MAX_PORTS.into()),
            ("QUENCH_MAX_LOCAL_ADDRS", loader::MAX_LOCAL_ADDRS.into()),
            ("QUENCH_MAX_CID_LEN", loader::MAX_CID_LEN.into()),
            (
                "QUENCH_MIN_INITIAL_DATAGRAM",
                loader::MIN_INITIAL_DATAGRAM.into(),
            ),
            ("QUENCH_SHORT_TAIL_MIN", loader::SHORT_TAIL_MIN.into()),
            ("QUENCH_STAT_PASS_NOT_IP", stats::STAT_PASS_NOT_IP.into()),
            ("QUENCH_STAT_PASS_NOT_UDP", stats::STAT_PASS_NOT_UDP.into()),
            (
                "QUENCH_STAT_PASS_OTHER_PORT",
                stats::STAT_PASS_OTHER_PORT.into(),
            ),
            (
                "QUENCH_STAT_PASS_MALFORMED",
                stats::STAT_PASS_MALFORMED.into(),
            ),
            (
                "QUENCH_STAT_DROP_SHORT_INITIAL",
                stats::STAT_DROP_SHORT_INITIAL.into(),
            ),
            (
                "QUENCH_STAT_DROP_FIXED_BIT",
                stats::STAT_DROP_FIXED_BIT.into(),
            ),
            (
                "QUENCH_STAT_DROP_BAD_SHORT",
                stats::STAT_DROP_BAD_SHORT.into(),
            ),
            (
                "QUENCH_STAT_DROP_BAD_LONG",
                stats::STAT_DROP_BAD_LONG.into(),
            ),
            ("QUENCH_STAT_REDIRECT", stats::STAT_REDIRECT.into()),
            (
                "QUENCH_STAT_REDIRECT_MISSTEERED",
                stats::STAT_REDIRECT_MISSTEERED.into(),
            ),
            (
                "QUENCH_STAT_REDIRECT_FAILED",
                stats::STAT_REDIRECT_FAILED.into(),
            ),
            (
                "QUENCH_STAT_PASS_NO_SOCKET",
                stats::STAT_PASS_NO_SOCKET.into(),
            ),
            (
                "QUENCH_STAT_PASS_NOT_LOCAL",
                stats::STAT_PASS_NOT_LOCAL.into(),
            ),
            ("QUENCH_STAT_COUNT", stats::STAT_COUNT.into()),
        ];
        for (name, v) in want {
            assert_eq!(
                d.get(*name),
                Some(v),
                "{name} differs between bpf/quench_xdp.h and Rust"
            );
        }
        let c_names = d.keys().filter(|k| k.starts_with("QUENCH_")).count();
        assert_eq!(
            c_names,
            want.len(),
            "a QUENCH_ constant in the header has no Rust twin"
        );
        assert_eq!(crate::wire::steer::MAX_CID_LEN as u32, loader::MAX_CID_LEN);
    }

    #[test]
    fn the_hosts_addresses_a_nic_can_receive_for() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let own = [ip("10.0.0.1"), ip("fe80::1")];
        let host = [
            "127.0.0.1",
            "::1",
            "10.0.0.1",
            "fe80::1",
            "fe80::2",
            "169.254.0.9",
            "192.0.2.80",
            "2001:db8::80",
        ]
        .map(ip)
        .to_vec();
        let want = ["10.0.0.1", "fe80::1", "192.0.2.80", "2001:db8::80"].map(ip);
        assert_eq!(reachable_through(&own, host), want);
    }

    #[test]
    fn served_addresses_follow_the_listen_address() {
        let iface = LocalIface {
            mac: [2, 0, 0, 0, 0, 1],
            v4: Some("10.0.0.1".parse().unwrap()),
            v6: Some("fd00::1".parse().unwrap()),
            addrs: vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
            port: 4433,
            mtu: 1500,
            ifindex: 1,
        };
        let cfg = |ip: Option<&str>| XdpConfig {
            iface: "eth9".into(),
            listen_ip: ip.map(|s| s.parse().unwrap()),
            ..Default::default()
        };
        for all in [None, Some("0.0.0.0"), Some("::")] {
            assert_eq!(served_addrs(&cfg(all), &iface).unwrap(), iface.addrs);
        }
        let one = served_addrs(&cfg(Some("fd00::1")), &iface).unwrap();
        assert_eq!(one, vec!["fd00::1".parse::<IpAddr>().unwrap()]);
        let foreign = served_addrs(&cfg(Some("10.0.0.2")), &iface);
        assert!(matches!(foreign, Err(XdpError::Config(m)) if m.contains("10.0.0.2")));
        let mapped = served_addrs(&cfg(Some("::ffff:10.0.0.1")), &iface).unwrap();
        assert_eq!(mapped, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
        let bare = LocalIface {
            addrs: vec![],
            ..iface
        };
        assert!(matches!(
            served_addrs(&cfg(None), &bare),
            Err(XdpError::Config(m)) if m.contains("no IP address")
        ));
    }

    /// A reply leaves from the served address its peer wrote to; with none named (a
    /// client's connection), or one that is not ours or not of the peer's family, from the
    /// interface's first address of the peer's family, and with no such default it cannot
    /// be sent.
    #[test]
    fn replies_leave_from_the_address_written_to_else_the_interface_default() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let iface = LocalIface {
            mac: [2, 0, 0, 0, 0, 1],
            v4: Some("10.0.0.1".parse().unwrap()),
            v6: None,
            addrs: vec![ip("10.0.0.1"), ip("192.0.2.80"), ip("fd00::1")],
            port: 4433,
            mtu: 1500,
            ifindex: 1,
        };
        let peer4 = ip("10.0.0.9");
        assert_eq!(
            iface.source_for(peer4, Some(ip("192.0.2.80"))),
            Some(ip("192.0.2.80"))
        );
        assert_eq!(iface.source_for(peer4, None), Some(ip("10.0.0.1")));
        assert_eq!(
            iface.source_for(peer4, Some(ip("192.0.2.81"))),
            Some(ip("10.0.0.1"))
        );
        assert_eq!(
            iface.source_for(peer4, Some(ip("fd00::1"))),
            Some(ip("10.0.0.1"))
        );
        // A served address of the peer's family is used even without an interface default.
        assert_eq!(
            iface.source_for(ip("fd00::9"), Some(ip("fd00::1"))),
            Some(ip("fd00::1"))
        );
        assert_eq!(iface.source_for(ip("fd00::9"), Some(ip("10.0.0.1"))), None);
        assert_eq!(iface.source_for(ip("fd00::9"), None), None);
    }

    #[test]
    fn datapath_is_send() {
        fn send<T: Send>() {}
        send::<XdpDatapath>();
    }

    #[test]
    fn config_validation() {
        let ok = XdpConfig {
            iface: "lo".into(),
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
        for bad in [
            XdpConfig {
                workers: 0,
                ..ok.clone()
            },
            XdpConfig {
                queues: vec![],
                ..ok.clone()
            },
            XdpConfig {
                queues: vec![0, 1],
                ..ok.clone()
            },
            XdpConfig {
                ports: vec![],
                ..ok.clone()
            },
            XdpConfig {
                frames: 1000,
                ..ok.clone()
            },
            XdpConfig {
                frame_size: 1024,
                ..ok.clone()
            },
            XdpConfig {
                layout: CidLayout {
                    cid_len: 4,
                    server_id_len: 2,
                },
                ..ok.clone()
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(XdpError::Config(_))),
                "{bad:?}"
            );
        }
    }
}
